"""bench/soak.py, short: writers, readers through three gateways, an agent with an eager and a lazy
mount, one kill -9, and S3 faults (503s, resets, stalls).

The full run is 10 minutes (docs/RELIABILITY.md gives its counts); this one is
long enough for one kill -9 (the first comes 30-60 s in; seed 22's is of the
agent) and checks the same things: no commit lost or doubled, every hydrate
equal to a committed snapshot, every file written into the eager mount and
every write fsynced through the lazy one in its volume, the lazy mount back
after the kill, ``check --read-data`` clean (the script exits 1 on any loss).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .mountutil import fuse_missing

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")
def test_a_short_soak_loses_nothing(s3_endpoint: str, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "75", "--json", str(out)],
                          env={**os.environ, "SYNCD_S3_ENDPOINT": s3_endpoint}, capture_output=True, text=True,
                          timeout=900, check=False)
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0 and report["losses"] == [], report
    assert report["commits"] > 0 and report["hydrates"] > 0 and sum(report["kills"].values()) >= 1
    assert report["eager_files_written"] > 0 and report["lazy_fsynced"] > 0
    assert report["lazy_written_on_bare_dir"] == 0 and report["extra_snapshots"] == {}
    assert sum(report["faults_injected"].values()) > 0 and report["faults_injected"].get("stall", 0) > 0
