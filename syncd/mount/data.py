"""File bytes: lower chunks fetched on demand, an upper layer for what was written.

Reads. A file node's lower content is its snapshot chunk list. A read maps
its byte range to chunk indexes (bisect over the chunk start offsets) and
asks :meth:`Data.chunk` for each, which serves from a small in-memory LRU of
verified chunks, else joins an in-flight load, else loads through the
engine's ``ChunkFetcher`` -- local cache, then gateways, then the store,
single-flight, every chunk verified against its id before a byte is returned.
Any error there becomes ``EIO`` for the read that needed it; wrong bytes are
never returned because nothing unverified reaches the LRU.

* Readahead: a handle whose reads are sequential gets the next ``readahead``
  chunks loaded in the background. The LRU holds half the engine's byte
  budget and readahead never asks for more than fits, so a stream of reads
  holds bounded memory however large the file.
* Small files: a chunk that lives in a pack is loaded together with its
  directory's other small files in the same pack (one ranged GET for a
  window of up to ``PACK_WINDOW`` bytes, via ``get_packed``), so reading a
  directory of small files costs a few GETs, not one per file.

Writes (copy-up). The first write to a file creates its upper file under the
mount's upper directory, as a sparse file of the node's size. Only the chunks
a write touches are copied up (``present``); a write that covers a whole
chunk copies nothing. ``lower_limit`` is where the lower content ends
(truncate lowers it), so a byte at offset x comes from the lower chunk iff
``x < lower_limit`` and its chunk is not present, else from the upper file.
The upper layer is bounded by ``limit`` bytes (allocated blocks, from
``fstat``): a write past it fails with ``ENOSPC`` before anything is written,
so the file keeps its previous content and nothing committed is affected.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import functools
import itertools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from syncd.data.fetch import ChunkFetcher
from syncd.errors import SyncdError
from syncd.format.manifest import ChunkRef
from syncd.mount.tree import FsError, Node

log = logging.getLogger(__name__)
PACK_WINDOW = 4 << 20
SEQUENTIAL_SLACK = 1 << 20   # the kernel's own readahead may answer slightly out of order


@dataclass
class ReadState:
    """Per open handle: where a sequential reader would read next."""
    next_offset: int = 0


class Data:
    def __init__(self, fetcher: ChunkFetcher, volume: str, upper_dir: Path, memory: int,
                 readahead: int = 8, limit: int | None = None) -> None:
        self.fetcher, self.volume, self.upper_dir = fetcher, volume, upper_dir
        self._caching: set[asyncio.Task[None]] = set()
        self.memory, self.readahead, self.limit = memory, readahead, limit
        self.used = 0                                # upper-layer bytes allocated
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._lru_bytes = 0
        self._ahead: set[str] = set()          # read ahead, not read yet
        self._loading: dict[str, asyncio.Task[bytes]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._fds: dict[int, int] = {}
        self._starts: dict[int, list[int]] = {}
        self.errors = 0

    # ---------------------------------------------------------------- lower chunks

    def starts(self, node: Node) -> list[int]:
        got = self._starts.get(node.ino)
        if got is None or len(got) != len(node.chunks) + 1:
            got = self._starts[node.ino] = [0, *itertools.accumulate(c.size for c in node.chunks)]
        return got

    def _remember(self, chunk_id: str, data: bytes) -> None:
        if chunk_id in self._lru:
            self._lru.move_to_end(chunk_id)
            return
        self._lru[chunk_id] = data
        self._lru_bytes += len(data)
        while self._lru_bytes > self.memory and len(self._lru) > 1:
            # chunks read ahead but not read yet go last: evicting them would fetch them twice
            victim = next((k for k in self._lru if k not in self._ahead and k != chunk_id), None)
            if victim is None:
                victim = next(iter(self._lru))
            self._ahead.discard(victim)
            self._lru_bytes -= len(self._lru.pop(victim))

    async def chunk(self, node: Node, index: int) -> bytes:
        ref = node.chunks[index]
        data = self._lru.get(ref.id)
        if data is not None:
            self._lru.move_to_end(ref.id)
            self._ahead.discard(ref.id)
            return data
        task = self._loading.get(ref.id)
        if task is None:
            task = self._loading[ref.id] = asyncio.ensure_future(self._load(node, ref))
            task.add_done_callback(functools.partial(self._loaded, ref.id))
        try:
            return await asyncio.shield(task)
        except SyncdError as exc:
            self.errors += 1
            log.warning("read of %s chunk %s failed: %s", self.volume, ref.id, exc)
            raise FsError(errno.EIO) from exc

    def _loaded(self, key: str, task: asyncio.Task[bytes]) -> None:
        self._loading.pop(key, None)
        if not task.cancelled():
            task.exception()   # retrieved: a reader that went away must not leave a warning

    async def _load(self, node: Node, ref: ChunkRef, ahead: bool = False) -> bytes:
        if ref.pack is None:
            data = await self.fetcher.get(self.volume, ref, cache_bytes=False)
            if ahead:
                self._ahead.add(ref.id)
            self._remember(ref.id, data)
            await self._cache_later(ref.id, data)
            return data
        found = await self.fetcher.get_packed(self.volume, ref.pack, self._pack_peers(node, ref))
        for chunk_id, piece in found.items():
            self._remember(chunk_id, piece)
        return found[ref.id]

    async def _cache_later(self, chunk_id: str, data: bytes) -> None:
        """Write a verified chunk to the local cache without making the reader wait for
        the disk; at most ``readahead`` writes pending (bounded memory), then inline."""
        cache = self.fetcher.cache
        if cache is None:
            return
        if len(self._caching) >= self.readahead:
            await asyncio.wait(self._caching, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(cache.put(chunk_id, data))
        self._caching.add(task)
        task.add_done_callback(self._caching.discard)

    def _pack_peers(self, node: Node, ref: ChunkRef) -> list[ChunkRef]:
        """``ref`` and the chunks of small files beside it in the same pack window."""
        peers = {ref.id: ref}
        parent = node.parent
        for sibling in (parent.children or {}).values() if parent is not None else ():
            for other in sibling.chunks if sibling.kind == "file" else ():
                if (other.pack == ref.pack and abs(other.offset - ref.offset) < PACK_WINDOW
                        and other.id not in self._lru):
                    peers[other.id] = other
        return list(peers.values())

    def _prefetch(self, node: Node, first: int) -> None:
        budget = max(1, min(self.readahead, self.memory // max(1, node.chunks[0].size) - 2))
        for index in range(first, min(first + budget, len(node.chunks))):
            ref = node.chunks[index]
            if ref.id in self._lru or ref.id in self._loading:
                continue
            task = asyncio.ensure_future(self._quiet(node, index))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _quiet(self, node: Node, index: int) -> None:
        ref = node.chunks[index]
        try:
            task = self._loading.get(ref.id)
            if task is None:
                task = self._loading[ref.id] = asyncio.ensure_future(self._load(node, ref, ahead=True))
                task.add_done_callback(functools.partial(self._loaded, ref.id))
            await asyncio.shield(task)
        except SyncdError:
            pass   # the read that needs it will see the error

    # ---------------------------------------------------------------- reads

    async def read(self, node: Node, offset: int, size: int, state: ReadState | None = None) -> bytes:
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        starts = self.starts(node)
        pieces: list[bytes] = []
        pos, last_index = offset, -1
        while pos < end:
            if pos >= node.lower_limit or not node.chunks:
                pieces.append(await self._read_upper(node, pos, end - pos))
                break
            index = bisect.bisect_right(starts, pos) - 1
            stop = min(end, starts[index + 1], node.lower_limit)
            if node.upper and index in node.present:
                pieces.append(await self._read_upper(node, pos, stop - pos))
            else:
                data = await self.chunk(node, index)
                pieces.append(data[pos - starts[index]:stop - starts[index]])
                last_index = index
            pos = stop
        if state is not None:
            if abs(offset - state.next_offset) <= SEQUENTIAL_SLACK and last_index >= 0:
                self._prefetch(node, last_index + 1)
            state.next_offset = end
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _read_upper(self, node: Node, offset: int, size: int) -> bytes:
        fd = self._fds.get(node.ino)
        data = b"" if fd is None else await asyncio.to_thread(os.pread, fd, size, offset)
        return data + bytes(size - len(data)) if len(data) < size else data

    # ---------------------------------------------------------------- writes

    async def _ensure_upper(self, node: Node) -> int:
        fd = self._fds.get(node.ino)
        if fd is not None:
            return fd
        path = self.upper_dir / str(node.ino)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            await asyncio.to_thread(os.ftruncate, fd, node.size)
        except OSError as exc:
            raise FsError(exc.errno or errno.EIO) from exc
        self._fds[node.ino] = fd
        node.upper = True
        return fd

    async def _pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if self.limit is not None and self.used + len(data) > self.limit:
            raise FsError(errno.ENOSPC)
        try:
            before = (await asyncio.to_thread(os.fstat, fd)).st_blocks
            written = await asyncio.to_thread(os.pwrite, fd, data, offset)
            after = (await asyncio.to_thread(os.fstat, fd)).st_blocks
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):   # the writer sees an errno only: say where
                log.warning("write to %s refused: the upper layer's file system is full (%s) in %s",
                            self.volume, os.strerror(exc.errno), self.upper_dir)
            raise FsError(exc.errno or errno.EIO) from exc
        self.used += (after - before) * 512
        if written != len(data):
            raise FsError(errno.ENOSPC)

    async def _copy_up(self, node: Node, fd: int, start: int, end: int,
                       whole: tuple[int, int] | None = None) -> list[int]:
        """Copy the lower chunks overlapping ``[start, end)`` into the upper file, except a
        chunk lying entirely inside ``whole`` (about to be overwritten): those are returned,
        to be marked present only once the write that covers them succeeded."""
        covered: list[int] = []
        if start >= min(end, node.lower_limit) or not node.chunks:
            return covered
        starts = self.starts(node)
        first = bisect.bisect_right(starts, start) - 1
        for index in range(first, len(node.chunks)):
            lo, hi = starts[index], min(starts[index + 1], node.lower_limit)
            if lo >= min(end, node.lower_limit):
                break
            if index in node.present:
                continue
            if whole is not None and whole[0] <= lo and hi <= whole[1]:
                covered.append(index)
                continue
            data = await self.chunk(node, index)
            await self._pwrite(fd, data[:hi - lo], lo)
            node.present.add(index)
        return covered

    async def write(self, node: Node, offset: int, data: bytes) -> int:
        fd = await self._ensure_upper(node)
        end = offset + len(data)
        covered = await self._copy_up(node, fd, offset, end, (offset, end))
        node.version += 1
        await self._pwrite(fd, data, offset)
        node.present.update(covered)
        node.size = max(node.size, end)
        node.version += 1
        node.touch()
        return len(data)

    async def truncate(self, node: Node, size: int) -> None:
        if size == node.size:
            return
        fd = await self._ensure_upper(node)
        if size < node.lower_limit:
            await self._copy_up(node, fd, size, size + 1)   # the chunk the new end falls in
            node.lower_limit = size
        node.version += 1
        try:
            await asyncio.to_thread(os.ftruncate, fd, size)
        except OSError as exc:
            raise FsError(exc.errno or errno.EIO) from exc
        node.size = size
        node.version += 1
        node.touch()

    async def sync(self, node: Node) -> None:
        fd = self._fds.get(node.ino)
        if fd is not None:
            await asyncio.to_thread(os.fsync, fd)

    async def drop(self, node: Node) -> None:
        """Free a forgotten node's upper file."""
        self._starts.pop(node.ino, None)
        fd = self._fds.pop(node.ino, None)
        if fd is not None:
            self.used -= await asyncio.to_thread(_close_and_unlink, fd, self.upper_dir / str(node.ino))

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, *self._caching, return_exceptions=True)
        for ino in list(self._fds):
            os.close(self._fds.pop(ino))


def _close_and_unlink(fd: int, path: Path) -> int:
    """Close and delete an upper file; returns the bytes it had allocated."""
    try:
        freed = os.fstat(fd).st_blocks * 512
        os.close(fd)
        os.unlink(path)
    except OSError as exc:
        log.warning("cannot remove upper file %s: %s", path, exc)
        return 0
    return freed
