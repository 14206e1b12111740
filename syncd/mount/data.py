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

Descriptors of upper files. An upper file is named by its inode number in the
upper directory and opened on demand, relative to a descriptor of that
directory, ``O_NOFOLLOW``. At most ``max_fds`` stay open (``SYNCD_MOUNT_OPEN_FILES``),
kept in least-recently-used order; each operation that uses one (a read, a
write with its copy-up, truncate, fsync) pins it for its duration, and only
unpinned descriptors are closed, so nothing is closed under an operation in
flight. Descriptors pinned at once can exceed the bound only by the requests
in flight; they are closed as soon as the last pin goes.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from syncd.data.fetch import ChunkFetcher
from syncd.mount.lower import Buffer, Lower
from syncd.mount.tree import FsError, Node

log = logging.getLogger(__name__)
SEQUENTIAL_SLACK = 8 << 20   # the kernel's readahead may answer its window out of order
MAX_FDS = 256                # upper-file descriptors kept open (Config.mount_open_files)
UPPER_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ReadState:
    """Per open handle: where a sequential reader would read next."""
    next_offset: int = 0


class Data:
    def __init__(self, fetcher: ChunkFetcher, volume: str, upper_dir: Path, memory: int,
                 unit: int = 32 << 20, limit: int | None = None, max_fds: int = MAX_FDS) -> None:
        self.fetcher, self.volume, self.upper_dir = fetcher, volume, upper_dir
        self.lower = Lower(fetcher, volume, memory, unit)
        self.limit = limit
        self.used = 0                                # upper-layer bytes allocated
        self.max_fds = max(1, max_fds)
        self._fds: OrderedDict[int, int] = OrderedDict()   # ino -> open fd, least recently used first
        self._pins: dict[int, int] = {}                     # ino -> operations using its fd now
        self._opening: dict[int, asyncio.Future[int]] = {}  # ino -> its open in progress
        self._dir_fd: int | None = None
        self.fd_opens = 0                                   # upper files opened (created or reopened)
        self.uppers: set[int] = set()                       # inodes with an upper file (aside.py's note)
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
        if not node.upper:
            return bytes(size)
        async with self._upper(node) as fd:
            try:
                data = await asyncio.to_thread(os.pread, fd, size, offset)
            except OSError as exc:
                raise FsError(exc.errno or errno.EIO) from exc
        return data + bytes(size - len(data)) if len(data) < size else data

    # ---------------------------------------------------------------- descriptors

    async def _dir(self) -> int:
        if self._dir_fd is None:
            fd = await asyncio.to_thread(os.open, self.upper_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if self._dir_fd is None:
                self._dir_fd = fd
            else:
                os.close(fd)
        return self._dir_fd

    @asynccontextmanager
    async def _upper(self, node: Node, create: bool = False) -> AsyncIterator[int]:
        """The upper file's descriptor, pinned while the caller uses it: opened (``create``: created,
        truncated to the node's size) if it is not among the descriptors kept open."""
        ino = node.ino
        self._pins[ino] = self._pins.get(ino, 0) + 1
        try:
            fd = self._fds.get(ino)
            if fd is None:
                opening = self._opening.get(ino)
                if opening is None:     # one open per file, however many operations ask at once
                    opening = self._opening[ino] = asyncio.ensure_future(self._open(node, create))
                    opening.add_done_callback(lambda _: self._opened(ino))
                fd = await asyncio.shield(opening)
            self._fds.move_to_end(ino)
            yield fd
        finally:
            left = self._pins[ino] - 1
            if left:
                self._pins[ino] = left
            else:
                del self._pins[ino]
                if not node.upper and ino in self._fds:   # dropped while in use
                    os.close(self._fds.pop(ino))
            self._evict()

    def _opened(self, ino: int) -> None:
        task = self._opening.pop(ino)
        if not task.cancelled() and task.exception() is None:
            self._fds[ino] = task.result()

    async def _open(self, node: Node, create: bool) -> int:
        dir_fd = await self._dir()
        name = str(node.ino)
        try:
            if create:
                fd = await asyncio.to_thread(os.open, name, UPPER_OPEN | os.O_CREAT | os.O_TRUNC, 0o600,
                                             dir_fd=dir_fd)
                try:
                    await asyncio.to_thread(os.ftruncate, fd, node.size)
                except OSError:
                    os.close(fd)
                    raise
            else:
                fd = await asyncio.to_thread(os.open, name, UPPER_OPEN, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                log.warning("cannot open upper file %s of %s: %s", name, self.volume, exc)
            raise FsError(exc.errno or errno.EIO) from exc
        self.fd_opens += 1
        return fd

    def _evict(self) -> None:
        """Close least recently used descriptors nobody is using until at most ``max_fds`` are open."""
        if len(self._fds) <= self.max_fds:
            return
        for ino in list(self._fds):
            if len(self._fds) <= self.max_fds:
                break
            if ino not in self._pins:
                os.close(self._fds.pop(ino))

    @property
    def open_fds(self) -> int:
        return len(self._fds)

    # ---------------------------------------------------------------- writes

    @asynccontextmanager
    async def _writable(self, node: Node) -> AsyncIterator[int]:
        """The upper file's descriptor, pinned; the first write to a node creates its upper file."""
        async with self._upper(node, create=not node.upper) as fd:
            node.upper = True
            self.uppers.add(node.ino)
            yield fd

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
        end = offset + len(data)
        async with self._writable(node) as fd:
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
        async with self._writable(node) as fd:
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
        if not node.upper:
            return
        async with self._upper(node) as fd:
            try:
                await asyncio.to_thread(os.fsync, fd)
            except OSError as exc:
                raise FsError(exc.errno or errno.EIO) from exc

    async def drop(self, node: Node) -> None:
        """Free a forgotten node's upper file."""
        self._starts.pop(node.ino, None)
        self.lower.forget(node)
        if not node.upper:
            return
        node.upper = False
        self.uppers.discard(node.ino)
        fd = self._fds.pop(node.ino, None) if node.ino not in self._pins else None
        if fd is not None:
            os.close(fd)
        self.used -= await asyncio.to_thread(_unlink, await self._dir(), str(node.ino), self.upper_dir)

    async def close(self) -> None:
        await self.lower.close()
        for ino in list(self._fds):
            os.close(self._fds.pop(ino))
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def _unlink(dir_fd: int, name: str, where: Path) -> int:
    """Delete an upper file; returns the bytes it had allocated."""
    try:
        freed = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
        os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        log.warning("cannot remove upper file %s/%s: %s", where, name, exc)
        return 0
    return freed
