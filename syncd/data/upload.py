"""Getting new chunks into the store exactly once, with bounded memory.

``Uploader.add(chunk_id, data, small, group)`` is called for every chunk a commit
reads. A chunk the volume already holds (``known``, from the snapshots at
hand) or that this commit already queued costs nothing. Chunks of small files
are appended to the open pack, which is PUT once it reaches ``pack_size``.

New chunks of one large file (``group`` names the file) are stored together:
consecutive new chunks are collected into one *large pack* of up to
``large_pack_size`` (32 MiB by default), so that hydrate reads them back with
one ranged GET instead of one GET per chunk (fetch.py), while every chunk keeps
its own id, dedupe and verification (a ChunkRef into a pack, exactly the shape
of a small file's chunk). The group is flushed when it reaches that size, when
the file ends (``end_group``), or, to keep the byte budget from deadlocking when
many files are read at once, when all groups together hold half the budget. A
group of one chunk is PUT as its own chunk object, as before. PUTs go through
``store.put_immutable``: ``If-None-Match: *``, and a 412 means the same
content-addressed object is already there, which is success, unless its size
is wrong (the leftover of a writer killed mid-PUT), in which case it is rewritten. Every chunk holds its size from the byte budget until its PUT is
done, so a commit never buffers more than ``SYNCD_MAX_INFLIGHT_BYTES``.

``location(chunk_id)`` answers where a chunk ended up once :meth:`finish` has
returned. ``existed`` names the chunks whose PUT found the object already
there: they were not uploaded by us, so (like chunks reused from the local
index) commit checks they still exist before it advances HEAD (see prune.py).
They are counted as ``reused_chunks``, not ``uploaded_chunks``: the re-run of a
commit interrupted after some PUTs says it reused what the first run stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from syncd.format.chunking import content_id
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef
from syncd.limits import ByteBudget, gather_all
from syncd.store.base import ObjectStore, put_immutable

HASH_IN_THREAD = 1 << 20  # hash bodies above this off the event loop (xxh3 runs ~10 GB/s: below, a thread costs more)


async def content_id_of(data: bytes | memoryview) -> str:
    """``content_id(data)``, in a worker thread when ``data`` is large enough to stall the loop."""
    return await asyncio.to_thread(content_id, data) if len(data) > HASH_IN_THREAD else content_id(data)


class Uploader:
    def __init__(self, store: ObjectStore, layout: Layout, volume: str, budget: ByteBudget,
                 pack_size: int, known: dict[str, ChunkRef], large_pack_size: int = 0) -> None:
        self.store, self.layout, self.volume, self.budget = store, layout, volume, budget
        self.pack_size = pack_size
        self.large_pack_size = large_pack_size
        self._groups: dict[object, list[tuple[str, bytes, int]]] = {}  # open large packs, per file
        self._group_bytes = 0
        self.known = known
        self.new: dict[str, ChunkRef] = {}
        self._queued: set[str] = set()
        self.existed: set[str] = set()
        self._pack: list[tuple[str, bytes]] = []
        self._pack_bytes = 0
        self._pack_held = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.uploaded_chunks = 0
        self.uploaded_bytes = 0
        self.reused_chunks = 0

    def location(self, chunk_id: str) -> ChunkRef:
        return self.new.get(chunk_id) or self.known[chunk_id]

    def has(self, chunk_id: str) -> bool:
        return chunk_id in self.known or chunk_id in self._queued

    async def add(self, chunk_id: str, data: bytes, held: int, small: bool, group: object = None) -> None:
        """Queue a chunk whose ``held`` budget bytes the uploader now owns; ``group`` (a large
        file's chunks, in order) lets consecutive new chunks share one large pack."""
        if self.has(chunk_id):
            self.reused_chunks += 1
            await self.budget.release(held)
            return
        self._queued.add(chunk_id)
        if small:
            self._pack.append((chunk_id, data))
            self._pack_bytes += len(data)
            self._pack_held += held
            if self._pack_bytes >= self.pack_size:
                self._flush_pack()
        elif group is None or self.large_pack_size < 2 * len(data):
            self._spawn(self._put_chunk(chunk_id, data, held))
        else:
            members = self._groups.get(group, [])
            if sum(len(d) for _, d, _ in members) + len(data) > self.large_pack_size:
                self.end_group(group)
            self._groups.setdefault(group, []).append((chunk_id, data, held))
            self._group_bytes += len(data)
            if self._group_bytes >= self.budget.limit // 2:  # never sit on half the budget
                for name in list(self._groups):
                    self.end_group(name)

    def end_group(self, group: object) -> None:
        """The file is read (or abandoned): PUT what its group collected."""
        members = self._groups.pop(group, [])
        self._group_bytes -= sum(len(d) for _, d, _ in members)
        if len(members) == 1:
            chunk_id, data, held = members[0]
            self._spawn(self._put_chunk(chunk_id, data, held))
        elif members:
            self._spawn(self._put_pack([(i, d) for i, d, _ in members], sum(h for _, _, h in members)))

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
        finally:
            await self.budget.release(held)

    def _flush_pack(self) -> None:
        if not self._pack:
            return
        members, held = self._pack, self._pack_held
        self._pack, self._pack_bytes, self._pack_held = [], 0, 0
        self._spawn(self._put_pack(members, held))

    async def _put_pack(self, members: list[tuple[str, bytes]], held: int) -> None:
        try:
            body = b"".join(data for _, data in members)
            pack_id = await content_id_of(body)
            if await self._put(self.layout.pack(self.volume, pack_id), body):
                self.uploaded_chunks += len(members)
            else:
                self.existed.update(chunk_id for chunk_id, _ in members)
                self.reused_chunks += len(members)
            offset = 0
            for chunk_id, data in members:
                self.new[chunk_id] = ChunkRef(chunk_id, len(data), pack_id, offset)
                offset += len(data)
        finally:
            await self.budget.release(held)

    async def finish(self) -> None:
        """Flush the open packs and wait for every PUT; the first failure is raised."""
        self._flush_pack()
        for group in list(self._groups):
            self.end_group(group)
        tasks, self._tasks = self._tasks, []
        await gather_all(tasks)

    async def abort(self) -> None:
        for group in list(self._groups):
            held = sum(h for _, _, h in self._groups.pop(group))
            await self.budget.release(held)
        self._group_bytes = 0
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
