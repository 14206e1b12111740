"""Trees on the gateway's disk, never whole in its memory: spooled spans, streamed inflates, shared copies.

The tree route (gateway/trees.py) answers with canonical trees of up to
256 MiB each (the format's bound), and any owner may plant such trees in its
own volume. So nothing here holds a tree, or a span of a tree pack, in memory:

* ``spool_span`` streams the one ranged GET of a miss into an anonymous file
  in the cache's spool directory, in batches of at most ``PIECE`` bytes.
* ``inflate_trees`` (a worker thread) inflates each tree of that span piece
  by piece (zlib's ``max_length``: at most ``PIECE`` bytes out per step),
  hashing what comes out with a streaming xxh3 and writing it to a spool file
  once it passes ``SMALL`` bytes; a tree that stays below that comes back as
  bytes (it is stored in diskcache's SQLite, as before). The checks are
  inflate_tree's (format/tree.py): one complete zlib stream, exactly the
  stored size, at most ``MAX_TREE_BYTES`` out, hashing to its id. It returns
  after a batch whose small trees add up to ``PIECE`` bytes, so a span of
  4,096 small trees is not held at once either.
* ``Copies`` hands out verified copies from the cache, one per tree however
  many requests send it at once: the first request opens (and verifies) the
  entry, the others wait for that and share it; the open file is closed when
  the last request is done with it. A request sends its trees one at a time,
  so it holds one copy at a time: a small tree's bytes or one descriptor,
  which ``sendfile`` reads (gateway/trees_send.py).

What the tree route costs the gateway's memory is therefore bounded by its
configuration, not by what owners plant: per concurrent miss leader
(``--tree-leaders``) a few ``PIECE`` buffers, per request in flight
(``--max-requests``) one small tree and its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from syncd.errors import IntegrityError
from syncd.format.chunking import hasher
from syncd.format.tree import MAX_TREE_BYTES
from syncd.store.base import ObjectStore, open_stream

from .objcache import Hit, ObjectCache

PIECE = 1 << 20       # bytes read, inflated or batched at a time
SMALL = 32 * 1024     # a tree below this stays bytes (diskcache keeps it in SQLite), above it a file
FAMILY = "trees"


@dataclass
class Copy:
    """One verified tree: bytes, or an open file (with its path while it is still a spool file)."""

    size: int
    data: bytes | None = None
    file: BinaryIO | None = None
    path: Path | None = None
    refs: int = 1
    key: tuple[str, str] | None = None  # (owner, tree id) while Copies holds it

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass(frozen=True)
class Span:
    """Where a tree lies in a spooled span: ``offset`` from the span's start, ``size`` stored bytes."""

    id: str
    offset: int
    size: int


async def spool_span(store: ObjectStore, key: str, start: int, end: int, spool_dir: Path) -> BinaryIO:
    """Bytes ``[start, end)`` of ``key`` in an anonymous file (the caller closes it); NotFound passes."""
    await asyncio.to_thread(spool_dir.mkdir, parents=True, exist_ok=True)
    spool: BinaryIO = await asyncio.to_thread(tempfile.TemporaryFile, dir=spool_dir)
    try:
        batch = bytearray()
        async with open_stream(store, key, start, end) as stream:
            async for piece in stream.pieces:
                batch += piece
                if len(batch) >= PIECE:
                    await asyncio.to_thread(spool.write, batch)
                    batch = bytearray()
        await asyncio.to_thread(spool.write, batch)
        await asyncio.to_thread(spool.flush)
    except BaseException:
        spool.close()
        raise
    return spool


def inflate_trees(spool: int, trees: Sequence[Span], spool_dir: Path) -> list[Copy | IntegrityError]:
    """Copies of the first trees of ``trees`` (at least one), each inflated from ``spool`` and verified,
    stopping once the small ones hold ``PIECE`` bytes; a tree that fails is its IntegrityError."""
    out: list[Copy | IntegrityError] = []
    held = 0
    for tree in trees:
        try:
            copy = _inflate(spool, tree, spool_dir)
        except IntegrityError as exc:
            out.append(exc)
            continue
        out.append(copy)
        held += len(copy.data or b"")
        if held >= PIECE:
            break
    return out


