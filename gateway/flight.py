"""One origin fetch in progress, followed by any number of readers.

When the gateway misses its cache, one *leader* task streams the object from
the store and hands each piece to a :class:`Flight`; every request for that
object, the first and all that arrive while it is in flight, reads from the
flight. Readers do not wait for the whole object: a reader sends each part of
its range as soon as the leader has it, so N concurrent misses cost one GET
and every reader starts receiving bytes at once.

Spooling. An object of ``SPOOL_MIN`` bytes or more (the size at which the
disk cache keeps a value as a file of its own) is written, piece by piece as
it arrives, to a *spool file* in the cache directory. Readers send from that
file with ``sendfile`` (gateway/send.py), up to what has been written: a
follower's bytes go from the page cache to its socket and never through a
Python buffer, which matters because in a cold fan-out nearly every byte
served is a flight's (six workers ask for each object at the same moment).
Once the object has verified, the spool file itself becomes the cache entry
(gateway/objcache.py moves it in; no second copy), so the leader never holds
the object in memory. Smaller objects are kept as a list of ``bytes`` pieces,
as before: they go into SQLite, not a file. If the spool file cannot be
created the flight keeps its pieces in memory instead (the cache only ever
makes things faster).

Verification without giving up streaming: the flight hashes pieces as they
arrive (an incremental xxh3) and a reader's *last* bytes are held back until
the whole object has been received and its hash matched its id
(:meth:`Flight.ready`). If the object turns out corrupt or truncated, the
reader raises instead of finishing, so the HTTP layer aborts the response and
no client ever gets a complete response whose bytes were not verified (and
clients verify again anyway).

Lifetime of the spool file: every body handed out (``join``) holds a
reference, and so does the leader until it is done. The file is closed when
the last reference goes (``close``), never under a reader that may still be
in a ``sendfile`` from it; a flight that failed unlinks its file at once
(open descriptors stay readable), a verified one has handed it to the cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from syncd.errors import IntegrityError, TransientStoreError
from syncd.format.chunking import hasher
from syncd.limits import in_thread

log = logging.getLogger(__name__)

SPOOL_MIN = 32 * 1024   # diskcache's file threshold: smaller objects live in SQLite (and memory here)
READ_PIECE = 1 << 20    # reads of a spool file where sendfile is not available
SPOOL_BATCH = 2 << 20   # pieces written to the spool file together (at most a quarter of the object):
                        # one thread hand-off, and one sendfile step per follower, per 2 MiB instead
                        # of per 256 KiB store piece


def _create_spool(directory: Path) -> tuple[BinaryIO, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix="flight-", suffix=".spool")
    return os.fdopen(fd, "w+b", buffering=0), Path(name)


def _pwrite_all(fd: int, pieces: list[bytes], offset: int) -> None:
    for piece in pieces:
        view = memoryview(piece)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove spool file %s: %s", path, exc)


class Flight:
    def __init__(self, object_id: str, spool_dir: Path | None = None) -> None:
        self.id = object_id
        self.size: int | None = None
        self.pieces: list[bytes] = []      # the body, when it is not spooled
        self.spool: BinaryIO | None = None  # the body so far, when spooled (readers sendfile from it)
        self.spool_path: Path | None = None  # None once the cache has taken the file
        self.received = 0  # bytes accepted (hashed); where a resumed GET starts
        self.available = 0  # of those, what readers may send: in the spool file, or in ``pieces``
        self._batch: list[bytes] = []  # accepted, not yet written to the spool file
        self.error: BaseException | None = None
        self.verified = False
        self.from_store = False  # the leader reads the store (not a peer): peers may follow it
        self._spool_dir = spool_dir
        self._refs = 1  # the leader's
        self._hash = hasher()
        self._wake = asyncio.Event()

    # -- the leader's side ---------------------------------------------------

    async def start(self, size: int) -> None:
        """The store answered with ``size`` bytes: spool them to a file if they are many."""
        if self._spool_dir is not None and size >= SPOOL_MIN:
            try:
                self.spool, self.spool_path = await in_thread(_create_spool, self._spool_dir)
            except OSError as exc:
                log.warning("cannot spool %s to %s (%s); keeping it in memory", self.id, self._spool_dir, exc)
        self.size = size
        self._notify()

    async def add(self, piece: bytes) -> None:
        """The next piece of the body (written to the spool file first, if there is one)."""
        if not piece:
            return
        self.received += len(piece)
        self._hash.update(piece)
        if self.spool is None:
            self.pieces.append(piece)
            self.available = self.received
            self._notify()
            return
        self._batch.append(piece)
        # a quarter of the object at most, so followers of smaller objects still start early
        if self.received - self.available >= min(SPOOL_BATCH, (self.size or 0) // 4) or self.received == self.size:
            await self._write_batch()

    async def _write_batch(self) -> None:
        assert self.spool is not None
        batch, self._batch = self._batch, []
        await in_thread(_pwrite_all, self.spool.fileno(), batch, self.available)
        self.available += sum(map(len, batch))
        self._notify()

    def finish(self) -> None:
        """The body is complete: verify it. Raises IntegrityError (and fails the flight) on mismatch."""
        if self.received != self.size:
            self.fail(TransientStoreError(f"{self.id}: body ended at {self.received} of {self.size} bytes"))
        elif self._hash.hexdigest() != self.id:
            self.fail(IntegrityError(f"object {self.id} from the store does not match its id"))
        else:
            self.verified = True
            self._notify()
        if self.error is not None:
            raise self.error

    def fail(self, error: BaseException) -> None:
        if not self.verified and self.error is None:
            self.error = error
            if self.spool_path is not None:
                _unlink(self.spool_path)  # readers' descriptors stay valid until they close
                self.spool_path = None
            self._notify()

    def handed_over(self) -> None:
        """The cache has taken the (verified) spool file: it is no longer ours to remove."""
        self.spool_path = None

    def release(self) -> None:
        """The leader is done: a spool file nobody took is removed; drop the leader's reference."""
        if self.spool_path is not None:
            _unlink(self.spool_path)
            self.spool_path = None
        self.close()

    @property
    def done(self) -> bool:
        return self.verified or self.error is not None

    def body(self) -> bytes:
        """The whole body of an unspooled flight."""
        return b"".join(self.pieces)

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    # -- the readers' side ---------------------------------------------------

    def join(self) -> Flight:
        """One more reader: the spool file stays open until it calls ``close``."""
        self._refs += 1
        return self

    def close(self) -> None:
        self._refs -= 1
        if self._refs <= 0 and self.spool is not None:
            self.spool.close()
            self.spool = None

    async def length(self) -> int:
        """The object's size, once the store has answered; raises the flight's error."""
        while self.size is None and self.error is None:
            await self._wake.wait()
        if self.size is None:
            assert self.error is not None
            raise self.error
        return self.size

    async def wait_done(self) -> None:
        while not self.done:
            await self._wake.wait()
        if self.error is not None:
            raise self.error

    async def ready(self, pos: int, end: int) -> int:
        """How far bytes ``[pos, end)`` may be sent now (> ``pos``): what has arrived, and ``end``
        itself only once the whole object has verified. Raises the flight's error."""
        while True:
            if self.error is not None:
                raise self.error
            if self.available >= end:
                await self.wait_done()
                return end
            if self.available > pos:
                return self.available
            if self.done:
                raise TransientStoreError(f"{self.id}: range ends beyond the object")
            await self._wake.wait()

    async def read(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        """Bytes ``[start, end)`` as they arrive; the final piece only after verification."""
        if self.spool is not None:
            async for piece in self._read_spool(start, end):
                yield piece
            return
        index, base, pos = 0, 0, start
        while pos < end:
            while index >= len(self.pieces) and not self.done:
                await self._wake.wait()
            if self.error is not None:
                raise self.error
            if index >= len(self.pieces):
                raise TransientStoreError(f"{self.id}: range ends beyond the object")
            piece = self.pieces[index]
            piece_end = base + len(piece)
            if piece_end > pos:
                cut = min(piece_end, end)
                if cut == end:
                    await self.wait_done()
                yield memoryview(piece)[pos - base:cut - base]
                pos = cut
            base, index = piece_end, index + 1

    async def _read_spool(self, pos: int, end: int) -> AsyncIterator[bytes]:
        assert self.spool is not None
        fd = self.spool.fileno()  # positional reads only: readers share the descriptor
        while pos < end:
            upto = await self.ready(pos, end)
            while pos < upto:
                piece = await in_thread(os.pread, fd, min(READ_PIECE, upto - pos), pos)
                if not piece:
                    raise TransientStoreError(f"{self.id}: spool file ended early")
                yield piece
                pos += len(piece)
