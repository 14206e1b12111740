"""Full disks (issue 22): the volume, state and cache directories each on a small tmpfs, filled up.

What a user would notice: a clear error naming the directory that is full
(the volume directory, the state directory) or, for the cache (best-effort
by design), no error at all; nothing half-published (no temporary file
left, HEAD names a whole snapshot); and once space is freed the next
operation succeeds without any manual repair. Needs root (``mount -t tmpfs``);
skips with a message elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.errors import SyncdError

from .checks import check_head_complete, local_ids, snapshot_ids, tmp_files
from .mountutil import MountProcess, fuse_missing
from .treeutil import snapshot_tree


@contextlib.contextmanager
def tiny_fs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill ``directory``'s file system up to ``leave`` free bytes; the filler file (delete it to free)."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave))
    return filler


def make_data(root: Path, files: int = 12, size: int = 512 * 1024) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i:02d}.bin").write_bytes(os.urandom(size))


async def test_a_full_volume_directory_during_a_hydrate(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_data(src)
    async with open_engine(config) as eng:
        assert (await commit(eng, "vol", src)).snapshot
    with tiny_fs(tmp_path / "small", "16m") as small:
        dst = small / "dst"
        dst.mkdir()
        filler = fill(small, leave=2 * 1024 * 1024)       # room for a few of the 12 files
        reader = config.replace(cache_dir=tmp_path / "rcache", state_dir=tmp_path / "rstate")
        async with open_engine(reader) as eng:
            with pytest.raises(SyncdError) as failed:
                await hydrate(eng, "vol", dst)
            message = str(failed.value)
            print(f"full volume directory: {message}")
            assert "No space left on device" in message and str(dst) in message, message
            assert "\n" not in message
            assert tmp_files(dst) == []                     # nothing half-written under any name
            filler.unlink()                                 # space freed: the next hydrate just works
            await hydrate(eng, "vol", dst)
        assert snapshot_tree(dst) == snapshot_tree(src)


async def test_a_full_cache_directory_during_a_hydrate_costs_nothing(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_data(src)
    async with open_engine(config) as eng:
        assert (await commit(eng, "vol", src)).snapshot
    with tiny_fs(tmp_path / "small", "8m") as small:
        reader = config.replace(cache_dir=small / "cache", state_dir=tmp_path / "rstate")
        async with open_engine(reader) as eng:
            fill(small)
            await hydrate(eng, "vol", tmp_path / "dst")    # the cache is best-effort: a full one is a miss
        assert snapshot_tree(tmp_path / "dst") == snapshot_tree(src)


async def test_a_full_state_directory_during_a_commit(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_data(src, files=4)
    with tiny_fs(tmp_path / "small", "4m") as small:
        writer = config.replace(state_dir=small / "state")
        async with open_engine(writer) as eng:
            first = await commit(eng, "vol", src)
            assert first.snapshot
            make_data(src / "more", files=400, size=1024)   # many new entries for the local index
            filler = fill(small)
            try:
                result = await commit(eng, "vol", src)
            except SyncdError as exc:                       # a clear error naming the state directory
                print(f"full state directory: {exc}")
                assert str(small / "state") in str(exc) and "\n" not in str(exc), str(exc)
                assert "no space left on device" in str(exc), str(exc)
            else:
                raise AssertionError(f"the commit needed no room in a full state directory: {result}")
            head = await check_head_complete(eng, "vol")    # nothing half-published: HEAD is whole,
            assert head is not None and snapshot_ids(head) in (  # the old snapshot or exactly the tree
                snapshot_ids(await eng.repo.snapshot("vol", first.snapshot)), local_ids(src, config))
            filler.unlink()
            again = await commit(eng, "vol", src)            # space freed: no repair needed
            assert again.snapshot
            assert len(await eng.repo.history("vol")) <= 3   # at most: first, the failed one's, again
        dst = tmp_path / "dst"
        async with open_engine(config.replace(cache_dir=tmp_path / "rc", state_dir=tmp_path / "rs")) as eng:
            await hydrate(eng, "vol", dst)
        assert snapshot_tree(dst) == snapshot_tree(src)


async def test_a_full_state_directory_during_a_hydrate(config: Config, tmp_path: Path) -> None:
    """The hydrate's index (what it wrote, for the next incremental hydrate) cannot be saved: one
    line naming the state directory, every file in the target whole, and once space is freed
    the same hydrate completes (without downloading again what is already there)."""
    src = tmp_path / "src"
    make_data(src, files=400, size=1024)
    async with open_engine(config) as eng:
        assert (await commit(eng, "vol", src)).snapshot
    with tiny_fs(tmp_path / "small", "4m") as small:
        reader = config.replace(cache_dir=tmp_path / "rcache", state_dir=small / "state")
        dst = tmp_path / "dst"
        async with open_engine(reader) as eng:
            await eng.index.state("vol", dst)               # the index database exists, then the disk fills
            filler = fill(small)
            with pytest.raises(SyncdError) as failed:
                await hydrate(eng, "vol", dst)
            message = str(failed.value)
            print(f"full state directory (hydrate): {message}")
            assert str(small / "state") in message and "\n" not in message, message
            assert "no space left on device" in message.lower(), message
            assert tmp_files(dst) == []
            assert all(p.read_bytes() == (src / p.name).read_bytes() for p in dst.iterdir())   # whole files
            filler.unlink()
            await hydrate(eng, "vol", dst)
        assert snapshot_tree(dst) == snapshot_tree(src)


async def test_a_full_cache_directory_during_a_commit_costs_nothing(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_data(src)
    with tiny_fs(tmp_path / "small", "8m") as small:
        async with open_engine(config.replace(cache_dir=small / "cache")) as eng:
            fill(small)
            result = await commit(eng, "vol", src)         # the cache is best-effort: nothing to notice
            assert result.snapshot and await check_head_complete(eng, "vol") is not None
    dst = tmp_path / "dst"
    async with open_engine(config.replace(cache_dir=tmp_path / "rc", state_dir=tmp_path / "rs")) as eng:
        await hydrate(eng, "vol", dst)
    assert snapshot_tree(dst) == snapshot_tree(src)


@pytest.mark.slow  # 63 s on the loaded machine (the mount's start and final commit)
async def test_a_full_state_directory_under_a_mount_write(config: Config, tmp_path: Path,
                                                          mounts: list[MountProcess]) -> None:
    """A lazy mount keeps its writes in an upper layer under the state directory: when that file
    system fills, the writer gets ENOSPC (FUSE carries nothing else) and the mount's log names the
    directory, what was fsynced before is intact, and once the failed file is removed (space
    freed) the mount commits and the volume holds exactly the writes that fit."""
    missing = fuse_missing()
    if missing:
        pytest.skip(missing)
    src = tmp_path / "src"
    make_data(src, files=2, size=1000)
    async with open_engine(config) as eng:
        assert (await commit(eng, "vol", src)).snapshot
    with tiny_fs(tmp_path / "small", "8m") as small:
        mconfig = config.replace(state_dir=small / "state")
        m = MountProcess(mconfig, "vol", tmp_path / "mnt")
        m.log_path = tmp_path / "mount.log"                # not on the file system about to fill
        mounts.append(m)
        m.start()
        kept = os.urandom(2 * 1024 * 1024)
        with open(m.path / "fits.bin", "wb") as f:
            f.write(kept)
            os.fsync(f.fileno())
        with pytest.raises(OSError) as info, open(m.path / "too-big.bin", "wb") as f:
            for _ in range(16):
                f.write(os.urandom(1024 * 1024))
                f.flush()
                os.fsync(f.fileno())
        assert info.value.errno == errno.ENOSPC
        assert f"file system is full (No space left on device) in {small / 'state'}" in m.log()  # the operator's line
        assert (m.path / "fits.bin").read_bytes() == kept
        (m.path / "too-big.bin").unlink()                  # space freed
        m.call("commit")
        assert m.stop() == 0
    dst = tmp_path / "dst"
    async with open_engine(config.replace(cache_dir=tmp_path / "rc", state_dir=tmp_path / "rs")) as eng:
        await hydrate(eng, "vol", dst)
    assert (dst / "fits.bin").read_bytes() == kept
    assert not (dst / "too-big.bin").exists()
    assert sorted(p.name for p in dst.iterdir()) == ["f00.bin", "f01.bin", "fits.bin"]
