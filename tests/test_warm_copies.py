"""Warm re-hydrates of files cut into many chunks (format 3): the chunk cache is asked once per
batch of ids, not once per chunk (cachedb.get_many), and chunks that lie back to back in one
source file are copied as one run (localcopy): one fingerprint check before and after, one
``copy_file_range``. A source changed while it is being copied is still never trusted."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
import pytest

from syncd.config import Config, MiB
from syncd.data import cache as cache_mod
from syncd.data import cachedb
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.format.chunking import Chunker

from .conftest import worker_config

OLD = 1_600_000_000 * 10**9   # an mtime far from now: not racy
BIG = random.Random(7).randbytes(13 * MiB + 5)
CHUNKS = len(Chunker(1 * MiB, 256 * 1024).cut(memoryview(BIG), eof=True))   # as conftest's config cuts it


@pytest.fixture
def config(config: Config) -> Config:
    return config.replace(large_pack_size=32 * MiB)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement diskcache runs that looks keys up in its table (any thread)."""
    seen: list[str] = []
    real = diskcache.Cache._sql

    def counting(self: diskcache.Cache) -> Callable[..., Any]:
        execute = real.fget(self)

        def run(statement: str, *args: Any) -> Any:
            if statement.lstrip().startswith("SELECT") and "FROM Cache WHERE key" in statement:
                seen.append(statement)
            return execute(statement, *args)
        return run

    monkeypatch.setattr(diskcache.Cache, "_sql", property(counting))
    return seen


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts asked of each ``copy_file_range``."""
    calls: list[int] = []
    real = os.copy_file_range

    def counting(src: int, dst: int, count: int, offset_src: int | None = None,
                 offset_dst: int | None = None) -> int:
        calls.append(count)
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", counting)
    return calls


async def _volume(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(BIG)
    os.utime(src / "big.bin", ns=(OLD, OLD))
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)


def chunk_gets(keys: object) -> list[str]:
    return [k for k in keys if "/chunks/" in k or "/packs/" in k]  # type: ignore[attr-defined]


async def test_warm_rehydrate_looks_chunks_up_in_batches_and_copies_one_run(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lookups: list[str],
        copies: list[int]) -> None:
    monkeypatch.setattr(cachedb, "BATCH", 4)
    assert CHUNKS > 8
    await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        lookups.clear()
        copies.clear()
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert chunk_gets(eng.counter.keys) == []
        assert eng.cache is not None and eng.cache.stats.hits == CHUNKS and eng.cache.stats.trusted == CHUNKS
    assert len(lookups) == -(-CHUNKS // 4)     # one SELECT per 4 ids, not one per chunk
    assert copies == [len(BIG)]                # the whole file in one copy_file_range
    assert (tmp_path / "b" / "big.bin").read_bytes() == BIG


async def test_a_source_written_during_the_copy_is_verified_and_its_changed_chunk_fetched(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashes: list[int]) -> None:
    """The source passes the fingerprint check before the copy; a writer changes a chunk while the
    kernel copies (simulated: just before the copy runs). The check after the copy sees it: no
    chunk is trusted, every copied chunk is hashed, the changed one is fetched from the store."""
    await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        source = tmp_path / "a" / "big.bin"
        real = os.copy_file_range
        writes: list[int] = []

        def copy_while_written(src: int, dst: int, count: int, offset_src: int | None = None,
                               offset_dst: int | None = None) -> int:
            if not writes:
                with open(source, "r+b") as f:
                    f.seek(5 * MiB)
                    writes.append(f.write(b"changed under the copy"))
            return real(src, dst, count, offset_src, offset_dst)

        monkeypatch.setattr(os, "copy_file_range", copy_while_written)
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert writes
        assert eng.cache is not None and eng.cache.stats.trusted == 0
        assert len(hashes) == CHUNKS and eng.cache.stats.stale == 1
        assert len(chunk_gets(eng.counter.keys)) == 1
    assert (tmp_path / "b" / "big.bin").read_bytes() == BIG


def test_batched_lookups_return_what_get_returns_and_keep_lru_order(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cachedb, "BATCH", 3)
    cache = diskcache.Cache(str(tmp_path / "dc"), eviction_policy="least-recently-used")
    try:
        values: dict[str, object] = {
            "a:ref": (cache_mod.REF, "/x/y", 0, 10, (1, 2, 3, 4, 5)),
            "a:old-ref": (cache_mod.REF, "/x/y", 10, 5),
            "a:small": b"tiny",
            "a:big": os.urandom(100_000),           # kept in a file of its own
            "b:ref": (cache_mod.REF, "/x/z", 0, 1),
        }
        for key, value in values.items():
            cache.set(key, value)
        cache.set("a:expired", b"gone", expire=0.001)
        time.sleep(0.01)   # expire_time is in the past: what Cache.get treats as absent
        keys = ["a:ref", "a:old-ref", "a:small", "a:big", "a:missing", "a:expired", "b:ref"]
        before = {k: cache._sql("SELECT access_time FROM Cache WHERE key = ?", (k,)).fetchone()[0]
                  for k in values}
        found = cachedb.get_many(cache, keys)
        assert found == {k: cache.get(k) for k in keys if cache.get(k) is not None}
        assert set(found) == set(values)
        after = {k: cache._sql("SELECT access_time FROM Cache WHERE key = ?", (k,)).fetchone()[0]
                 for k in values}
        assert all(after[k] > before[k] for k in values)   # used: last in line for eviction
        assert cachedb.get_many(cache, []) == {}
    finally:
        cache.close()


async def test_a_failed_lookup_is_a_miss(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")

        def broken(cache: object, keys: list[str]) -> dict[str, object]:
            raise sqlite3.OperationalError("database disk image is malformed")

        monkeypatch.setattr(cachedb, "get_many", broken)
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert eng.cache is not None and eng.cache.stats.errors == 1
        assert len(chunk_gets(eng.counter.keys)) == 1     # fetched from the store: one pack run
    assert (tmp_path / "b" / "big.bin").read_bytes() == BIG
