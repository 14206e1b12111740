"""The lazy mount on a real FUSE mount: reads, writes and commits checked against plain files.

Each test mounts a volume with ``python -m syncd.mount.process`` (tests/mountutil.py)
and uses it with ordinary system calls from this process, then compares with a
plain directory that went through the same operations, and with an eager
hydrate of what the mount committed.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from syncd.config import Config, MiB
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine

from .checks import local_ids
from .mountutil import MountProcess, fuse_missing

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")


def tree_of(root: Path) -> dict[str, tuple[str, int, object]]:
    """path -> (kind, mode bits, content or target) for everything under ``root``."""
    out: dict[str, tuple[str, int, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = full.lstat()
            if full.is_symlink():
                out[rel] = ("symlink", 0, os.readlink(full))
                dirnames[:] = [d for d in dirnames if d != name]
            elif full.is_dir():
                out[rel] = ("dir", st.st_mode & 0o777, None)
            else:
                out[rel] = ("file", st.st_mode & 0o777, full.read_bytes())
    return out


def make_tree(root: Path) -> None:
    (root / "small").mkdir(parents=True)
    for i in range(20):
        (root / "small" / f"f{i:02d}.txt").write_bytes(f"small file {i}\n".encode() * (i + 1))
    (root / "big.bin").write_bytes(os.urandom(3 * MiB + 12345))
    (root / "other.bin").write_bytes(os.urandom(2 * MiB))
    (root / "empty").mkdir()
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "exec.sh").chmod(0o755)
    (root / "link").symlink_to("small/f01.txt")
    (root / "deep" / "a" / "b").mkdir(parents=True)
    (root / "deep" / "a" / "b" / "leaf").write_text("leaf\n")




async def seeded(engine: Engine, tmp_path: Path, volume: str = "lazy") -> Path:
    source = tmp_path / "source"
    make_tree(source)
    await commit(engine, volume, source)
    return source


def start(mounts: list[MountProcess], config: Config, volume: str, path: Path, *args: str) -> MountProcess:
    m = MountProcess(config, volume, path, *args)
    mounts.append(m)
    return m.start()


async def test_tree_at_once_and_bytes_on_demand(engine: Engine, config: Config, tmp_path: Path,
                                                 mounts: list[MountProcess]) -> None:
    source = await seeded(engine, tmp_path)
    m = start(mounts, config, "lazy", tmp_path / "mnt")
    mnt = m.path
    # names, sizes, modes, mtimes, symlinks: all from memory, no data GET
    for dirpath, dirnames, filenames in os.walk(source):
        for name in dirnames + filenames:
            rel = (Path(dirpath) / name).relative_to(source)
            a, b = (source / rel).lstat(), (mnt / rel).lstat()
            isdir = os.path.isdir(source / rel)
            assert (a.st_mode, 0 if isdir else a.st_size, a.st_mtime_ns) == \
                (b.st_mode, 0 if isdir else b.st_size, b.st_mtime_ns), rel
    assert os.readlink(mnt / "link") == "small/f01.txt"
    assert m.data_gets() == 0
    # one large file: exactly its chunks (1 MiB on average in the test config), nothing else
    chunks = len(local_ids(source, config)["big.bin"])
    assert (mnt / "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    assert m.data_gets() == chunks
    assert (mnt / "big.bin").read_bytes() == (source / "big.bin").read_bytes()   # page cache / LRU
    assert m.data_gets() == chunks
    # small files of one pack: one ranged GET for the directory
    before = m.data_gets()
    assert (mnt / "small" / "f03.txt").read_bytes() == (source / "small" / "f03.txt").read_bytes()
    assert tree_of(mnt / "small") == tree_of(source / "small")
    assert m.data_gets() - before == 1
    assert tree_of(mnt) == tree_of(source)
    assert m.stop() == 0


def same_ops(root: Path) -> None:
    """A POSIX workout: the mount must end up exactly as a plain directory does."""
    with open(root / "big.bin", "r+b") as f:            # random write in the middle of a chunk
        f.seek(MiB + 100)
        f.write(b"X" * 5000)
    with open(root / "exec.sh", "a") as f:              # append
        f.write("echo appended\n")
    with open(root / "other.bin", "r+b") as f:          # truncate down, then extend with zeros
        f.truncate(MiB // 2 + 7)
        f.truncate(MiB)
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    (root / "new.txt").write_text("new file\n")
    (root / "small" / "f05.txt").rename(root / "small" / "f06.txt")    # rename over
    (root / "deep").rename(root / "moved")                              # rename a directory
    (root / "empty").rmdir()
    (root / "newdir" / "sub").mkdir(parents=True)
    (root / "newdir" / "sub" / "x").write_bytes(b"x" * 10)
    (root / "newlink").symlink_to("moved/a/b/leaf")
    (root / "exec.sh").chmod(0o700)
    (root / "small" / "f00.txt").unlink()
    with open(root / "trunc.txt", "w") as f:
        f.write("short")
    with open(root / "small" / "f10.txt", "w") as f:   # O_TRUNC of a lower file
        f.write("rewritten")


async def test_posix_ops_match_a_plain_directory_and_commit(engine: Engine, config: Config, tmp_path: Path,
                                                            mounts: list[MountProcess]) -> None:
    source = await seeded(engine, tmp_path)
    m = start(mounts, config, "lazy", tmp_path / "mnt")
    same_ops(source)
    same_ops(m.path)
    assert tree_of(m.path) == tree_of(source)
    # an unlinked open file stays readable
    with open(m.path / "moved" / "a" / "b" / "leaf", "rb") as f:
        (m.path / "moved" / "a" / "b" / "leaf").unlink()
        (source / "moved" / "a" / "b" / "leaf").unlink()
        assert f.read() == b"leaf\n"
    # errors as a plain file system gives them
    for root in (source, m.path):
        with pytest.raises(OSError) as info:
            (root / "small").rmdir()
        assert info.value.errno == errno.ENOTEMPTY
        with pytest.raises(FileNotFoundError):
            (root / "nope").read_bytes()
    m.call("commit", message="from the mount")
    eager = tmp_path / "eager"
    await hydrate(engine, "lazy", eager)
    assert tree_of(eager) == tree_of(source)
    # and back: an eager commit elsewhere shows up in the mount after reload
    (eager / "from-eager.txt").write_text("hello mount\n")
    (eager / "new.txt").unlink()
    await commit(engine, "lazy", eager)
    m.call("reload")
    assert (m.path / "from-eager.txt").read_text() == "hello mount\n"
    assert not (m.path / "new.txt").exists()
    assert tree_of(m.path) == tree_of(eager)
    assert m.stop() == 0


async def test_concurrent_readers_share_one_download(engine: Engine, config: Config, tmp_path: Path,
                                                     mounts: list[MountProcess]) -> None:
    source = await seeded(engine, tmp_path)
    m = start(mounts, config, "lazy", tmp_path / "mnt")
    want = (source / "big.bin").read_bytes()
    results: list[bool] = []

    def reader(offset: int) -> None:
        with open(m.path / "big.bin", "rb") as f:
            f.seek(offset)
            got = f.read()
        results.append(got == want[offset:])

    threads = [threading.Thread(target=reader, args=(i * 1000,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 6
    assert m.data_gets() == len(local_ids(source, config)["big.bin"])     # single-flight: each chunk once
    assert m.stop() == 0
