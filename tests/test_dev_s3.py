"""``syncd dev-s3`` (issue 24 item 5): the quick start's first command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from syncd.cli.devs3 import STATE


def _syncd(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", *argv], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_dev_s3_prints_exports_that_work_and_stops(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "AWS_"))}
    base.update(HOME=str(tmp_path / "home"), SYNCD_STATE_DIR=str(tmp_path / "state"),
                SYNCD_CACHE_DIR=str(tmp_path / "cache"))
    data = tmp_path / "dev"
    started = _syncd("dev-s3", "--dir", str(data), env=base)
    try:
        assert started.returncode == 0, started.stderr
        lines = started.stdout.strip().splitlines()
        assert all(line.startswith("export ") for line in lines)
        env = dict(base, **dict(line[len("export "):].split("=", 1) for line in lines))
        assert env["SYNCD_S3_ENDPOINT"].startswith("http://127.0.0.1:") and env["SYNCD_BUCKET"] == "syncd"
        listed = _syncd("volume", "ls", env=env)                   # the bucket exists: no error, nothing yet
        assert (listed.returncode, listed.stdout) == (0, ""), listed.stderr
        assert _syncd("volume", "create", "v", env=env).returncode == 0
        again = _syncd("dev-s3", "--dir", str(data), env=base)    # already running: the same lines
        assert again.returncode == 0 and again.stdout == started.stdout and "already running" in again.stderr
    finally:
        stopped = _syncd("dev-s3", "--dir", str(data), "--stop", env=base)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert not (data / STATE).exists()
    assert "no server running" in _syncd("dev-s3", "--dir", str(data), "--stop", env=base).stderr
