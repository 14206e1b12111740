"""The byte budget never deadlocks on bytes the uploader parks in open packs (pure logic, in memory).

A large file's new chunks wait in an open large pack until it fills or the file ends, a small
file's in the open small-file pack; both hold their budget meanwhile. A reader that needs more
than the budget minus those parked bytes could never be served by PUTs finishing, so the
uploader must flush its open packs then, and only then (early flushes cut packs short and cost
hydrate GETs). The gateway test's commit hung on exactly this (4 MiB budget, 8 MiB large packs,
chunks cut by content).
"""

from __future__ import annotations

import asyncio
import os

from syncd.config import MiB
from syncd.data.upload import Uploader
from syncd.format.chunking import content_id
from syncd.format.layout import Layout
from syncd.limits import ByteBudget
from syncd.store.base import MemoryStore


def _uploader(store: MemoryStore, budget: ByteBudget, pack_size: int = 8 * MiB) -> Uploader:
    return Uploader(store, Layout("p", "alice"), "vol", budget, pack_size, {}, large_pack_size=8 * MiB,
                    compression=False)


async def _add(up: Uploader, budget: ByteBudget, size: int, small: bool, group: object = None) -> str:
    data = os.urandom(size)
    held = await budget.acquire(size)
    chunk_id = content_id(data)
    await up.add(chunk_id, data, held, small, group=group)
    return chunk_id


async def _settle(up: Uploader) -> None:
    while up._placing:        # the lookups and compressions queued by add
        await asyncio.gather(*up._placing)
        up._placing = [t for t in up._placing if not t.done()]


async def test_a_reader_waiting_on_a_parked_large_pack_gets_its_bytes() -> None:
    store, budget = MemoryStore(), ByteBudget(4 * MiB)
    up = _uploader(store, budget)
    await _add(up, budget, 3 * MiB // 2, small=False, group="big.bin")   # parked: under half the budget
    await _settle(up)
    assert store.objects == {}                                         # nothing flushed early
    held = await asyncio.wait_for(budget.acquire(3 * MiB), 10)         # 2.5 MiB free: waits, then the
    assert held == 3 * MiB and len(store.objects) == 1                 # open pack is flushed for it
    await budget.release(held)
    await up.finish()


async def test_a_reader_waiting_on_a_parked_small_file_pack_gets_its_bytes() -> None:
    store, budget = MemoryStore(), ByteBudget(4 * MiB)
    up = _uploader(store, budget)
    for _ in range(3):
        await _add(up, budget, MiB, small=True)                         # the small-file pack: 3 MiB parked
    await _settle(up)
    assert store.objects == {}
    held = await asyncio.wait_for(budget.acquire(2 * MiB), 10)
    assert held == 2 * MiB and len(store.objects) == 1
    await budget.release(held)
    await up.finish()
    assert budget.used == 0


async def test_a_reader_that_puts_will_serve_does_not_cut_packs_short() -> None:
    """Bytes in flight (a PUT under way) will come back by themselves: no flush for them."""
    store, budget = MemoryStore(), ByteBudget(4 * MiB)
    up = _uploader(store, budget)
    await _add(up, budget, MiB, small=False, group="a.bin")            # parked: 1 MiB
    await _settle(up)
    other = await budget.acquire(2 * MiB)                               # held by someone else, in flight
    waiter = asyncio.ensure_future(budget.acquire(2 * MiB))             # 1 MiB free, 3 MiB once that is back
    await asyncio.sleep(0)
    assert not waiter.done() and store.objects == {}                    # the open pack stays open
    await budget.release(other)
    assert await asyncio.wait_for(waiter, 10) == 2 * MiB and store.objects == {}
    await budget.release(2 * MiB)
    await up.finish()
    assert budget.used == 0


async def test_a_reader_waiting_on_a_batch_of_small_chunks_gets_its_bytes() -> None:
    """A commit hands a step's small files to the uploader at once (add_small): they park in
    the open pack like chunks added one by one, and a reader that needs them back gets them."""
    store, budget = MemoryStore(), ByteBudget(4 * MiB)
    up = _uploader(store, budget)
    chunks = []
    for _ in range(3):
        data = os.urandom(MiB)
        chunks.append((content_id(data), data, await budget.acquire(MiB)))
    dup = chunks[0][:2] + (await budget.acquire(MiB),)     # a chunk the batch already holds
    await up.add_small(chunks + [dup])
    assert budget.used == 3 * MiB                          # the duplicate's bytes are back at once
    await _settle(up)
    assert store.objects == {} and budget.parked == 3 * MiB
    held = await asyncio.wait_for(budget.acquire(2 * MiB), 10)
    assert held == 2 * MiB and len(store.objects) == 1
    await budget.release(held)
    await up.finish()
    assert budget.used == 0 and budget.parked == 0 and up.uploaded_chunks == 3 and up.reused_chunks == 1
