"""Remote sources that stream into the fetcher's sink (``fetch_into``, gateways): what reaches the
file is verified, a wrong or bad answer only skips that source, and the caller's own write
failing is the caller's error, never retried through the other sources (pure logic: an
in-memory store and fake sources)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from syncd.data.fetch import ChunkFetcher
from syncd.errors import LocalIOError, TransientStoreError
from syncd.format.chunking import content_id
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef
from syncd.store.base import MemoryStore
from syncd.store.rangeread import Sink

CHUNKS = [os.urandom(300_000), os.urandom(200_000), os.urandom(100_000)]


def _refs() -> list[ChunkRef]:
    out, offset = [], 0
    for data in CHUNKS:
        out.append(ChunkRef(content_id(data), len(data), "p" * 32, offset))
        offset += len(data)
    return out


class Streaming:
    """A source that streams ``body`` (the run's bytes, or whatever it is told) in 64 KiB buffers."""

    def __init__(self, name: str, weight: int, body: bytes | None = None, fail: bool = False) -> None:
        self.name, self._weight, self.body, self.fail = name, weight, body, fail
        self.calls = 0

    def weight(self, key: str) -> int:
        return self._weight

    async def fetch(self, volume: str, ref: ChunkRef) -> bytes | None:
        raise AssertionError("a streaming source is read with fetch_into")

    async def fetch_range(self, volume: str, pack: str, start: int, end: int) -> bytes | None:
        raise AssertionError("a streaming source is read with fetch_into")

    async def fetch_into(self, volume: str, refs: Sequence[ChunkRef], sink: Sink) -> bool | None:
        self.calls += 1
        if self.fail:
            raise TransientStoreError(f"{self.name} is down")
        body = b"".join(CHUNKS[:len(refs)]) if self.body is None else self.body
        sink.begin(len(body))
        view = memoryview(body)
        for at in range(0, len(body), 65536):
            sink.write(view[at:at + 65536])
        return True


def _fetcher(*sources: Streaming) -> ChunkFetcher:
    return ChunkFetcher(MemoryStore(), Layout("p", "alice"), None, sources)


class File:
    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.writes = 0

    def write(self, position: int, view: memoryview) -> None:
        self.data[position:position + len(view)] = view
        self.writes += 1


async def test_a_run_streams_from_the_first_source_that_delivers_it_verified() -> None:
    refs = _refs()
    whole = b"".join(CHUNKS)
    down = Streaming("down", 3, fail=True)
    wrong_size = Streaming("short", 2, body=whole[:-1])
    liar = Streaming("liar", 1, body=bytes(len(whole)))
    good = Streaming("good", 0)
    fetcher = _fetcher(down, wrong_size, liar, good)
    out = File(len(whole))
    assert await fetcher._run_nearby("vol", refs, out.write)
    assert bytes(out.data) == whole
    assert [s.calls for s in (down, wrong_size, liar, good)] == [1, 1, 1, 1]
    assert dict(fetcher.bytes_by_source) == {"good": len(whole)}


async def test_no_source_delivering_leaves_the_run_to_the_store() -> None:
    refs = _refs()
    liar = Streaming("liar", 1, body=bytes(sum(len(c) for c in CHUNKS)))
    assert not await _fetcher(liar)._run_nearby("vol", refs, File(10**6).write)


async def test_the_callers_write_failing_is_raised_and_no_other_source_is_asked() -> None:
    first, second = Streaming("first", 2), Streaming("second", 1)

    def full_disk(position: int, view: memoryview) -> None:
        raise LocalIOError("cannot write /vol/big.bin: No space left on device (ENOSPC)")

    with pytest.raises(LocalIOError, match="ENOSPC"):
        await _fetcher(first, second).place_nearby("vol", _refs()[0], full_disk)
    assert (first.calls, second.calls) == (1, 0)
