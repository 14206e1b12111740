"""Large files' consecutive new chunks share packs (SYNCD_LARGE_PACK_SIZE), read back with one
ranged GET per run, every chunk still content-addressed, deduplicated and verified.

Counts requests on the real SeaweedFS: PUTs per pack at commit, GETs per run at hydrate, one
chunk uploaded for a one-chunk edit; check and prune treat such packs like small-file packs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from syncd.config import Config, KiB, MiB
from syncd.data.fetch import ChunkFetcher, coalesce
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine, open_engine
from syncd.errors import IntegrityError, TransientStoreError
from syncd.format.chunking import content_id
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef
from syncd.maint.check import check
from syncd.maint.prune import Retention, prune
from syncd.store.base import BlobStream, MemoryStore
from syncd.store.wrap import RetryingStore

from .checks import tmp_files
from .conftest import worker_config
from .faultproxy import FaultProxy, Rule
from .test_crashes import Zygote, commit_trials, hydrate_trials


@pytest.fixture
def packed(config: Config) -> Config:
    """1 MiB chunks, large packs of up to 4 MiB."""
    return config.replace(large_pack_size=4 * MiB)


def data_keys(eng: Engine, kind: str) -> int:
    return sum(n for k, n in eng.counter.keys.items() if f"/{kind}/" in k)


async def test_chunks_share_packs_and_a_run_is_one_get(packed: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = random.Random(10).randbytes(10 * MiB + 5)    # ~10 chunks of 1 MiB on average, the same cuts every run
    (src / "big.bin").write_bytes(big)
    async with open_engine(packed) as eng:
        result = await commit(eng, "vol", src)
        snap = await eng.repo.snapshot("vol", (await eng.repo.head("vol")).snapshot or "")
        refs = snap.entries["big.bin"].chunks
        packs = {r.pack for r in refs if r.pack}
        alone = [r for r in refs if not r.pack]           # a group's last chunk left alone: its own object
        assert result.uploaded_chunks == len(refs) >= 5 and result.uploaded_bytes == len(big)
        assert packs and len(packs) + len(alone) < len(refs)     # chunks share packs (a chunk over half a pack: alone)
        keys = [o.key async for o in eng.store.list_objects(eng.layout.volume_prefix("vol"))]
        assert sum("/packs/" in k for k in keys) == len(packs) and sum("/chunks/" in k for k in keys) == len(alone)
    async with open_engine(worker_config(packed, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
        assert data_keys(eng, "packs") == len(packs) and data_keys(eng, "chunks") == len(alone)   # a GET each
    assert (tmp_path / "dst" / "big.bin").read_bytes() == big


async def test_a_one_chunk_edit_uploads_one_chunk_and_dedupes_the_rest(packed: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # fixed bytes: 9 chunks in 3 packs, the edit in the middle of the second pack (random bytes
    # moved the cut after the edit about one time in 10,000, making two new chunks)
    big = bytearray(random.Random(3).randbytes(9 * MiB))
    (src / "big.bin").write_bytes(big)
    async with open_engine(packed) as eng:
        first = await commit(eng, "vol", src)
        big[5 * MiB + 10:5 * MiB + 20] = b"x" * 10
        (src / "big.bin").write_bytes(big)
        result = await commit(eng, "vol", src)
        snap = await eng.repo.snapshot("vol", result.snapshot or "")
        old = {c.id for c in (await eng.repo.snapshot("vol", first.snapshot or "")).entries["big.bin"].chunks}
        refs = snap.entries["big.bin"].chunks
        new = [r for r in refs if r.id not in old]
        # the chunk holding the edit is new, every other chunk reused
        assert result.uploaded_chunks == len(new) == 1 and not new[0].pack       # a group of one: alone
        assert result.uploaded_bytes == new[0].size <= 4 * packed.chunk_size
        assert result.reused_chunks == first.uploaded_chunks - 1 == len(refs) - 1
    w2 = worker_config(packed, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
        # runs: the old packs, the one the edit fell in now two runs, and the new chunk alone
        runs = coalesce(refs, packed.large_pack_size)
        assert data_keys(eng, "packs") + data_keys(eng, "chunks") == len(runs) < len(refs)
    assert (tmp_path / "dst" / "big.bin").read_bytes() == bytes(big)


async def test_check_and_prune_handle_large_packs(packed: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    async with open_engine(packed) as eng:
        (src / "big.bin").write_bytes(os.urandom(6 * MiB))
        await commit(eng, "vol", src)
        old = {r.pack or r.id for r in (await eng.repo.latest("vol"))[1].entries["big.bin"].chunks}  # type: ignore[union-attr]
        (src / "big.bin").write_bytes(os.urandom(6 * MiB))   # every chunk new: the old packs die
        await commit(eng, "vol", src)
        assert (await check(eng, "vol", read_data=True)).ok
        result = await prune(eng, "vol", Retention(keep_snapshots=1, grace=0))
        # the old version's packs (and chunks too big to share one), and the tree pack of its snapshot
        assert result.deleted_objects == len(old) + 1 and 6 * MiB < result.deleted_bytes < 6 * MiB + 4096
        after = await check(eng, "vol", read_data=True)
        assert after.ok and 6 * MiB < after.bytes_verified < 6 * MiB + 4096     # data plus the live tree pack
    async with open_engine(worker_config(packed, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
    assert (tmp_path / "dst" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


async def test_many_large_files_at_once_fit_a_small_budget(packed: Config, tmp_path: Path) -> None:
    """Open large packs hold budget; with more files than the budget can buffer, groups are
    flushed early instead of every reader waiting for budget that nobody releases."""
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}.bin": os.urandom(3 * MiB) for i in range(8)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    tight = packed.replace(max_inflight_bytes=4 * MiB, large_pack_size=32 * MiB)
    async with open_engine(tight) as eng:
        await asyncio.wait_for(commit(eng, "vol", src), 120)   # a guard against a deadlock only
    async with open_engine(worker_config(tight, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
    assert {p.name: p.read_bytes() for p in (tmp_path / "dst").iterdir()} == files


@pytest.mark.parametrize("fault", ["reset", "truncate", "stall_body"])
async def test_packed_hydrate_through_faults_retries_and_completes(packed: Config, tmp_path: Path,
                                                                   s3_endpoint: str, fault: str) -> None:
    """The fault proxy on the GETs of large packs: each fault costs one re-read of the run
    (counted), and the tree comes out whole; no temporary file is left."""
    src = tmp_path / "src"
    src.mkdir()
    big = random.Random(3).randbytes(8 * MiB + 1)     # fixed bytes: 9 chunks in 3 packs (random bytes
    (src / "big.bin").write_bytes(big)                 # left every chunk alone, no pack, about one time in 90)
    async with open_engine(packed) as eng:
        await commit(eng, "vol", src)
        snap = await eng.repo.snapshot("vol", (await eng.repo.head("vol")).snapshot or "")
        assert len({r.pack for r in snap.entries["big.bin"].chunks if r.pack}) == 3
    proxy = await FaultProxy(s3_endpoint).start()
    try:
        w2 = worker_config(packed, tmp_path, "w2").replace(
            s3_endpoint=proxy.endpoint, read_timeout=0.5, connect_timeout=1.0, retry_base_delay=0.01)
        async with open_engine(w2) as eng:
            proxy.rules = [Rule(fault, method="GET", path="/packs/", times=2, delay=2.0)]
            await hydrate(eng, "vol", tmp_path / "dst")
            inner = eng.counter.inner
            assert isinstance(inner, RetryingStore)
            assert proxy.injected[fault] == 2 and inner.retries + eng.fetcher.stream_retries == 2
    finally:
        await proxy.close()
    assert (tmp_path / "dst" / "big.bin").read_bytes() == big and not tmp_files(tmp_path / "dst")


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    z = Zygote(tmp_path / "zygote.log")
    try:
        yield z
    finally:
        z.close()


@pytest.mark.slow
async def test_killed_commits_and_hydrates_with_large_packs(config: Config, tmp_path: Path, zygote: Zygote) -> None:
    """test_crashes.py's kill -9 trials with the packed layout (64 KiB chunks, 4 to a pack)."""
    packed = config.replace(large_pack_size=256 * KiB)
    (tmp_path / "c").mkdir()
    (tmp_path / "h").mkdir()
    print("commit kill -9:", await commit_trials(packed, tmp_path / "c", zygote, trials=30, seed=21))
    print("hydrate kill -9:", await hydrate_trials(packed.replace(prefix=packed.prefix + "-h"), tmp_path / "h",
                                                   zygote, trials=30, seed=22))   # a volume of its own


