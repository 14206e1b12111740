"""Flipped bytes in the bucket and in the local chunk cache: always detected, repaired where a good copy exists.

Store objects are damaged by writing corrupted bytes straight into the bucket
through the S3Store; the cache is damaged both through its files on disk and
through the diskcache API. The gateway's cache is the gateway's own test suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine, open_engine
from syncd.errors import IntegrityError, ManifestError
from syncd.local.scan import TMP_PREFIX

from .conftest import worker_config
from .treeutil import make_tree, snapshot_tree


async def flip(engine: Engine, key: str, at: int | None = None) -> None:
    data = bytearray((await engine.store.get(key)).data)
    data[len(data) // 2 if at is None else at] ^= 0x5A
    await engine.store.put(key, bytes(data))


async def keys(engine: Engine, kind: str) -> list[str]:
    prefix = engine.layout.volume_prefix("vol") + kind + "/"
    return [o.key async for o in engine.store.list_objects(prefix)]


def assert_no_bad_bytes(target: Path, good: dict[str, tuple[str, int, bytes | str | None]]) -> None:
    """Everything in ``target`` is exactly what the snapshot says, or absent; no temp files."""
    if not target.exists():
        return
    for path, value in snapshot_tree(target).items():
        assert TMP_PREFIX not in path, f"temp file left: {path}"
        assert path in good, f"unexpected {path}"
        if value[0] == "file":
            assert value[2] == good[path][2], f"{path} holds wrong bytes"


@pytest.fixture
async def volume(config: Config, tmp_path: Path) -> dict[str, tuple[str, int, bytes | str | None]]:
    src = tmp_path / "src"
    make_tree(src, small_files=30, large_size=2_500_000)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    return snapshot_tree(src)


@pytest.mark.parametrize("kind", ["chunks", "packs"])
async def test_corrupt_store_object_is_a_clear_error_and_writes_nothing_bad(
        config: Config, tmp_path: Path, volume: dict[str, tuple[str, int, bytes | str | None]], kind: str) -> None:
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng:
        victim = (await keys(eng, kind))[0]
        await flip(eng, victim)
        target = tmp_path / "dst"
        with pytest.raises(IntegrityError) as info:
            await hydrate(eng, "vol", target)
        assert "'vol'" in str(info.value) and victim in str(info.value)
        assert_no_bad_bytes(target, volume)
        # the corrupt object was never cached: a second attempt fails the same way, from the store
        eng.counter.reset()
        with pytest.raises(IntegrityError):
            await hydrate(eng, "vol", target)
        assert victim in eng.counter.keys
        assert_no_bad_bytes(target, volume)


async def test_failed_update_keeps_the_previous_version_intact(config: Config, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    old = os.urandom(2_200_000)
    (src / "model.bin").write_bytes(old)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(config) as eng, open_engine(w2) as eng2:
        await commit(eng, "vol", src)
        await hydrate(eng2, "vol", dst)
        before = set(await keys(eng, "chunks"))
        (src / "model.bin").write_bytes(os.urandom(2_200_000))
        await commit(eng, "vol", src)
        new_chunk = sorted(set(await keys(eng, "chunks")) - before)[0]
        await flip(eng, new_chunk)
        with pytest.raises(IntegrityError, match=new_chunk):
            await hydrate(eng2, "vol", dst)
    assert (dst / "model.bin").read_bytes() == old
    assert [p.name for p in dst.iterdir()] == ["model.bin"]


async def test_corrupt_store_object_with_a_good_cached_copy_still_hydrates(
        config: Config, tmp_path: Path, volume: dict[str, tuple[str, int, bytes | str | None]]) -> None:
    """What the first hydrate cached is served from the cache though the store's copy is corrupt:
    here the large file's chunks (small files' chunks below REF_MIN are not cached, so their
    packs are read again, and they are intact)."""
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "first")           # fills the cache
        chunks = await keys(eng, "chunks")
        for key in chunks:
            await flip(eng, key)
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "second")
        assert chunks and not [k for k in eng.counter.keys if "/chunks/" in k]
    assert snapshot_tree(tmp_path / "second") == volume


def cache_value_files(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob("*.val")]


async def test_corrupt_cache_files_on_disk_are_evicted_and_refetched(
        config: Config, tmp_path: Path, volume: dict[str, tuple[str, int, bytes | str | None]]) -> None:
    # copy mode: the chunk bytes themselves live in cache files (ref mode: test_cache_refs.py)
    w2 = worker_config(config, tmp_path, "w2").replace(cache_large="copy")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "first")
    files = cache_value_files(w2.cache_dir)
    assert len(files) >= 2                                       # the large chunks (cut by content) live in files
    for f in files:
        data = bytearray(f.read_bytes())
        data[len(data) // 3] ^= 0xFF
        f.write_bytes(bytes(data))
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "second")
        assert eng.cache is not None and eng.cache.stats.corrupt == len(files)
        assert len([k for k in eng.counter.keys if "/chunks/" in k]) == len(files)
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "third")           # refetched bytes were re-cached
        assert not [k for k in eng.counter.keys if "/chunks/" in k or "/packs/" in k]
    assert snapshot_tree(tmp_path / "second") == volume
    assert snapshot_tree(tmp_path / "third") == volume


async def test_corrupt_cache_entries_via_the_api_are_evicted(
        config: Config, tmp_path: Path, volume: dict[str, tuple[str, int, bytes | str | None]]) -> None:
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "first")
        assert eng.cache is not None
        raw = eng.cache._cache
        poisoned = [k for k in raw.iterkeys()]
        for key in poisoned:
            raw.set(key, b"poison" if len(poisoned) % 2 else "not even bytes")
        eng.repo.trees.forget()          # format v2: trees too are read from the disk cache again
        await hydrate(eng, "vol", tmp_path / "second")
        assert eng.cache.stats.corrupt == len(poisoned)
        assert not [k for k in raw.iterkeys() if raw.get(k) in (b"poison", "not even bytes")]
    assert snapshot_tree(tmp_path / "second") == volume


async def test_cache_and_store_both_corrupt_is_an_integrity_error(
        config: Config, tmp_path: Path, volume: dict[str, tuple[str, int, bytes | str | None]]) -> None:
    # copy mode: the cached bytes are corrupted in the cache's own files (ref mode: test_cache_refs.py)
    w2 = worker_config(config, tmp_path, "w2").replace(cache_large="copy")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "first")
        victim = (await keys(eng, "chunks"))[0]
        await flip(eng, victim)
    for f in cache_value_files(w2.cache_dir):
        f.write_bytes(b"\x00" * f.stat().st_size)
    async with open_engine(w2) as eng:
        with pytest.raises(IntegrityError, match=victim):
            await hydrate(eng, "vol", tmp_path / "second")
    assert_no_bad_bytes(tmp_path / "second", volume)


async def test_corrupt_snapshot_and_head_are_manifest_errors(
        config: Config, tmp_path: Path, volume: dict[str, tuple[str, int, bytes | str | None]]) -> None:
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng:
        head = await eng.repo.head("vol")
        assert head.snapshot
        snap_key = eng.layout.snapshot("vol", head.snapshot)
        await flip(eng, snap_key, at=3)
        with pytest.raises(ManifestError) as info:
            await hydrate(eng, "vol", tmp_path / "dst")
        assert "'vol'" in str(info.value) and head.snapshot in str(info.value)
        await eng.store.put(eng.layout.head("vol"), b'{"format": 1, "snapshot": "../../etc", "seq": 1}')
        with pytest.raises(ManifestError, match="HEAD of 'vol'"):
            await hydrate(eng, "vol", tmp_path / "dst")
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").iterdir())


class LyingSource:
    """A chunk source (the gateway seam) that returns every chunk with one byte flipped."""

    name = "liar"

    def __init__(self, engine: Engine) -> None:
        self.engine, self.calls = engine, 0

    async def fetch(self, volume: str, ref: object) -> bytes | None:
        from syncd.format.manifest import ChunkRef
        assert isinstance(ref, ChunkRef)
        self.calls += 1
        data = bytearray(await self.engine.fetcher.get(volume, ref))
        data[0] ^= 0x01
        return bytes(data)

    def weight(self, key: str) -> int:
        return 0

    async def fetch_range(self, volume: str, pack: str, start: int, end: int) -> bytes | None:
        self.calls += 1
        blob = await self.engine.store.get(self.engine.layout.pack(volume, pack), start, end)
        return bytes(b ^ 0x01 for b in blob.data)  # every chunk in the range is wrong


async def test_a_source_returning_bad_bytes_is_skipped_not_trusted(
        config: Config, tmp_path: Path, volume: dict[str, tuple[str, int, bytes | str | None]]) -> None:
    """A compromised or broken gateway can slow a worker down, never make it write wrong bytes."""
    async with open_engine(worker_config(config, tmp_path, "honest"), use_cache=False) as honest:
        liar = LyingSource(honest)
        async with open_engine(worker_config(config, tmp_path, "w2"), sources=[liar]) as eng:
            await hydrate(eng, "vol", tmp_path / "dst")
            assert liar.calls >= 3 and eng.fetcher.bytes_by_source["liar"] == 0
            assert eng.fetcher.bytes_by_source["store"] > 2_500_000
    assert snapshot_tree(tmp_path / "dst") == volume
