"""Getting new chunks into the store exactly once, with bounded memory.

``Uploader.add(chunk_id, data, small)`` is called for every chunk a commit
reads. A chunk the volume already holds (``known``, from the snapshots at
hand) or that this commit already queued costs nothing. A new chunk of a large
file is PUT as its own object; chunks of small files are appended to the open
pack, which is PUT once it reaches ``pack_size``. PUTs go through
``store.put_immutable``: ``If-None-Match: *``, and a 412 means the same
content-addressed object is already there, which is success, unless its size
is wrong (the leftover of a writer killed mid-PUT), in which case it is rewritten. Every chunk holds its size from the byte budget until its PUT is
done, so a commit never buffers more than ``SYNCD_MAX_INFLIGHT_BYTES``.

``location(chunk_id)`` answers where a chunk ended up once :meth:`finish` has
returned. ``existed`` names the chunks whose PUT found the object already
there: they were not uploaded by us, so (like chunks reused from the local
index) commit checks they still exist before it advances HEAD (see prune.py).
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


class Uploader:
    def __init__(self, store: ObjectStore, layout: Layout, volume: str, budget: ByteBudget,
                 pack_size: int, known: dict[str, ChunkRef]) -> None:
        self.store, self.layout, self.volume, self.budget = store, layout, volume, budget
        self.pack_size = pack_size
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

    async def add(self, chunk_id: str, data: bytes, held: int, small: bool) -> None:
        """Queue a chunk whose ``held`` budget bytes the uploader now owns."""
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
        else:
            self._spawn(self._put_chunk(chunk_id, data, held))

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
            if not await self._put(self.layout.chunk(self.volume, chunk_id), data):
                self.existed.add(chunk_id)
            self.new[chunk_id] = ChunkRef(chunk_id, len(data))
            self.uploaded_chunks += 1
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
            pack_id = await asyncio.to_thread(content_id, body) if len(body) > 1 << 20 else content_id(body)
            if not await self._put(self.layout.pack(self.volume, pack_id), body):
                self.existed.update(chunk_id for chunk_id, _ in members)
            offset = 0
            for chunk_id, data in members:
                self.new[chunk_id] = ChunkRef(chunk_id, len(data), pack_id, offset)
                offset += len(data)
            self.uploaded_chunks += len(members)
        finally:
            await self.budget.release(held)

    async def finish(self) -> None:
        """Flush the open pack and wait for every PUT; the first failure is raised."""
        self._flush_pack()
        tasks, self._tasks = self._tasks, []
        await gather_all(tasks)

    async def abort(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
