"""The lazy mount's read path, counted on a real FUSE mount over the real SeaweedFS.

Chunks cut by content in packs of 4 MiB (``large_pack_size``), so a large file's runs
are its packs: a sequential read costs one GET per run, a random 4 KiB read one chunk's
range and nothing more, readahead stays inside ``SYNCD_MOUNT_MEMORY``, and a chunk damaged in the
store is EIO for its reader, never other bytes.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import random
from pathlib import Path
from typing import Any

import pytest

from syncd.config import Config, MiB
from syncd.data.fetch import coalesce
from syncd.engine.commit import commit
from syncd.engine.wiring import open_engine
from syncd.format.manifest import ChunkRef
from syncd.mount.process import readahead_unit

from .agentutil import wait_for
from .mountutil import MountProcess, fuse_missing

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")


@pytest.fixture
def packed(config: Config) -> Config:
    return config.replace(large_pack_size=4 * MiB, mount_memory=16 * MiB)


async def seed(config: Config, tmp_path: Path, size: int) -> bytes:
    src = tmp_path / "src"
    src.mkdir()
    body = random.Random(size).randbytes(size)     # the same bytes every run, so the same cut points
    (src / "big.bin").write_bytes(body)
    async with open_engine(config) as engine:
        await commit(engine, "vol", src)
    return body


async def chunks_of(config: Config, path: str = "big.bin") -> list[tuple[int, ChunkRef]]:
    """(start in the file, ref) of each of the committed file's chunks, as the commit cut them."""
    async with open_engine(config) as engine:
        snap = await engine.repo.snapshot("vol", (await engine.repo.head("vol")).snapshot or "")
    out, pos = [], 0
    for ref in snap.entries[path].chunks:
        out.append((pos, ref))
        pos += ref.size
    return out


def store(m: MountProcess) -> dict[str, Any]:
    status = m.call("status")
    return {"gets": m.data_gets(), "bytes_in": status["bytes_by_source"].get("store", 0), "reads": status["reads"]}


def settled(m: MountProcess) -> dict[str, Any]:
    """The counts once no load is running (readahead finished, its GETs counted)."""
    wait_for(lambda: m.call("status")["reads"]["loading"] == 0, 30, "readahead to finish")
    return store(m)


def pread_each(path: Path, offsets: list[int], size: int, direct: bool = False) -> list[bytes]:
    """``pread`` at each offset through one handle; ``direct``: O_DIRECT, so every read reaches
    the mount process as it is made (no kernel readahead, no page cache)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        if not direct:
            return [os.pread(fd, size, off) for off in offsets]
        buffer = mmap.mmap(-1, size)     # page-aligned, as O_DIRECT wants
        out = []
        for off in offsets:
            got = os.preadv(fd, [buffer], off)
            out.append(buffer[:got])
        return out
    finally:
        os.close(fd)


async def test_a_sequential_read_costs_one_get_per_run(packed: Config, tmp_path: Path,
                                                       mounts: list[MountProcess]) -> None:
    body = await seed(packed, tmp_path, 13 * MiB + 5)
    refs = [ref for _, ref in await chunks_of(packed)]
    runs = len(coalesce(refs, readahead_unit(packed, packed.mount_memory)))   # back to back in a pack
    assert len(refs) >= 2 * runs >= 8, refs
    m = MountProcess(packed, "vol", tmp_path / "mnt", "--read-only")
    mounts.append(m)
    await asyncio.to_thread(m.start)
    assert await asyncio.to_thread((m.path / "big.bin").read_bytes) == body
    counts = await asyncio.to_thread(settled, m)
    assert counts["gets"] <= runs and counts["bytes_in"] == len(body)
    assert counts["reads"]["loads"] == counts["gets"]


async def test_a_random_4k_read_fetches_one_chunk_and_no_readahead(packed: Config, tmp_path: Path,
                                                                  mounts: list[MountProcess]) -> None:
    body = await seed(packed, tmp_path, 16 * MiB)
    m = MountProcess(packed, "vol", tmp_path / "mnt", "--read-only")
    mounts.append(m)
    await asyncio.to_thread(m.start)
    chunks = await chunks_of(packed)
    start, ref = next((p, r) for p, r in chunks if p + r.size > 10 * MiB)   # far from where a reader starts
    at = max(start, 10 * MiB) + 123
    if at + 4096 > start + ref.size:
        at = start
    got = await asyncio.to_thread(pread_each, m.path / "big.bin", [at], 4096)
    assert got == [body[at:at + 4096]]
    counts = await asyncio.to_thread(settled, m)
    assert counts["gets"] == 1 and counts["bytes_in"] == ref.size   # exactly that chunk's range


async def test_readahead_stops_at_the_memory_budget(packed: Config, tmp_path: Path,
                                                    mounts: list[MountProcess]) -> None:
    """Reading the first 2 MiB sequentially (O_DIRECT: the kernel's own readahead out of the
    way) reads ahead, but never more than SYNCD_MOUNT_MEMORY past what was read."""
    tight = packed.replace(mount_memory=8 * MiB)
    body = await seed(tight, tmp_path, 32 * MiB)
    m = MountProcess(tight, "vol", tmp_path / "mnt", "--read-only")
    mounts.append(m)
    await asyncio.to_thread(m.start)
    got = await asyncio.to_thread(pread_each, m.path / "big.bin", [0, MiB], MiB, True)
    assert b"".join(got) == body[:2 * MiB]
    counts = await asyncio.to_thread(settled, m)
    cover = next(p + r.size for p, r in await chunks_of(tight) if p + r.size >= 2 * MiB)  # chunks read
    assert 2 * MiB < counts["bytes_in"] <= cover + tight.mount_memory, counts
    assert counts["reads"]["requests"] == 2


async def test_a_corrupt_chunk_in_a_run_is_eio_never_wrong_bytes(packed: Config, tmp_path: Path,
                                                                 mounts: list[MountProcess]) -> None:
    body = await seed(packed, tmp_path, 8 * MiB)
    chunks = await chunks_of(packed)
    i = next(i for i in range(2, len(chunks)) if chunks[i][1].pack and chunks[i][1].pack == chunks[i - 1][1].pack)
    at, bad = chunks[i]                                      # a chunk inside a run, after another
    after = at + bad.size
    async with open_engine(packed) as engine:
        key = engine.layout.pack("vol", bad.pack or "")
        damaged = bytearray((await engine.store.get(key)).data)
        damaged[bad.offset + 100] ^= 0xFF
        await engine.store.put(key, bytes(damaged))
    m = MountProcess(packed, "vol", tmp_path / "mnt", "--read-only")
    mounts.append(m)
    await asyncio.to_thread(m.start)
    page = 4096      # O_DIRECT, page by page: the kernel asks for what is read and nothing more
    good, nxt = at // page * page, -(-after // page) * page    # pages wholly before / after the chunk
    assert await asyncio.to_thread(pread_each, m.path / "big.bin", [0], good, True) == [body[:good]]
    for _ in range(2):   # and again: nothing bad was kept
        with pytest.raises(OSError) as info:
            await asyncio.to_thread(pread_each, m.path / "big.bin", [good], page, True)
        assert info.value.errno == errno.EIO
    assert await asyncio.to_thread(pread_each, m.path / "big.bin", [nxt], MiB, True) == [body[nxt:nxt + MiB]]
    assert (await asyncio.to_thread(m.call, "status"))["read_errors"] >= 2
