"""Large files' chunks: streamed from the store into place, verified, and cached by reference
into the hydrated file (SYNCD_CACHE_LARGE=ref); small files' chunks likewise, once written."""

from __future__ import annotations

import os
import random
from pathlib import Path

import diskcache
import pytest

from syncd.config import Config, MiB
from syncd.data.cache import REF
from syncd.engine.commit import commit
from syncd.engine.hydrate import REF_MIN, hydrate
from syncd.engine.wiring import open_engine
from syncd.errors import IntegrityError

from .conftest import worker_config


@pytest.fixture
def config(config: Config) -> Config:
    """The default layout: a large file's consecutive chunks share packs."""
    return config.replace(large_pack_size=32 * MiB)


OLD = 1_600_000_000 * 10**9   # an mtime far from now: a fingerprint that can be trusted (stamp.py)


def chunk_gets(keys: object) -> list[str]:
    """GETs of chunk data: chunk objects and packs (a large file's chunks share packs)."""
    return [k for k in keys if "/chunks/" in k or "/packs/" in k]  # type: ignore[attr-defined]


async def test_second_hydrate_reads_chunks_from_the_first_copy_not_the_store(
        config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(5 * MiB + 3)
    (src / "big.bin").write_bytes(big)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    w2 = worker_config(config, tmp_path, "w2")
    assert w2.cache_large == "ref"
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        assert sum(eng.counter.keys[k] for k in chunk_gets(eng.counter.keys)) == 1  # ~6 chunks, one pack, one GET
        chunks = len((await eng.repo.latest("vol"))[1].entries["big.bin"].chunks)  # type: ignore[union-attr]
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert chunk_gets(eng.counter.keys) == []            # every chunk came from a/big.bin
        assert eng.cache is not None and eng.cache.stats.hits == chunks
    # the cache holds references, not a second copy of the bytes
    assert sum(p.stat().st_size for p in w2.cache_dir.rglob("*.val")) < MiB
    assert (tmp_path / "b" / "big.bin").read_bytes() == big


async def test_reference_to_a_changed_file_is_a_miss_and_the_chunk_is_fetched(
        config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(3 * MiB)
    (src / "big.bin").write_bytes(big)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        with open(tmp_path / "a" / "big.bin", "r+b") as f:   # the user edits the first MiB in place
            f.write(b"x" * 100)
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert len(chunk_gets(eng.counter.keys)) == 1         # only the edited chunk
        assert eng.cache is not None and eng.cache.stats.stale == 1
    assert (tmp_path / "b" / "big.bin").read_bytes() == big


async def test_copy_mode_keeps_chunk_bytes_in_the_cache(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(2 * MiB))
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    w2 = worker_config(config, tmp_path, "w2").replace(cache_large="copy")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
    (tmp_path / "a" / "big.bin").unlink()
    async with open_engine(w2) as eng:
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert chunk_gets(eng.counter.keys) == []


async def test_streamed_chunk_that_fails_verification_is_an_integrity_error(
        config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(4 * MiB + 1))   # over the largest chunk: two chunks or more
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
        victim = [i.key async for i in eng.store.list_objects(eng.layout.volume_prefix("vol"))
                  if "/packs/" in i.key][0]            # the file's chunks share one pack
        blob = await eng.store.get(victim)
        await eng.store.put(victim, blob.data[:-1] + bytes([blob.data[-1] ^ 1]))
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        with pytest.raises(IntegrityError, match=victim):
            await hydrate(eng, "vol", tmp_path / "dst")
        assert eng.counter.keys[victim] == 2                 # streamed, re-checked once, refused
    assert not (tmp_path / "dst" / "big.bin").exists()       # nothing half-made is published
    assert [p.name for p in (tmp_path / "dst").iterdir()] == []




async def test_small_files_are_cached_as_references_into_the_hydrated_copy(
        config: Config, tmp_path: Path) -> None:
    """A cold hydrate writes each small file once: the cache records where its chunk sits in the
    file (no second copy of the bytes, no value file for the larger ones), for chunks of at least
    REF_MIN bytes; smaller ones are not cached. A second hydrate on the worker reads the larger
    ones from the first copy, trusting unchanged files' fingerprints, and the tiny ones with one
    ranged GET of their pack; an edited file is a miss, fetched again in that GET."""
    rng = random.Random(5)
    src = tmp_path / "src"
    src.mkdir()
    sizes = [0, 1, 700, REF_MIN - 1, REF_MIN, 40_000, 200_000, *(rng.randrange(2048) for _ in range(20)),
             *(rng.randrange(REF_MIN, 250_000) for _ in range(8))]          # all below pack_threshold
    for n, size in enumerate(sizes):
        path = src / f"d{n % 4}" / f"f{n}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        os.utime(path, ns=(OLD, OLD))
    referenced = sum(size >= REF_MIN for size in sizes)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "a")
        snapshot = (await eng.repo.latest("vol"))[1]
        assert snapshot is not None
        packs = {e.chunks[0].pack for e in snapshot.entries.values() if e.chunks}
        chunks = {e.chunks[0].id: e.size for e in snapshot.entries.values() if e.chunks}
    entries = diskcache.Cache(str(w2.cache_dir))
    try:
        cached = {i: entries.get(f"{w2.owner}:{i}") for i in chunks}
    finally:
        entries.close()
    assert {i for i, v in cached.items() if v is not None} == {i for i, size in chunks.items() if size >= REF_MIN}
    assert all(v[0] == REF and v[4] is not None for v in cached.values() if v is not None)
    assert list(w2.cache_dir.rglob("*.val")) == []           # no bytes kept beside the copy
    async with open_engine(w2) as eng:
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "b")
        assert len(chunk_gets(eng.counter.keys)) == len(packs)   # the tiny files' ranges, one per pack
        assert eng.cache is not None and eng.cache.stats.trusted == referenced
        big = next(n for n, size in enumerate(sizes) if size == 200_000)
        (tmp_path / "a" / f"d{big % 4}" / f"f{big}").write_bytes(b"edited")
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "c")
        assert len(chunk_gets(eng.counter.keys)) == len(packs)   # the edited file's chunk joins those ranges
        assert eng.cache.stats.stale == 1 and eng.cache.stats.trusted == 2 * referenced - 1
    for n in range(len(sizes)):
        rel = Path(f"d{n % 4}") / f"f{n}"
        assert (tmp_path / "b" / rel).read_bytes() == (src / rel).read_bytes() == (tmp_path / "c" / rel).read_bytes()
