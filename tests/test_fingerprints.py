"""Warm copies trusted on stat fingerprints (data/stamp.py): unchanged sources are copied without
hashing, anything whose ctime or mtime moved is hashed, and the cache scrub trusts nothing."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from syncd.config import Config, MiB
from syncd.data import localcopy
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.format.chunking import Chunker

from .conftest import worker_config

OLD = 1_600_000_000 * 10**9   # an mtime far from now: not racy
BIG = random.Random(5).randbytes(5 * MiB + 3)
CUTS = Chunker(1 * MiB, 256 * 1024).cut(memoryview(BIG), eof=True)   # as conftest's config cuts it
CHUNKS = len(CUTS)


@pytest.fixture
def config(config: Config) -> Config:
    return config.replace(large_pack_size=32 * MiB)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts localcopy's hashes of copied ranges."""
    calls: list[int] = []
    real = localcopy._hash_range

    def counting(fd: int, offset: int, size: int) -> str:
        calls.append(size)
        return real(fd, offset, size)

    monkeypatch.setattr(localcopy, "_hash_range", counting)
    return calls


async def _volume(config: Config, tmp_path: Path, mtime_ns: int = OLD) -> bytes:
    src = tmp_path / "src"
    src.mkdir()
    big = BIG
    (src / "big.bin").write_bytes(big)
    os.utime(src / "big.bin", ns=(mtime_ns, mtime_ns))
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    return big


def chunk_gets(keys: object) -> list[str]:
    return [k for k in keys if "/chunks/" in k or "/packs/" in k]  # type: ignore[attr-defined]


async def test_unchanged_source_is_copied_without_hashing(config: Config, tmp_path: Path,
                                                          hashes: list[int]) -> None:
    big = await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert chunk_gets(eng.counter.keys) == []
        assert eng.cache is not None and eng.cache.stats.trusted == CHUNKS and eng.cache.stats.hits == CHUNKS
    assert hashes == []
    assert (tmp_path / "b" / "big.bin").read_bytes() == big


async def test_a_moved_ctime_is_never_trusted(config: Config, tmp_path: Path, hashes: list[int]) -> None:
    big = await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        target = tmp_path / "a" / "big.bin"
        with open(target, "r+b") as f:       # a change that restores size and mtime: only ctime tells
            f.write(b"x" * 100)
        os.utime(target, ns=(OLD, OLD))
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert eng.cache is not None and eng.cache.stats.trusted == 0
        assert len(hashes) == CHUNKS                  # every copy verified ...
        assert eng.cache.stats.stale == 1             # ... the edited chunk refused and fetched
        assert len(chunk_gets(eng.counter.keys)) == 1
    assert (tmp_path / "b" / "big.bin").read_bytes() == big


async def test_touch_alone_costs_a_hash_not_a_download(config: Config, tmp_path: Path,
                                                       hashes: list[int]) -> None:
    await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        os.utime(tmp_path / "a" / "big.bin", ns=(OLD, OLD))    # same bytes, ctime moved
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert chunk_gets(eng.counter.keys) == [] and len(hashes) == CHUNKS
        assert eng.cache is not None and eng.cache.stats.trusted == 0 and eng.cache.stats.stale == 0


async def test_a_racy_mtime_is_verified_on_every_use(config: Config, tmp_path: Path, hashes: list[int]) -> None:
    await _volume(config, tmp_path, mtime_ns=time.time_ns())   # committed the moment it was written
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        await hydrate(eng, "vol", tmp_path / "b")
        assert eng.cache is not None and eng.cache.stats.trusted == 0
    assert len(hashes) == CHUNKS


async def test_reads_through_the_cache_trust_the_fingerprint_too(config: Config, tmp_path: Path) -> None:
    big = await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        snap = await eng.repo.snapshot("vol", (await eng.repo.head("vol")).snapshot or "")
        await hydrate(eng, "vol", tmp_path / "a")
        ref = snap.entries["big.bin"].chunks[0]
        assert eng.cache is not None
        assert await eng.cache.get(ref.id) == big[:ref.size]
        assert eng.cache.stats.trusted == 1
        os.utime(tmp_path / "a" / "big.bin", ns=(OLD, OLD))
        assert await eng.cache.get(ref.id) == big[:ref.size]    # hashed now, still good
        assert eng.cache.stats.trusted == 1


async def test_scrub_hashes_every_entry_and_forgets_the_bad(config: Config, tmp_path: Path) -> None:
    await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        assert eng.cache is not None
        first = await eng.cache.scrub()
        assert (first.references, first.bad) == (CHUNKS, []) and first.checked >= CHUNKS   # and the tree
        target = tmp_path / "a" / "big.bin"
        st = os.stat(target)
        with open(target, "r+b") as f:    # damage no fingerprint sees: pretend the disk did it
            f.seek(3 * MiB)
            f.write(b"\0" * 10)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        second = await eng.cache.scrub()
        assert second.checked == first.checked and len(second.bad) == 1
        third = await eng.cache.scrub()
        assert third.checked == first.checked - 1 and third.bad == []


async def test_a_truncated_source_serves_the_chunks_it_still_holds(config: Config, tmp_path: Path,
                                                                   hashes: list[int]) -> None:
    """One copy_file_range takes the whole file (localcopy._runs); a source cut short mid-file
    still gives the chunks before the cut, each hashed, and only the ones after it are fetched."""
    big = await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        cut = 2 * MiB + 5
        os.truncate(tmp_path / "a" / "big.bin", cut)   # the chunks before the cut whole, the rest cut or gone
        ends = [sum(CUTS[:i + 1]) for i in range(CHUNKS)]
        whole = sum(1 for end in ends if end <= cut)
        assert 1 <= whole < CHUNKS - 1
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert eng.cache is not None and eng.cache.stats.trusted == 0 and eng.cache.stats.stale == CHUNKS - whole
        assert hashes == CUTS[:whole]        # each whole chunk hashed, once
        assert sum(eng.counter.keys[k] for k in chunk_gets(eng.counter.keys)) == 1   # the missing: one run
    assert (tmp_path / "b" / "big.bin").read_bytes() == big
