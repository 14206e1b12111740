"""Commit point, concurrent writers, cache integrity and hostile snapshots on a real S3 server."""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.volumes import encode_head
from syncd.engine.wiring import Engine, open_engine
from syncd.errors import InvalidName, ManifestError
from syncd.format.chunking import content_id
from syncd.format.layout import object_key

from .conftest import worker_config
from .treeutil import snapshot_tree


async def test_twenty_concurrent_creators_one_winner(engine: Engine) -> None:
    results = await asyncio.gather(*(engine.repo.create("race") for _ in range(20)))
    assert sum(created for _, created in results) == 1
    assert await engine.repo.names() == ["race"]


async def test_concurrent_writers_disjoint_and_overlapping_paths(config: Config, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "shared.txt").write_text("v0")
    async with open_engine(config) as eng:
        await commit(eng, "vol", seed)

    workers = [worker_config(config, tmp_path, f"w{i}") for i in range(4)]
    dirs = [tmp_path / f"dir{i}" for i in range(4)]
    for cfg, d in zip(workers, dirs):
        async with open_engine(cfg) as eng:
            await hydrate(eng, "vol", d)

    async def writer(i: int) -> None:
        (dirs[i] / f"only-{i}.txt").write_text(f"from {i}")
        (dirs[i] / "shared.txt").write_text(f"shared from {i}")
        async with open_engine(workers[i]) as eng:
            await commit(eng, "vol", dirs[i])

    await asyncio.gather(*(writer(i) for i in range(4)))

    async with open_engine(config) as eng:
        history = await eng.repo.history("vol")
        out = tmp_path / "out"
        await hydrate(eng, "vol", out)
    assert [s.seq for _, s in history] == [5, 4, 3, 2, 1]  # one line, no commit lost
    for i in range(4):
        assert (out / f"only-{i}.txt").read_text() == f"from {i}"
    # the same path changed on every side: the last commit to land wins ...
    last_writer = history[0][1].entries
    winner = (out / "shared.txt").read_text()
    assert winner.startswith("shared from ")
    # ... and every other version stays reachable in the history
    async with open_engine(config) as eng:
        versions = set()
        for sid, snap in history:
            target = tmp_path / f"h-{sid[:8]}"
            await hydrate(eng, "vol", target, snapshot_id=sid)
            versions.add((target / "shared.txt").read_text())
    assert {f"shared from {i}" for i in range(4)} <= versions
    assert "shared.txt" in last_writer


async def test_corrupt_cache_entry_is_evicted_and_refetched(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))  # 2 MiB: a few chunks, stored plain
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        await hydrate(eng, "vol", tmp_path / "a")
        assert eng.cache is not None
        _, snap = await eng.repo.latest("vol")
        assert snap is not None
        ref = snap.entries["big.bin"].chunks[0]
        eng.cache._cache.set(f"alice:{ref.id}", b"garbage" * 10)
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert eng.cache.stats.corrupt == 1
        assert eng.counter.keys[object_key(eng.layout, "vol", ref)] == 1  # refetched once
    assert (tmp_path / "b" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


async def _plant_snapshot(eng: Engine, volume: str, entries: list[dict[str, object]]) -> None:
    doc = {"format": 1, "volume": volume, "owner": eng.layout.owner, "seq": 1, "parent": None,
           "created": 0.0, "writer": "evil", "entries": entries}
    data = zlib.compress(json.dumps(doc).encode())
    sid = content_id(data)
    await eng.store.put(eng.layout.snapshot(volume, sid), data)
    await eng.store.put(eng.layout.head(volume), encode_head(volume, sid, 1, 0.0))


@pytest.mark.parametrize("entries", [
    [{"path": "../escape.txt", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 0, "chunks": []}],
    [{"path": "/etc/evil", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 0, "chunks": []}],
    [{"path": "link", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": "../../.."}],
])
async def test_hostile_snapshot_writes_nothing(engine: Engine, tmp_path: Path,
                                               entries: list[dict[str, object]]) -> None:
    await _plant_snapshot(engine, "evil", entries)
    target = tmp_path / "sandbox" / "target"
    with pytest.raises(ManifestError):
        await hydrate(engine, "evil", target)
    assert list((tmp_path / "sandbox").rglob("*")) in ([], [target])
    assert not Path("/etc/evil").exists()


async def test_invalid_volume_names_are_rejected(engine: Engine, tmp_path: Path) -> None:
    for bad in ["../other", "a/b", "", "x" * 100]:
        with pytest.raises(InvalidName):
            await commit(engine, bad, tmp_path)
        with pytest.raises(InvalidName):
            await hydrate(engine, bad, tmp_path / "t")


async def test_large_file_round_trip_through_multipart(config: Config, tmp_path: Path) -> None:
    cfg = config.replace(large_pack_size=12 * 1024 * 1024, multipart_threshold=8 * 1024 * 1024,
                         multipart_part_size=5 * 1024 * 1024, pack_threshold=256 * 1024)
    src = tmp_path / "src"
    src.mkdir()
    (src / "ckpt.bin").write_bytes(os.urandom(30 * 1024 * 1024 + 3))   # large packs of ~12 MiB: multipart
    async with open_engine(cfg) as eng:
        await commit(eng, "vol", src)
    async with open_engine(worker_config(cfg, tmp_path, "w2")) as eng2:
        await hydrate(eng2, "vol", tmp_path / "dst")
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(src)


async def test_volume_delete_removes_every_object(engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    await commit(engine, "vol", src)
    assert await engine.repo.names() == ["vol"]
    await engine.repo.delete("vol")
    assert await engine.repo.names() == []
    assert [o async for o in engine.store.list_objects(engine.layout.volume_prefix("vol"))] == []
