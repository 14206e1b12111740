"""One origin fetch in progress, followed by any number of readers. No I/O.

When the gateway misses its cache, one *leader* task streams the object from
the store and hands each piece to a :class:`Flight`; every request for that
object, the first and all that arrive while it is in flight, reads from the
flight. Readers do not wait for the whole object: ``read(start, end)`` yields
each piece of the wanted range as soon as the leader has it, so N concurrent
misses cost one GET and every reader starts receiving bytes at once.

Verification without giving up streaming: the flight hashes pieces as they
arrive (an incremental xxh3) and a reader's *last* bytes are held back until
the whole object has been received and its hash matched its id. If the object
turns out corrupt or truncated, the reader raises instead of finishing, so the
HTTP layer aborts the response and no client ever gets a complete response
whose bytes were not verified (and clients verify again anyway).

Pieces are kept as a list of immutable ``bytes``: a reader remembers the
index of the next piece, nothing is copied and nothing is ever resized under a
reader's feet. The flight holds the object in memory until the leader has put
it into the disk cache and dropped the flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from syncd.errors import IntegrityError, TransientStoreError
from syncd.format.chunking import hasher


class Flight:
    def __init__(self, object_id: str) -> None:
        self.id = object_id
        self.size: int | None = None
        self.pieces: list[bytes] = []
        self.received = 0
        self.error: BaseException | None = None
        self.verified = False
        self.from_store = False  # the leader reads the store (not a peer): peers may follow it
        self._hash = hasher()
        self._wake = asyncio.Event()

    # -- the leader's side ---------------------------------------------------

    def start(self, size: int) -> None:
        self.size = size
        self._notify()

    def add(self, piece: bytes) -> None:
        if piece:
            self.pieces.append(piece)
            self.received += len(piece)
            self._hash.update(piece)
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
            self._notify()

    @property
    def done(self) -> bool:
        return self.verified or self.error is not None

    def close(self) -> None:
        """Readers are done with it (nothing to release: the leader owns the flight)."""

    def body(self) -> bytes:
        return b"".join(self.pieces)

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    # -- the readers' side ---------------------------------------------------

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

    async def read(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        """Bytes ``[start, end)`` as they arrive; the final piece only after verification."""
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
