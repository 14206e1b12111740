"""Commit a tree from one directory, hydrate it into another, on a real S3 server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import REF_MIN, hydrate
from syncd.engine.wiring import open_engine
from syncd.errors import LocalConflict, VolumeNotFound

from .conftest import worker_config
from .treeutil import make_tree, mtimes, snapshot_tree


async def test_round_trip_is_byte_identical(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=300)
    async with open_engine(config) as eng:
        result = await commit(eng, "vol", src)
    assert result.seq == 1 and result.snapshot

    dst = tmp_path / "dst"
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng2:
        hres = await hydrate(eng2, "vol", dst)
        # small files come from packs: far fewer GETs than files
        assert eng2.counter.calls["get"] < 30
    assert snapshot_tree(dst) == snapshot_tree(src)
    assert mtimes(dst) == mtimes(src)
    assert os.access(dst / "run.sh", os.X_OK)
    assert (dst / "link-to-big").read_bytes() == (src / "models" / "big.bin").read_bytes()
    assert hres.files_written == 300 + 3


async def test_rehydrate_transfers_only_what_changed(config: Config, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, small_files=40)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    async with open_engine(w2) as eng2:
        await hydrate(eng2, "vol", dst)

    (src / "data" / "d1" / "f1.txt").write_text("changed\n")
    (src / "new.txt").write_text("new\n")
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    async with open_engine(w2) as eng2:
        eng2.counter.reset()
        res = await hydrate(eng2, "vol", dst)
        assert res.files_written == 2
        # HEAD + snapshot + one GET per level of changed trees (format v2: root, data,
        # data/d1; every other tree comes from the chunk cache) + at most one pack range
        # per changed small file
        assert sum(n for k, n in eng2.counter.keys.items() if "/trees/" in k) == 3
        assert eng2.counter.calls["get"] <= 2 + 3 + 2
        assert eng2.counter.bytes_in < 100_000
    assert snapshot_tree(dst) == snapshot_tree(src)


async def test_hydrate_twice_is_a_no_op(config: Config, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, small_files=10)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        await hydrate(eng, "vol", dst)
        eng.counter.reset()
        res = await hydrate(eng, "vol", dst)
    assert res.files_written == 0
    assert eng.counter.calls["get"] == 1  # only HEAD; the snapshot is cached in memory


async def test_a_second_hydrate_reads_the_cache_and_only_the_tiny_files_packs(config: Config, tmp_path: Path) -> None:
    """Chunks a hydrate wrote are cached (by reference into the files written, test_cache_refs.py),
    but not those below REF_MIN: a second hydrate on the worker reads the rest from the cache and
    the tiny files with one ranged GET per pack that holds them."""
    src = tmp_path / "src"
    make_tree(src, small_files=20)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        await hydrate(eng, "vol", tmp_path / "a")
        snapshot = (await eng.repo.latest("vol"))[1]
        assert snapshot is not None
        tiny = {eng.layout.pack("vol", e.chunks[0].pack) for e in snapshot.entries.values()
                if e.chunks and e.size < REF_MIN and e.chunks[0].pack}
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        chunk_gets = {k: n for k, n in eng.counter.keys.items() if "/chunks/" in k or "/packs/" in k}
        assert chunk_gets == {key: 1 for key in tiny} and tiny
        assert eng.cache is not None and eng.cache.stats.hits > 0          # the large file's chunks
    assert snapshot_tree(tmp_path / "b") == snapshot_tree(src)


async def test_commit_detects_deletes_and_renames_without_rereading(config: Config, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, small_files=10)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        (src / "models" / "big.bin").rename(src / "models" / "renamed.bin")
        (src / "data" / "d0" / "f0.txt").unlink()
        (src / "link-to-big").unlink()
        eng.counter.reset()
        res = await commit(eng, "vol", src)
        assert res.files_read == 0 and res.bytes_read == 0
        assert eng.counter.calls["put"] == 3  # one tree pack, the snapshot and HEAD, no chunk
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng2:
        await hydrate(eng2, "vol", dst)
    assert snapshot_tree(dst) == snapshot_tree(src)


async def test_unchanged_commit_creates_no_snapshot(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=5)
    async with open_engine(config) as eng:
        first = await commit(eng, "vol", src)
        second = await commit(eng, "vol", src)
    assert second.snapshot == first.snapshot and second.seq == 1


async def test_hydrate_refuses_to_destroy_unknown_local_files(config: Config, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a.txt").write_text("volume version")
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        dst.mkdir()
        (dst / "a.txt").write_text("my own precious file")
        (dst / "mine.txt").write_text("untouched")
        with pytest.raises(LocalConflict) as info:
            await hydrate(eng, "vol", dst)
        assert info.value.paths == ["a.txt"]
        assert (dst / "a.txt").read_text() == "my own precious file"
        await hydrate(eng, "vol", dst, overwrite=True)
    assert (dst / "a.txt").read_text() == "volume version"
    assert (dst / "mine.txt").read_text() == "untouched"


async def test_identical_untracked_file_is_adopted_not_downloaded(config: Config, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    payload = os.urandom(3 * 1024 * 1024)
    (src / "model.bin").write_bytes(payload)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    dst.mkdir()
    (dst / "model.bin").write_bytes(payload)
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng2:
        res = await hydrate(eng2, "vol", dst)
        assert res.adopted == 1 and res.files_written == 0
        assert not [k for k in eng2.counter.keys if "/chunks/" in k]


async def test_local_edit_survives_rehydrate_and_is_committed(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    (src / "b.txt").write_text("one")
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        (src / "a.txt").write_text("local edit")
        res = await hydrate(eng, "vol", src)
        # the snapshot did not change a.txt: a hydrate from an exact index does not even look at it
        # (hydratescope.py); the edit is the next commit's
        assert res.kept_local == [] and res.files_written == 0
        assert (src / "a.txt").read_text() == "local edit"
        await hydrate(eng, "vol", src, changed={"a.txt"})      # the agent, whose watcher saw it
        assert (src / "a.txt").read_text() == "local edit"
        await commit(eng, "vol", src)
        await hydrate(eng, "vol", tmp_path / "other")
    assert (tmp_path / "other" / "a.txt").read_text() == "local edit"


async def test_hydrate_missing_volume_is_a_clear_error(engine: object, tmp_path: Path) -> None:
    from syncd.engine.wiring import Engine
    assert isinstance(engine, Engine)
    with pytest.raises(VolumeNotFound, match="nope"):
        await hydrate(engine, "nope", tmp_path / "x")


async def test_file_modified_during_commit_is_never_committed_torn(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import syncd.data.chunkread as chunkread
    src = tmp_path / "src"
    src.mkdir()
    target = src / "ckpt.bin"
    target.write_bytes(b"A" * (3 * 1024 * 1024))
    real_read = chunkread._read_window
    writes = {"n": 0}

    def racing_read(fd: int, buf: bytearray, offset: int, *args: Any) -> list[tuple[bytes, str]]:
        data = real_read(fd, buf, offset, *args)
        if offset == 0 and writes["n"] < 1:  # a writer rewrites the file mid-read, once
            writes["n"] += 1
            target.write_bytes(b"B" * (3 * 1024 * 1024))
        return data

    monkeypatch.setattr(chunkread, "_read_window", racing_read)
    async with open_engine(config) as eng:
        res = await commit(eng, "vol", src)
        assert res.skipped == []
        await hydrate(eng, "vol", tmp_path / "out")
    assert (tmp_path / "out" / "ckpt.bin").read_bytes() == b"B" * (3 * 1024 * 1024)


async def test_file_that_never_settles_keeps_its_previous_version(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd.local import dirfd  # a small file is read whole in the walk's thread (commitscan.py)
    src = tmp_path / "src"
    src.mkdir()
    target = src / "log.bin"
    target.write_bytes(b"v1" * 1000)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        target.write_bytes(b"v2" * 1000)
        real_read = dirfd.read_whole

        def always_racing(dir_fd: int, name: str) -> Any:   # a writer appends while it is read
            before, data, _ = real_read(dir_fd, name)
            with open(target, "ab") as f:
                f.write(b"more")
            return before, data, os.stat(target)

        monkeypatch.setattr(dirfd, "read_whole", always_racing)
        res = await commit(eng, "vol", src)
        assert res.skipped == ["log.bin"]
        monkeypatch.setattr(dirfd, "read_whole", real_read)
        await hydrate(eng, "vol", tmp_path / "out")
    assert (tmp_path / "out" / "log.bin").read_bytes() == b"v1" * 1000
