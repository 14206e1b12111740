"""A file's chunks, cut by content: what every writer (commit, edits, the mount) uploads.

:func:`file_chunks` reads an open file descriptor window by window with
``preadv`` into one reused buffer, in a worker thread that also cuts
(format/chunking.py: FastCDC, GIL released) and hashes each chunk while its
bytes are in the CPU cache, and yields ``(bytes, id, held)`` per chunk. A
file below the chunker's threshold is one chunk, read whole. Each chunk takes
its size from the byte budget before it is yielded (``held``) and the
uploader releases it once the chunk is stored or found to exist already:
memory stays bounded by ``SYNCD_MAX_INFLIGHT_BYTES`` plus, per reader, the
window buffer and the chunks of the window being handed over (``WINDOW``
each, 8 MiB).

A file that shrinks while it is read yields fewer bytes than its size; the
caller sees that (and the changed stat) and reads it again.

:class:`StreamCutter` does the same for bytes that arrive in pieces (a
``syncd put`` stream, an fsspec file being written, the mount's upper layer):
``feed`` returns the chunks complete so far, ``finish`` the rest. Both cut a
given file into exactly the same chunks, so its chunks dedupe whichever way
it came in.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from syncd.format.chunking import Chunker, content_id
from syncd.limits import ByteBudget

WINDOW = 8 << 20          # bytes read at once (at least 2 * max chunk: a cut needs max bytes ahead)


def _window(chunker: Chunker) -> int:
    return max(WINDOW, 2 * chunker.max)


def _read_window(fd: int, buf: bytearray, offset: int, want: int, size: int,
                 chunker: Chunker) -> list[tuple[bytes, str]]:
    view = memoryview(buf)[:want]
    got = os.preadv(fd, [view], offset)
    view = view[:got]
    if got == 0:
        return []
    eof = offset + got >= size or got < want
    out = []
    at = 0
    for length in chunker.cut(view, eof):
        data = bytes(view[at:at + length])
        out.append((data, content_id(data)))
        at += length
    return out


def _read_whole(fd: int, size: int) -> list[tuple[bytes, str]]:
    data = os.pread(fd, size, 0)
    return [(data, content_id(data))] if data else []


async def file_chunks(fd: int, size: int, chunker: Chunker,
                      budget: ByteBudget) -> AsyncIterator[tuple[bytes, str, int]]:
    """The chunks of the ``size``-byte file open at ``fd``: ``(bytes, id, budget held)``.

    Each chunk takes its size from ``budget`` just before it is yielded, and the
    caller owns that from then on, so a caller that stops iterating leaks nothing.
    """
    if size == 0:
        return
    if chunker.whole(size):
        held = await budget.acquire(size)
        try:
            pieces = await asyncio.to_thread(_read_whole, fd, size)
        except BaseException:
            await budget.release(held)
            raise
        if not pieces:
            await budget.release(held)
            return
        yield pieces[0][0], pieces[0][1], held
        return
    buf = bytearray(min(_window(chunker), size))
    offset = 0
    while offset < size:
        pieces = await asyncio.to_thread(_read_window, fd, buf, offset, min(len(buf), size - offset), size, chunker)
        if not pieces:
            return
        for data, chunk_id in pieces:
            held = await budget.acquire(len(data))
            yield data, chunk_id, held
            offset += len(data)


class StreamCutter:
    """Cuts bytes that arrive in pieces exactly as :func:`file_chunks` cuts the whole file."""

    def __init__(self, chunker: Chunker, whole_file: bool = True) -> None:
        """``whole_file=False``: the bytes are a segment of a larger file, cut by content
        with a cut forced at its end (the mount's dirty ranges), never one small chunk."""
        self.chunker = chunker
        self._buffer = bytearray()
        self._cut = not whole_file   # once a chunk was cut the file is not one small chunk
        self.size = 0

    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, str]]:
        """Add ``data``; the chunks now complete, with their ids (hashing: call in a thread if large)."""
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) < _window(self.chunker):
            return []
        return self._take(eof=False)

    def finish(self) -> list[tuple[bytes, str]]:
        """The remaining chunks (the whole file as one chunk if it stayed below the threshold)."""
        if not self._buffer:
            return []
        if not self._cut and self.chunker.whole(len(self._buffer)):
            data = bytes(self._buffer)
            self._buffer.clear()
            return [(data, content_id(data))]
        return self._take(eof=True)

    def _take(self, eof: bool) -> list[tuple[bytes, str]]:
        view = memoryview(self._buffer)
        out = []
        at = 0
        try:
            for length in self.chunker.cut(view, eof):
                data = bytes(view[at:at + length])
                out.append((data, content_id(data)))
                at += length
        finally:
            view.release()
        del self._buffer[:at]
        self._cut = self._cut or bool(out)
        return out
