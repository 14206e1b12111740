"""A cold fan-out through one gateway, against a real SeaweedFS: spooled flights.

Six requests for one 8 MiB chunk arrive while the store is still sending it
(the store's last piece is held back until all six have joined): one origin
GET, every byte of all six responses left by ``sendfile`` from the flight's
spool file, the leader never held the object in memory, and the spool file
itself became the cache entry (same inode: moved, not copied). A corrupted
object gives no complete response to any of the six and leaves nothing
behind, neither in the cache nor in the spool directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import aiohttp
import pytest

from gateway import flight as flight_module
from gateway.flight import Flight
from gateway.service import ObjectRef
from syncd.config import Config, MiB
from syncd.format.chunking import content_id

from .gatewayutil import Gateway, commit_tree, metric, serve_gateway
from .test_gateway_service import GatedStore, big_chunks

READERS = 6


async def _chunk(config: Config, tmp_path: Path) -> tuple[Config, str, int]:
    config = dataclasses.replace(config, chunk_size=4 * MiB)      # chunks of 1-16 MiB, cut by content
    _, snap = await commit_tree(config, tmp_path / "src", small_files=2, large_size=20 * MiB + 17)
    ref = max(big_chunks(snap), key=lambda r: r.size)
    assert ref.size >= 2 * MiB
    return config, ref.id, ref.size


async def _all_joined(gw: Gateway, obj: ObjectRef) -> Flight:
    """The flight, once every reader has joined it (the store is holding its last piece back)."""
    async with asyncio.timeout(10):
        while True:
            flight = gw.service._flights.get(obj.flight_key)
            if flight is not None and flight._refs == READERS + 1 and flight.spool is not None:
                return flight
            await asyncio.sleep(0.01)


def _cache_files(gw: Gateway) -> list[Path]:
    return list(gw.service.cache.directory.rglob("*.val"))


async def test_six_misses_are_sent_from_the_spool_file_and_it_becomes_the_cache_entry(
        config: Config, tmp_path: Path) -> None:
    config, object_id, size = await _chunk(config, tmp_path)
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        origin = gw.origin
        gated = GatedStore(origin)
        gw.service.store = gated  # type: ignore[assignment]
        url = f"{gw.url}/v1/alice/vol/chunks/{object_id}"

        async def get() -> bytes:
            async with http.get(url) as resp:
                assert resp.status == 200
                return await resp.read()

        readers = [asyncio.ensure_future(get()) for _ in range(READERS)]
        flight = await _all_joined(gw, ObjectRef("alice", "vol", "chunks", object_id))
        assert flight.pieces == [] and flight.spool_path is not None  # on disk, not in memory
        spooled = os.stat(flight.spool_path).st_ino
        gated.gate.set()
        assert all(content_id(b) == object_id for b in await asyncio.gather(*readers))
        await gw.service.settled()
        assert origin.calls["get"] == 1 and origin.bytes_in == size
        text = await (await http.get(f"{gw.url}/metrics")).text()
        assert metric(text, "syncd_gateway_singleflight_joins_total", kind="chunks") == READERS - 1
        assert metric(text, "syncd_gateway_sendfile_bytes_total") == READERS * size
        assert metric(text, "syncd_gateway_served_bytes_total", kind="chunks") == READERS * size
        [entry] = _cache_files(gw)
        assert os.stat(entry).st_ino == spooled and entry.stat().st_size == size
        assert list(gw.service.cache.spool_dir.iterdir()) == []
        assert flight.spool is None  # every reader closed it: the descriptor is gone too
        async with http.get(url) as resp:  # a hit, from the file the flight wrote
            assert content_id(await resp.read()) == object_id
        assert origin.calls["get"] == 1


async def test_a_corrupt_object_completes_no_response_and_leaves_no_file(config: Config, tmp_path: Path) -> None:
    config, object_id, size = await _chunk(config, tmp_path)
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        origin = gw.origin
        gated = GatedStore(origin, corrupt=True)
        gw.service.store = gated  # type: ignore[assignment]
        url = f"{gw.url}/v1/alice/vol/chunks/{object_id}"
        received: list[int] = []

        async def get() -> None:
            async with http.get(url) as resp:
                assert resp.status == 200  # the headers went out before the object was complete
                try:
                    async for piece in resp.content.iter_any():
                        received.append(len(piece))
                finally:
                    assert resp.content_length == size

        readers = [asyncio.ensure_future(get()) for _ in range(READERS)]
        await _all_joined(gw, ObjectRef("alice", "vol", "chunks", object_id))
        gated.gate.set()
        results = await asyncio.gather(*readers, return_exceptions=True)
        assert all(isinstance(r, aiohttp.ClientPayloadError) for r in results), results
        assert 0 < sum(received) < READERS * size  # bytes flowed, but no reader got the whole object
        await gw.service.settled()
        assert origin.calls["get"] == 1
        assert _cache_files(gw) == [] and list(gw.service.cache.spool_dir.iterdir()) == []
        gw.service.store = gated.inner  # type: ignore[assignment]
        async with http.get(url) as resp:  # fetched again, verified this time
            assert content_id(await resp.read()) == object_id


@pytest.mark.parametrize("spool", [True, False])
async def test_a_flight_reads_the_same_bytes_spooled_or_not(tmp_path: Path, spool: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure logic: ranges of a flight, from its spool file or its pieces; a range's end waits."""
    monkeypatch.setattr(flight_module, "SPOOL_BATCH", 1)  # every piece written at once (batches: below)
    data = os.urandom(100_000)
    flight = Flight(content_id(data), tmp_path / "spool" if spool else None)
    await flight.start(len(data))
    assert (flight.spool is not None) is spool
    await flight.add(data[:60_000])
    assert await asyncio.wait_for(flight.ready(10, 90_000), 5) == 60_000  # what arrived may go out

    async def collect(start: int, end: int) -> bytes:
        return b"".join([bytes(p) async for p in flight.read(start, end)])

    head = asyncio.ensure_future(collect(0, 100))  # arrived, but a range's end waits for verification
    tail = asyncio.ensure_future(collect(10, len(data)))
    await asyncio.sleep(0)
    assert not head.done() and not tail.done()
    await flight.add(data[60_000:])
    flight.finish()
    assert await asyncio.wait_for(head, 5) == data[:100]
    assert await asyncio.wait_for(tail, 5) == data[10:]
    flight.release()
    assert flight.spool is None
    assert not (tmp_path / "spool").exists() or list((tmp_path / "spool").iterdir()) == []


async def test_spooled_pieces_are_written_in_batches(tmp_path: Path) -> None:
    """Pieces reach the spool file (and readers) in batches of SPOOL_BATCH or a quarter of the object,
    whichever is less, and all of it with the last piece."""
    piece = 256 * 1024
    data = os.urandom(5 * piece)
    flight = Flight(content_id(data), tmp_path / "spool")
    await flight.start(len(data))
    seen = []
    for i in range(0, len(data), piece):
        await flight.add(data[i:i + piece])
        seen.append(flight.available)
    assert seen == [0, 2 * piece, 2 * piece, 4 * piece, 5 * piece]  # batches of >= 1.25 MiB / 4
    flight.finish()
    assert flight.spool is not None and os.pread(flight.spool.fileno(), len(data), 0) == data
    flight.release()
