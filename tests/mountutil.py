"""Lazy mounts as real subprocesses on a real FUSE mount, for tests.

``fuse_missing()`` says why the mount tests cannot run here (no /dev/fuse, no
fusermount3, pyfuse3 not installed: scripts/setup-fuse.sh installs it) or
returns None. ``MountProcess`` runs ``python -m syncd.mount.process`` with the
test's exact Config and talks to it over its control socket.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from syncd.config import Config
from syncd.mount import control
from syncd.mount.spawn import config_to_json, mounted_at

from .agentutil import env_for, wait_for


def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine: the lazy-mount tests need FUSE"
    if shutil.which("fusermount3") is None:
        return "fusermount3 missing (Debian package fuse3; scripts/setup-fuse.sh installs it)"
    if importlib.util.find_spec("pyfuse3") is None:
        return "pyfuse3 is not installed (pip install -e '.[mount]'; scripts/setup-fuse.sh); setup failed"
    return None


class MountProcess:
    def __init__(self, config: Config, volume: str, mountpoint: Path, *args: str) -> None:
        self.config, self.volume, self.path, self.args = config, volume, mountpoint, list(args)
        self.control = config.state_dir.parent / f"ctl-{os.urandom(3).hex()}.sock"
        self.log_path = config.state_dir.parent / f"mount-{volume}-{os.urandom(3).hex()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MountProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**env_for(self.config), "SYNCD_MOUNT_CONFIG": config_to_json(self.config)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncd.mount.process", self.volume, str(self.path),
                 "--control", str(self.control), "--debounce", "0.3", *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"mount exited with {self.proc.returncode}: {self.log()}")
            try:
                self.call("status")
            except Exception:
                return False
            return True
        wait_for(ready, timeout, "the mount to answer")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        return control.call_sync(self.control, op, **args)

    def data_gets(self) -> int:
        """Chunk and pack GETs so far, once every load the mount started has finished (a
        run's chunks reach readers before its GET ends and is counted)."""
        wait_for(lambda: not self.call("status").get("reads", {}).get("loading"), 30, "loads to finish")
        keys = self.call("status")["store"]["keys"]
        return sum(n for key, n in keys.items() if "/packs/" in key or "/chunks/" in key)

    def stop(self) -> int:
        assert self.proc is not None
        try:
            self.call("stop")
        except Exception:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)
            self.proc = None

    def cleanup(self) -> None:
        self.kill()
        if mounted_at(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)

