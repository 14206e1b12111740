"""The lazy mount's open descriptors are bounded (SYNCD_MOUNT_OPEN_FILES), whatever a task writes.

Each written file has an upper-layer file; the mount keeps at most
``mount_open_files`` of their descriptors open (least recently used) and
reopens the others when they are used again. A task writing more files than
that must not grow the mount process's descriptor table, and no byte may be
lost by the closing and reopening.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from syncd.config import Config, MiB
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine
from syncd.mount.spawn import work_dir

from .mountutil import MountProcess, fuse_missing

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")

BOUND = 16
FILES = 300
SLACK = 8    # descriptors the mount may open meanwhile besides upper files (a store connection, a thread's)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def upper_fds(pid: int, upper: Path) -> int:
    """Descriptors of the process open on files of the upper directory."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(f"{upper}/")
    return count


def body(i: int) -> bytes:
    return (f"file {i}\n".encode() * (1 + i % 97)) + os.urandom(i % 5000)


async def test_writing_more_files_than_the_bound_keeps_descriptors_bounded(
        engine: Engine, config: Config, tmp_path: Path, mounts: list[MountProcess]) -> None:
    source = tmp_path / "src"
    source.mkdir()
    old = os.urandom(3 * MiB + 12345)                  # 4 chunks: an edit copies up one of them
    (source / "old.bin").write_bytes(old)
    await commit(engine, "vol", source)
    m = MountProcess(config.replace(mount_open_files=BOUND), "vol", tmp_path / "mnt",
                     "--debounce", "3600", "--max-delay", "3600")
    mounts.append(m)
    await asyncio.to_thread(m.start)
    assert m.proc is not None
    pid = m.proc.pid
    upper = work_dir(config, "vol", m.path.absolute()) / "upper"
    (m.path / "d").mkdir()
    baseline = open_fds(pid)

    want: dict[str, bytes] = {}
    for i in range(FILES):
        want[f"d/f{i:04d}.txt"] = body(i)
        (m.path / "d" / f"f{i:04d}.txt").write_bytes(want[f"d/f{i:04d}.txt"])
        if i % 50 == 49:
            assert open_fds(pid) <= baseline + BOUND + SLACK, f"after {i + 1} files"
    # Reopen what was closed long ago: append to the first files, edit a chunk of an old file.
    for i in range(0, FILES, 30):
        with open(m.path / "d" / f"f{i:04d}.txt", "ab") as f:
            f.write(b"appended after its descriptor was closed\n")
        want[f"d/f{i:04d}.txt"] += b"appended after its descriptor was closed\n"
    with open(m.path / "old.bin", "r+b") as g:
        g.seek(MiB + 7)
        g.write(b"edited")
    want["old.bin"] = old[:MiB + 7] + b"edited" + old[MiB + 13:]
    # Many files open at once: each keeps working while others are closed under the bound.
    handles = [open(m.path / "d" / f"f{i:04d}.txt", "r+b") for i in range(0, 2 * BOUND * 3, 3)]
    try:
        for n, h in enumerate(handles * 2):
            h.seek(0)
            h.write(b"%04d" % n)
            h.flush()
    finally:
        for h in handles:
            h.close()
    for n, i in enumerate(range(0, 2 * BOUND * 3, 3)):
        name = f"d/f{i:04d}.txt"
        want[name] = (b"%04d" % (n + len(handles))) + want[name][4:]

    assert open_fds(pid) <= baseline + BOUND + SLACK
    status = await asyncio.to_thread(m.call, "status")
    assert status["upper_files_open"] <= BOUND
    assert status["upper_opens"] > FILES                 # closed descriptors were opened again
    assert 0 < upper_fds(pid, upper) <= BOUND
    for name, data in want.items():                      # read back through the mount (lower chunks too:
        assert (m.path / name).read_bytes() == data, name   # store connections and cache files may open)
    assert 0 < upper_fds(pid, upper) <= BOUND

    await asyncio.to_thread(m.call, "commit")
    out = tmp_path / "eager"
    await hydrate(engine, "vol", out)
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == want
    assert await asyncio.to_thread(m.stop) == 0