async def test_a_streamed_run_reports_each_chunk_once_as_it_verifies(packed: Config, tmp_path: Path) -> None:
    """``stream_run(verified=...)`` (the lazy mount's readahead): each chunk of a run is reported
    once, in order, after all its bytes were written; a chunk damaged in the store is never
    reported, the run raises, and the chunks around it still are."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(7).randbytes(8 * MiB))   # the same cut points every run
    async with open_engine(packed) as eng:
        await commit(eng, "vol", src)
        snap = await eng.repo.snapshot("vol", (await eng.repo.head("vol")).snapshot or "")
        refs = next(run for run in coalesce(snap.entries["big.bin"].chunks, packed.large_pack_size)
                    if len(run) >= 3)                  # chunks back to back in one pack: one GET
        starts = [sum(r.size for r in refs[:i]) for i in range(len(refs) + 1)]
        chunks = snap.entries["big.bin"].chunks
        skip = sum(r.size for r in chunks[:chunks.index(refs[0])])      # where the run starts in the file
        big = (src / "big.bin").read_bytes()[skip:skip + starts[-1]]
        got = bytearray(len(big))
        seen: list[tuple[int, bool]] = []

        def write_sync(pos: int, view: memoryview) -> None:
            got[pos:pos + len(view)] = view

        async def write(pos: int, pieces: list[bytes]) -> None:
            for piece in pieces:
                write_sync(pos, memoryview(piece))
                pos += len(piece)

        def verified(index: int) -> None:
            lo, hi = starts[index], starts[index + 1]
            seen.append((index, bytes(got[lo:hi]) == big[lo:hi]))
        await eng.fetcher.stream_run("vol", refs, write, write_sync, verified)
        assert seen == [(i, True) for i in range(len(refs))] and got == big

        key = eng.layout.pack("vol", refs[0].pack or "")
        damaged = bytearray((await eng.store.get(key)).data)
        damaged[refs[1].offset + 7] ^= 0xFF
        await eng.store.put(key, bytes(damaged))
        seen.clear()
        with pytest.raises(IntegrityError):
            await eng.fetcher.stream_run("vol", refs, write, write_sync, verified)
        assert seen == [(i, True) for i in range(len(refs)) if i != 1]

class _CutTwiceThenGarbled(MemoryStore):
    """A store whose first two streamed bodies break off and whose third is junk."""

    def __init__(self) -> None:
        super().__init__()
        self.streams = 0

    def get_stream(self, key: str, start: int | None = None,
                   end: int | None = None) -> contextlib.AbstractAsyncContextManager[BlobStream]:
        self.streams += 1
        if self.streams <= 2:
            raise TransientStoreError(f"{key}: the body broke off")

        @contextlib.asynccontextmanager
        async def junk() -> AsyncIterator[BlobStream]:
            async def pieces() -> AsyncIterator[bytes]:
                yield bytes((end or 0) - (start or 0))
            yield BlobStream((end or 0) - (start or 0), "", pieces())
        return junk()


async def test_a_run_cut_off_twice_then_garbled_is_an_integrity_error() -> None:
    """Two bodies cut short, then a garbled one on the last attempt: IntegrityError (it was an
    AssertionError, which left a lazy mount's reader without an answer). Retry logic only: a
    store that misbehaves in this exact order."""
    body = os.urandom(2 * 1024)
    refs = [ChunkRef(content_id(body[:1024]), 1024, "a" * 32, 0),
            ChunkRef(content_id(body[1024:]), 1024, "a" * 32, 1024)]
    store = _CutTwiceThenGarbled()
    fetcher = ChunkFetcher(store, Layout("pre", "alice"), None)

    async def write(pos: int, pieces: list[bytes]) -> None:
        return None
    with pytest.raises(IntegrityError):
        await fetcher.stream_run("vol", refs, write)
    assert store.streams == 3 and fetcher.stream_retries == 2
