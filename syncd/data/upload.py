"""Getting new chunks into the store exactly once, compressed where it pays, with bounded memory.

``Uploader.add(chunk_id, data, small, group)`` is called for every chunk a write
reads (a commit, a server-side edit, an fsspec file, a mount commit). A chunk
costs nothing when the volume already holds it: when it is in ``known`` (the
snapshots at hand), was queued by this write already, or -- asked only for
chunks about to be uploaded -- the volume's chunk index knows where it is
(``index``, data/chunkindex.py; such a chunk is named in ``indexed``: the
writer checks it still exists before it advances HEAD). Otherwise the chunk is
compressed if that pays (format/compress.py: a 64 KiB probe skips data that
does not compress at once) and placed. Chunks of small files are appended to
the open pack, which is PUT once it reaches ``pack_size``. A commit hands over
the small files of one read step at once (``add_small``): one task looks them
all up in the chunk index, compresses them in one worker-thread call and packs
them, where a task per chunk cost a 100,000-file commit a third of its
event-loop time.

New chunks of one large file (``group`` names the file) are stored together:
consecutive new chunks are collected into one *large pack* of up to
``large_pack_size`` (32 MiB by default), so that hydrate reads them back with
one ranged GET instead of one GET per chunk (fetch.py), while every chunk keeps
its own id, dedupe and verification (a ChunkRef into a pack, exactly the shape
of a small file's chunk). The group is flushed when it reaches that size, when
the file ends (``end_group``), or, to keep the byte budget from deadlocking when
many files are read at once, when all groups together hold half the budget, and
when a reader waits for more than the budget minus what open packs hold (the
budget's ``relieve``, limits.py: chunks cut by content vary in size, so half the
budget is not always room enough). A
group of one plain chunk is PUT as its own chunk object; a compressed chunk
always lives in a pack (a chunk object must hash to its id whole). PUTs go
through ``store.put_immutable``: ``If-None-Match: *``, and a 412 means the same
content-addressed object is already there, which is success, unless its size
is wrong (the leftover of a writer killed mid-PUT), in which case it is
rewritten. Every chunk holds its plain size from the byte budget until its PUT
is done, so a write never buffers more than ``SYNCD_MAX_INFLIGHT_BYTES``.

``location(chunk_id)`` answers where a chunk ended up once :meth:`finish` has
returned. ``existed`` names the chunks whose PUT found the object already
there: they were not uploaded by us, so (like chunks reused from the local
index or the chunk index) the writer checks they still exist before it
advances HEAD (see prune.py). They are counted as ``reused_chunks``, not
``uploaded_chunks``: the re-run of a commit interrupted after some PUTs says it
reused what the first run stored. :meth:`finish` also records the new chunks in
the chunk index (before HEAD moves: a killed writer leaves hints to objects
that exist, which is all the index promises).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from syncd.data.chunkindex import IndexSession
from syncd.format.chunking import content_id
from syncd.format.compress import compress
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef
from syncd.limits import ByteBudget, gather_all
from syncd.store.base import ObjectStore, put_immutable

HASH_IN_THREAD = 1 << 20  # hash bodies above this off the event loop (xxh3 runs ~10 GB/s: below, a thread costs more)
COMPRESS_IN_THREAD = 64 << 10   # compress chunks above this off the event loop

Member = tuple[str, bytes, int, bool]    # chunk id, stored bytes, plain size, compressed


async def content_id_of(data: bytes | memoryview) -> str:
    """``content_id(data)``, in a worker thread when ``data`` is large enough to stall the loop."""
    return await asyncio.to_thread(content_id, data) if len(data) > HASH_IN_THREAD else content_id(data)


async def stored_form(data: bytes) -> tuple[bytes, bool]:
    """The bytes to store for a chunk and whether they are compressed."""
    packed = await asyncio.to_thread(compress, data) if len(data) > COMPRESS_IN_THREAD else compress(data)
    return (data, False) if packed is None else (packed, True)


def _stored_forms(datas: list[bytes]) -> list[tuple[bytes, bool]]:
    out = []
    for data in datas:
        packed = compress(data)
        out.append((data, False) if packed is None else (packed, True))
    return out


async def stored_forms(datas: list[bytes]) -> list[tuple[bytes, bool]]:
    """``stored_form`` of many chunks, in one worker-thread call when they are large enough together."""
    if sum(len(d) for d in datas) > COMPRESS_IN_THREAD:
        return await asyncio.to_thread(_stored_forms, datas)
    return _stored_forms(datas)


class Uploader:
    def __init__(self, store: ObjectStore, layout: Layout, volume: str, budget: ByteBudget,
                 pack_size: int, known: dict[str, ChunkRef], large_pack_size: int = 0,
                 index: IndexSession | None = None, compression: bool = True, record: bool = True) -> None:
        """``record=False``: :meth:`finish` leaves recording the new chunks in the chunk index to
        the caller (a streaming commit records many uploaders' chunks at once, ``fresh``)."""
        self.store, self.layout, self.volume, self.budget = store, layout, volume, budget
        self.pack_size = pack_size
        self.large_pack_size = large_pack_size
        self.index = index
        self.compression = compression
        self.record = record
        self._groups: dict[object, list[tuple[Member, int]]] = {}  # open large packs, per file
        self._tails: dict[object, asyncio.Task[None]] = {}          # per file: its last chunk being placed
        self._placing: list[asyncio.Task[None]] = []               # lookups and compressions in flight
        self._group_bytes = 0
        self.known = known
        self.new: dict[str, ChunkRef] = {}
        self._queued: set[str] = set()
        self.existed: set[str] = set()
        self.indexed: set[str] = set()       # reused on the chunk index's word
        self._pack: list[Member] = []
        self._pack_bytes = 0
        self._pack_held = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.uploaded_chunks = 0
        self.uploaded_bytes = 0              # bytes PUT (compressed where compressed)
        self.plain_bytes = 0                 # the same chunks' plain size
        self.reused_chunks = 0
        self.compressed_chunks = 0
        self._recorded: set[str] = set()
        budget.register(self)

    def relieve(self) -> None:
        """The budget is stuck on bytes parked here: PUT every open pack now."""
        self._flush_pack()
        for group in list(self._groups):
            self._end_group_now(group)

    def location(self, chunk_id: str) -> ChunkRef:
        return self.new.get(chunk_id) or self.known[chunk_id]

    def has(self, chunk_id: str) -> bool:
        return chunk_id in self.known or chunk_id in self._queued

    async def add(self, chunk_id: str, data: bytes, held: int, small: bool, group: object = None) -> None:
        """Queue a chunk whose ``held`` budget bytes the uploader now owns; ``group`` (a large
        file's chunks, in order) lets consecutive new chunks share one large pack.

        Returns at once: the chunk index lookup and the compression of new chunks run in
        tasks, so a write's lookups and compressions overlap; a group's chunks still take
        their places in file order (each waits for the one before it), so a large pack
        holds them back to back, as hydrate's one-GET runs need.
        """
        if self.has(chunk_id):
            self.reused_chunks += 1
            await self.budget.release(held)
            return
        self._queued.add(chunk_id)       # before any await: a second add of this id reuses this one
        prev = self._tails.get(group) if group is not None and not small else None
        task = asyncio.ensure_future(self._place(chunk_id, data, held, small, group, prev))
        self._placing.append(task)
        if group is not None and not small:
            self._tails[group] = task

    async def add_small(self, chunks: list[tuple[str, bytes, int]]) -> None:
        """``add(chunk_id, data, held, small=True)`` for many chunks of small files at once: one
        task looks them all up in the chunk index (one query), compresses them (one worker-thread
        call) and appends them to the open pack, instead of a task per chunk (a first commit of
        100,000 small files spent a third of its event-loop time making and running those)."""
        fresh: list[tuple[str, bytes, int]] = []
        reused = 0
        for chunk_id, data, held in chunks:
            if self.has(chunk_id):
                self.reused_chunks += 1
                reused += held
            else:
                self._queued.add(chunk_id)   # before any await, as in add
                fresh.append((chunk_id, data, held))
        if reused:
            await self.budget.release(reused)
        if fresh:
            self._placing.append(asyncio.ensure_future(self._place_small(fresh)))

    async def _place_small(self, chunks: list[tuple[str, bytes, int]]) -> None:
        try:
            found = await self.index.find_many([(c, len(d)) for c, d, _ in chunks]) if self.index is not None else {}
            new = [c for c in chunks if c[0] not in found]
            forms = await stored_forms([d for _, d, _ in new]) if self.compression else [(d, False) for _, d, _ in new]
        except BaseException:
            self._queued.difference_update(c for c, _, _ in chunks)
            await self.budget.release(sum(h for _, _, h in chunks))
            raise
        for (chunk_id, data, held), (stored, packed) in zip(new, forms, strict=True):
            self.compressed_chunks += packed
            self._pack.append((chunk_id, stored, len(data), packed))
            self._pack_bytes += len(stored)
            self._pack_held += held
            self.budget.park(held)
            if self._pack_bytes >= self.pack_size:
                self._flush_pack()
        if found:
            self.known.update(found)
            self.indexed.update(found)
            self.reused_chunks += len(found)
            await self.budget.release(sum(h for c, _, h in chunks if c in found))

    async def _place(self, chunk_id: str, data: bytes, held: int, small: bool, group: object,
                     prev: asyncio.Future[None] | None) -> None:
        try:
            found = await self.index.find(chunk_id, len(data)) if self.index is not None else None
            stored, packed = (data, False) if found is not None or not self.compression else await stored_form(data)
            if prev is not None:
                await asyncio.wait([prev])       # the chunk before it in the file is placed first
        except BaseException:
            self._queued.discard(chunk_id)
            await self.budget.release(held)
            raise
        if found is not None:
            self.known[chunk_id] = found
            self.indexed.add(chunk_id)
            self.reused_chunks += 1
            await self.budget.release(held)
            return
        self.compressed_chunks += packed
        member: Member = (chunk_id, stored, len(data), packed)
        if small:
            self._pack.append(member)
            self._pack_bytes += len(stored)
            self._pack_held += held
            self.budget.park(held)
            if self._pack_bytes >= self.pack_size:
                self._flush_pack()
        elif group is None or self.large_pack_size < 2 * len(data):
            if group is not None:
                self._end_group_now(group)      # the group's pack holds only chunks before this one
            if packed:
                self._spawn(self._put_pack([member], held))
            else:
                self._spawn(self._put_chunk(chunk_id, data, held))
        else:
            members = self._groups.get(group, [])
            if sum(len(m[1]) for m, _ in members) + len(stored) > self.large_pack_size:
                self._end_group_now(group)
            self._groups.setdefault(group, []).append((member, held))
            self._group_bytes += held
            self.budget.park(held)
            if self._group_bytes >= self.budget.limit // 2:  # never sit on half the budget
                for name in list(self._groups):
                    self._end_group_now(name)

    def end_group(self, group: object) -> None:
        """The file is read (or abandoned): PUT what its group collected, once its chunks are placed."""
        tail = self._tails.pop(group, None)
        if tail is None or tail.done():
            self._end_group_now(group)
            return

        async def later() -> None:
            await asyncio.wait([tail])
            self._end_group_now(group)
        self._placing.append(asyncio.ensure_future(later()))

    def _end_group_now(self, group: object) -> None:
        members = self._groups.pop(group, [])
        self._group_bytes -= sum(held for _, held in members)
        self.budget.unpark(sum(held for _, held in members))
        if len(members) == 1 and not members[0][0][3]:
            (chunk_id, data, _, _), held = members[0]
            self._spawn(self._put_chunk(chunk_id, data, held))
        elif members:
            self._spawn(self._put_pack([m for m, _ in members], sum(h for _, h in members)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def _put(self, key: str, data: bytes) -> bool:
        """PUT once; False when the object was already there whole (see store.put_immutable)."""
        if not await put_immutable(self.store, key, data):
            return False
        self.uploaded_bytes += len(data)
        return True

    async def _put_chunk(self, chunk_id: str, data: bytes, held: int) -> None:
        try:
            if await self._put(self.layout.chunk(self.volume, chunk_id), data):
                self.uploaded_chunks += 1
            else:
                self.existed.add(chunk_id)
                self.reused_chunks += 1
            self.new[chunk_id] = ChunkRef(chunk_id, len(data))
            self.plain_bytes += len(data)
        finally:
            await self.budget.release(held)

    def _flush_pack(self) -> None:
        if not self._pack:
            return
        members, held = self._pack, self._pack_held
        self._pack, self._pack_bytes, self._pack_held = [], 0, 0
        self.budget.unpark(held)
        self._spawn(self._put_pack(members, held))

    async def _put_pack(self, members: list[Member], held: int) -> None:
        try:
            body = b"".join(stored for _, stored, _, _ in members)
            pack_id = await content_id_of(body)
            if await self._put(self.layout.pack(self.volume, pack_id), body):
                self.uploaded_chunks += len(members)
            else:
                self.existed.update(chunk_id for chunk_id, _, _, _ in members)
                self.reused_chunks += len(members)
            offset = 0
            for chunk_id, stored, size, packed in members:
                self.new[chunk_id] = ChunkRef(chunk_id, size, pack_id, offset, len(stored) if packed else 0)
                offset += len(stored)
                self.plain_bytes += size
        finally:
            await self.budget.release(held)

    async def finish(self) -> None:
        """Flush the open packs and wait for every PUT (the first failure is raised); then
        record the chunks stored in the chunk index."""
        while self._placing:
            placing, self._placing = self._placing, []
            await gather_all(placing)
        self._tails.clear()
        self._flush_pack()
        for group in list(self._groups):
            self._end_group_now(group)
        tasks, self._tasks = self._tasks, []
        await gather_all(tasks)
        fresh = self.fresh()
        if self.index is not None and self.record and fresh:
            self._recorded.update(fresh)
            await self.index.record(fresh.values())

    def fresh(self) -> dict[str, ChunkRef]:
        """The chunks this uploader stored itself and has not recorded in the chunk index."""
        return {i: r for i, r in self.new.items() if i not in self.existed and i not in self._recorded}

    async def abort(self) -> None:
        for task in self._placing:
            task.cancel()
        await asyncio.gather(*self._placing, return_exceptions=True)
        self._placing, self._tails = [], {}
        for group in list(self._groups):
            held = sum(h for _, h in self._groups.pop(group))
            self.budget.unpark(held)
            await self.budget.release(held)
        self._group_bytes = 0
        if self._pack_held:
            self.budget.unpark(self._pack_held)
            await self.budget.release(self._pack_held)
            self._pack, self._pack_bytes, self._pack_held = [], 0, 0
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
