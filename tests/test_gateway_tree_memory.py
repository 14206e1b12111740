"""The gateway's tree route under one owner's hostile load: memory bounded by configuration.

Finding 1 of the outside review (issue 22): an owner plants in its own volume
one tree pack with three legal trees of 300,000 entries each (about 24 MiB
canonical, under 1 MiB stored) and sends 20 concurrent
``POST /v1/<owner>/<volume>/trees/<pack>`` requests naming all three, reading
each answer slowly. A gateway that builds each answer in memory holds 20 x 72
MiB (and more: the framed copy, the transport buffer) and its memory grows with
the number of requests; a shared gateway must not let one owner do that.

The test runs the gateway as its own process, applies exactly that load, and
asserts on what the operator and the workers would notice: the gateway's peak
RSS (``VmHWM``) stays within a bound that does not depend on the number of
requests, and every request the gateway accepted got the right bytes (each tree
hashed as it streams in; the client holds at most one piece at a time).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import uuid
from pathlib import Path

import aiohttp
import pytest
import xxhash

from gateway.treefiles import Copy, Span, discard, inflate_trees
from syncd.config import Config, MiB
from syncd.engine.wiring import open_engine
from syncd.errors import IntegrityError
from syncd.format.layout import Layout
from syncd.format.manifest import Entry
from syncd.format.tree import TreeItem, encode_tree, pack_tree

from .gatewayutil import gateway_process

ENTRIES = 300_000   # per tree: about 24 MiB canonical
CLIENTS = 20        # concurrent requests, each naming all three trees
PIECE = 256 * 1024  # what a slow reader takes at a time
PAUSE = 0.02        # between its pieces: about 12 MiB/s per reader
GROWTH_BOUND = 160 * MiB  # peak RSS above the idle gateway's: today's main reached ~2.9 GiB


def wide_tree(tag: str) -> tuple[str, bytes]:
    """A legal tree of ENTRIES empty files: (id, canonical bytes)."""
    return encode_tree([TreeItem(Entry(f"{tag}{i:07d}", "file")) for i in range(ENTRIES)])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def read_slowly(http: aiohttp.ClientSession, url: str, body: bytes,
                      expected: list[tuple[str, int]]) -> tuple[int, bool]:
    """POST, then read the framed answer slowly, hashing each tree as it arrives:
    (status, every tree matched its id and size)."""
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            await resp.read()
            return resp.status, False
        ok = True
        for tree_id, size in expected:
            (length,) = struct.unpack(">Q", await resp.content.readexactly(8))
            hasher = xxhash.xxh3_128()
            left = length
            while left:
                piece = await resp.content.read(min(PIECE, left))
                if not piece:
                    return resp.status, False
                hasher.update(piece)
                left -= len(piece)
                await asyncio.sleep(PAUSE)  # a slow reader (the load's shape, not a synchronisation)
            ok = ok and length == size and hasher.hexdigest() == tree_id
        ok = ok and await resp.content.read() == b""
        return resp.status, ok


@pytest.mark.slow  # ~30 s of slow readers on 2 cores; the piece-by-piece test below stays in the default suite
async def test_one_owner_cannot_exhaust_the_gateways_memory_through_the_tree_route(
        config: Config, tmp_path: Path) -> None:
    trees = [wide_tree(tag) for tag in ("a", "b", "c")]
    assert all(20 * MiB < len(data) < 30 * MiB for _, data in trees)
    stored = [pack_tree(data) for _, data in trees]
    assert all(len(s) < 2 * MiB for s in stored)
    pack_id = uuid.uuid4().hex
    refs, offset = [], 0
    for (tree_id, _), s in zip(trees, stored, strict=True):
        refs.append([tree_id, offset, len(s)])
        offset += len(s)
    async with open_engine(config) as eng:
        await eng.store.put(Layout(config.prefix, "alice").tree_pack("vol", pack_id), b"".join(stored))
    expected = [(tree_id, len(data)) for tree_id, data in trees]
    body = json.dumps({"trees": refs}).encode()
    del trees, stored

    with gateway_process(config, tmp_path) as (proc, url):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            target = f"{url}/v1/alice/vol/trees/{pack_id}"
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            idle = status_kib(proc.pid, "VmRSS") * 1024
            results = []
            for _ in ("cold", "cached"):  # the first round shares one miss, the second reads the cache
                results += await asyncio.gather(*(read_slowly(http, target, body, expected)
                                                  for _ in range(CLIENTS)))
        peak = status_kib(proc.pid, "VmHWM") * 1024
    print(f"tree route load: idle {idle / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB")
    accepted = [ok for status, ok in results if status == 200]
    assert all(status in (200, 503) for status, _ in results), results
    assert accepted and all(accepted), results           # every accepted request got the right bytes
    assert len(accepted) == 2 * CLIENTS                  # and none had to be shed: nothing is held per request
    assert peak - idle < GROWTH_BOUND, f"peak RSS {peak / MiB:.0f} MiB, idle {idle / MiB:.0f} MiB"


def test_a_tree_is_inflated_piece_by_piece_and_checked_like_inflate_tree(tmp_path: Path) -> None:
    """inflate_trees (gateway/treefiles.py) keeps inflate_tree's checks: one complete stream of
    exactly the stored size, hashing to its id; a large tree lands in a spool file, a small one
    stays bytes; a failing tree fails alone."""
    big_id, big = encode_tree([TreeItem(Entry(f"f{i:06d}", "file")) for i in range(5_000)])
    small_id, small = encode_tree([TreeItem(Entry("one", "file"))])
    packed_big, packed_small = pack_tree(big), pack_tree(small)
    blob = packed_big + packed_small + packed_small + b"junk"
    spool = tmp_path / "span"
    spool.write_bytes(blob)
    at_small = len(packed_big)
    spans = [Span(big_id, 0, len(packed_big)),                                  # in a file
             Span(small_id, at_small, len(packed_small)),                        # bytes
             Span(small_id, at_small, len(packed_small) + 4),                    # trailing bytes
             Span(small_id, at_small, len(packed_small) - 1),                    # cut short
             Span(big_id, at_small, len(packed_small)),                          # another tree's bytes
             Span(small_id, len(blob) - 2, 10)]                                  # past the pack's end
    with open(spool, "rb") as src:
        results = inflate_trees(src.fileno(), spans, tmp_path)
    first, second, *bad = results
    assert isinstance(first, Copy) and first.path is not None and first.data is None
    assert first.file is not None and os.pread(first.file.fileno(), first.size + 1, 0) == big
    discard(first)
    assert isinstance(second, Copy) and second.data == small and second.path is None
    assert all(isinstance(r, IntegrityError) for r in bad), bad
    assert sorted(p.name for p in tmp_path.iterdir()) == ["span"]               # no spool file left