def _inflate(spool: int, tree: Span, spool_dir: Path) -> Copy:
    inflater, digest = zlib.decompressobj(), hasher()
    small, out, pos, end, total = bytearray(), _Out(spool_dir), tree.offset, tree.offset + tree.size, 0
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail
            if not data and pos < end:
                data = os.pread(spool, min(PIECE, end - pos), pos)
                pos += len(data)
            if not data:
                break
            piece = inflater.decompress(data, PIECE)
            total += len(piece)
            if total > MAX_TREE_BYTES:
                raise IntegrityError(f"tree {tree.id}: inflates to more than {MAX_TREE_BYTES} bytes")
            digest.update(piece)
            small = out.add(small, piece)
        if pos != end:
            raise IntegrityError(f"tree {tree.id}: the pack ends before byte {end} of the span")
        if not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
            raise IntegrityError(f"tree {tree.id}: not one complete zlib stream of {tree.size} bytes")
        if digest.hexdigest() != tree.id:
            raise IntegrityError(f"tree {tree.id} does not match its content hash")
        return out.finish(small, total)
    except zlib.error as exc:
        out.discard()
        raise IntegrityError(f"tree {tree.id} is not zlib: {exc}") from exc
    except BaseException:
        out.discard()
        raise


@dataclass
class _Out:
    """Where an inflating tree goes: bytes until it passes SMALL, then a spool file."""

    spool_dir: Path
    file: BinaryIO | None = None
    path: Path | None = None

    def add(self, small: bytearray, piece: bytes) -> bytearray:
        if self.file is None and len(small) + len(piece) <= SMALL:
            small += piece
            return small
        if self.file is None:
            fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="tree-")
            self.file, self.path = os.fdopen(fd, "w+b"), Path(name)
            self.file.write(small)
        self.file.write(piece)
        return bytearray()

    def finish(self, small: bytearray, total: int) -> Copy:
        if self.file is None:
            return Copy(total, data=bytes(small))
        self.file.flush()
        return Copy(total, file=self.file, path=self.path)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


def discard(copy: Copy) -> None:
    """A copy that was never handed to the cache: close it and remove its spool file."""
    copy.close()
    if copy.path is not None:
        with contextlib.suppress(OSError):
            copy.path.unlink()


@dataclass
class _Opening:
    future: asyncio.Future[Copy | None]
    waiters: int = 0


@dataclass
class Copies:
    """Verified cached trees, each open once however many requests send it (refcounted)."""

    cache: Callable[[], ObjectCache]  # the gateway's one disk cache, opened on first use
    _held: dict[tuple[str, str], Copy] = field(default_factory=dict)
    _opening: dict[tuple[str, str], _Opening] = field(default_factory=dict)

    def size(self, owner: str, tree_id: str) -> int | None:
        """The size of a tree held open now (verified when it was opened), else None."""
        held = self._held.get((owner, tree_id))
        return None if held is None else held.size

    async def acquire(self, owner: str, tree_id: str) -> Copy | None:
        """A verified copy of ``owner``'s cached tree (release it), or None when it is not cached."""
        key = (owner, tree_id)
        held = self._held.get(key)
        if held is not None:
            held.refs += 1
            return held
        opening = self._opening.get(key)
        if opening is not None:
            return await self._wait(opening)
        opening = self._opening[key] = _Opening(asyncio.get_running_loop().create_future())
        try:
            hit = await asyncio.to_thread(self.cache().open_now, owner, FAMILY, tree_id)
        except BaseException as exc:
            opening.future.set_exception(exc)
            opening.future.exception()
            raise
        finally:
            del self._opening[key]
        copy = _from_hit(hit)
        if copy is not None:
            copy.refs = 1 + opening.waiters  # every waiter's reference, taken in the same step
            copy.key = key
            self._held[key] = copy
        opening.future.set_result(copy)
        return copy

    async def _wait(self, opening: _Opening) -> Copy | None:
        opening.waiters += 1
        try:
            return await asyncio.shield(opening.future)
        except asyncio.CancelledError:
            done = opening.future.done() and not opening.future.cancelled()
            if done and opening.future.exception() is None and (copy := opening.future.result()) is not None:
                self.release(copy)
            elif not done:
                opening.waiters -= 1
            raise

    def release(self, copy: Copy) -> None:
        copy.refs -= 1
        if copy.refs > 0:
            return
        copy.close()
        if copy.key is not None and self._held.get(copy.key) is copy:
            del self._held[copy.key]

    def close(self) -> None:
        for copy in self._held.values():
            copy.close()
        self._held.clear()


def _from_hit(hit: Hit | None) -> Copy | None:
    if hit is None:
        return None
    return Copy(hit.size, data=hit.data, file=hit.file)
