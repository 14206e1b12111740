"""File bytes: lower chunks fetched on demand, an upper layer for what was written.

Reads. A file node's lower content is its snapshot chunk list. A read maps
its byte range to chunk indexes (bisect over the chunk start offsets) and
asks lower.py for each chunk: verified chunks in bounded memory, one load per
chunk id, sequential readers served by runs read ahead with one GET per pack
run, every chunk verified against its id before a byte is returned. Any error
there becomes ``EIO`` for the read that needed it; wrong bytes are never
returned because nothing unverified reaches the reader.

* Sequential or not: a handle remembers where its reads ended; a read that
  starts within ``SEQUENTIAL_SLACK`` of there (the kernel's readahead answers
  several requests at once, slightly out of order) starts readahead before it
  waits for its own chunk, so the chunk it needs is loaded as part of a run.
  Any other read loads the chunks it covers and nothing else.
* A read returns a view of the verified chunk buffer (no copy) when it lies
  in one chunk, as the kernel's requests do.

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
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from syncd.data.fetch import ChunkFetcher
from syncd.mount.lower import Buffer, Lower
from syncd.mount.tree import FsError, Node

log = logging.getLogger(__name__)
SEQUENTIAL_SLACK = 8 << 20   # the kernel's readahead may answer its window out of order


@dataclass
class ReadState:
    """Per open handle: where a sequential reader would read next."""
    next_offset: int = 0


class Data:
    def __init__(self, fetcher: ChunkFetcher, volume: str, upper_dir: Path, memory: int,
                 unit: int = 32 << 20, limit: int | None = None) -> None:
        self.fetcher, self.volume, self.upper_dir = fetcher, volume, upper_dir
        self.lower = Lower(fetcher, volume, memory, unit)
        self.limit = limit
        self.used = 0                                # upper-layer bytes allocated
        self._fds: dict[int, int] = {}
        self._starts: dict[int, list[int]] = {}
        self.read_requests = 0
        self.read_bytes = 0

    @property
    def errors(self) -> int:
        return self.lower.errors

    def starts(self, node: Node) -> list[int]:
        got = self._starts.get(node.ino)
        if got is None or len(got) != len(node.chunks) + 1:
            got = self._starts[node.ino] = [0, *itertools.accumulate(c.size for c in node.chunks)]
        return got

    async def chunk(self, node: Node, index: int) -> Buffer:
        return await self.lower.chunk(node, index)

    def closed(self, node: Node) -> None:
        """The last handle of ``node`` closed."""
        self.lower.closed(node)

    # ---------------------------------------------------------------- reads

    async def read(self, node: Node, offset: int, size: int,
                   state: ReadState | None = None) -> bytes | memoryview:
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        self.read_requests += 1
        self.read_bytes += end - offset
        starts = self.starts(node)
        if state is not None:
            if abs(offset - state.next_offset) <= SEQUENTIAL_SLACK and offset < node.lower_limit and node.chunks:
                self.lower.ahead(node, bisect.bisect_right(starts, offset) - 1)
            state.next_offset = end
        pieces: list[bytes | memoryview] = []
        pos = offset
        while pos < end:
            if pos >= node.lower_limit or not node.chunks:
                pieces.append(await self._read_upper(node, pos, end - pos))
                break
            index = bisect.bisect_right(starts, pos) - 1
            stop = min(end, starts[index + 1], node.lower_limit)
            if node.upper and index in node.present:
                pieces.append(await self._read_upper(node, pos, stop - pos))
            else:
                data = await self.lower.chunk(node, index)
                pieces.append(memoryview(data)[pos - starts[index]:stop - starts[index]])
            pos = stop
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

    async def _pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
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
            data = await self.lower.chunk(node, index)
            await self._pwrite(fd, memoryview(data)[:hi - lo], lo)
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
        self.lower.forget(node)
        fd = self._fds.pop(node.ino, None)
        if fd is not None:
            self.used -= await asyncio.to_thread(_close_and_unlink, fd, self.upper_dir / str(node.ino))

    async def close(self) -> None:
        await self.lower.close()
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
