"""Lower chunks of the lazy mount: verified chunk buffers in bounded memory, loaded on demand
or ahead of a sequential reader, with the GETs a hydrate would make.

Demand. ``chunk(node, i)`` answers from an LRU of verified chunks, else joins the chunk's
in-flight load (one future per chunk id: any number of readers cause one load), else loads
that one chunk alone: a random 4 KiB read waits for one chunk's ranged GET, never for
readahead, and fetches nothing else.

Readahead. A file's chunks are planned once into runs (``fetch.coalesce``): chunks that lie
back to back in one pack (a large file's consecutive chunks share packs of up to
``SYNCD_LARGE_PACK_SIZE``, upload.py) are read with one ranged GET, so a sequential read of
N chunks costs about N / chunks-per-run GETs. After a sequential read, ``ahead`` starts the
following runs while the bytes they will hold fit the budget (``memory``: runs in flight
and chunks read ahead and not read yet), so several runs are in flight and the kernel's
requests find their chunks loaded. The run holding the chunk a sequential reader needs now
is started whatever the budget (one run over it at most, per reader). A run streams
(``ChunkFetcher.stream_run``: the store reads into our buffers in a worker thread) and hands
over each chunk the moment it has hashed to its id (``verified``), not when the run ends:
the reader of chunk 0 of a 32 MiB run waits for 8 MiB, not 32. Chunk buffers evicted from
the LRU are reused for later runs when nothing refers to them any more (``_Pool``). Memory:
``memory`` (SYNCD_MOUNT_MEMORY), plus at most ``POOL`` idle buffers and ``CACHE_WRITES``
chunk copies waiting for the disk, plus the chunk of a random read the budget had no room for.

Trust. A chunk buffer reaches the LRU, and so the kernel, only after it verified; once
reported, a retry of its run no longer writes into it. A run that fails (the store is down,
a chunk is corrupt twice) fails the loads of the chunks it had not delivered: their readers
get EIO (``FsError``), never other bytes; the next read tries again.

Other sources. Chunks the disk cache holds are read from it (verified by the cache); with
gateways configured every chunk goes through the fetcher's single-flight ``get`` (a gateway
caches chunks, not our runs), as a hydrate does; a one-chunk file in a small-file pack is
loaded with its neighbours in the pack (``get_packed``, a window of ``PACK_WINDOW`` bytes).

Disk cache. Chunks loaded from the store are written to the chunk cache in the background;
when the writes fall behind the reader (a slow or busy disk) further ones are skipped and
counted (``cache_skipped``): the cache only ever makes things faster, so a reader never
waits for it (what the JuiceFS client does too). Each write copies its chunk to bytes in a
worker thread (the cache takes bytes): ``CACHE_WRITES`` chunks beyond the budget at most.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import logging
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from syncd.data.fetch import ChunkFetcher, coalesce
from syncd.errors import SyncdError
from syncd.format.manifest import ChunkRef
from syncd.mount.tree import FsError, Node

log = logging.getLogger(__name__)
Buffer = bytes | bytearray
PACK_WINDOW = 4 << 20
KEEP_READ = 2           # chunks already read that eviction leaves alone, newest first
POOL = 4                # chunk buffers kept for reuse at most (beyond the budget)
CACHE_WRITES = 2        # chunk copies waiting for the disk cache at most; more are skipped


@dataclass
class _Plan:
    chunks: tuple[ChunkRef, ...]          # the node's chunks the plan was made for
    firsts: list[int]                     # index of each run's first chunk, ascending
    bounds: list[tuple[int, int]]         # [first, last + 1) of each run


class _Pool:
    """Chunk buffers evicted from the LRU, reused for the next runs: a fresh 8 MiB buffer costs
    zeroing and page faults, with the GIL held (profiled: 22% of a cold read's busy samples).

    A buffer is reused only when nothing else refers to it (``sys.getrefcount``: the LRU let
    it go, and no reader's view, cache write or copy-up holds it), so no byte a reader can
    still see is ever overwritten; at most ``POOL`` buffers wait here."""

    def __init__(self) -> None:
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        free = self._free.get(size)
        return free.pop() if free else bytearray(size)   # list.pop is atomic: callable from a thread

    def give(self, data: Buffer) -> None:
        # 3: the caller's reference, ours, getrefcount's own argument
        if isinstance(data, bytearray) and sys.getrefcount(data) <= 3:
            free = self._free.setdefault(len(data), [])
            if len(free) < POOL:
                free.append(data)


@dataclass
class _Run:
    """Chunks being read with one GET into buffers of their own."""
    refs: list[ChunkRef]
    ino: int
    ahead: bool
    starts: list[int]                     # each chunk's first byte in the run, and the run's end
    pool: _Pool
    buffers: dict[int, bytearray] = field(default_factory=dict)   # taken by the reading thread
    sealed: set[int] = field(default_factory=set)   # verified: the writer leaves them alone

    def write(self, position: int, view: memoryview) -> None:
        """Bytes of the run at ``position`` into the chunks' buffers (the reading thread)."""
        while view:
            index = bisect.bisect_right(self.starts, position) - 1
            take = min(len(view), self.starts[index + 1] - position)
            if index not in self.sealed:
                buffer = self.buffers.get(index)
                if buffer is None:
                    buffer = self.buffers[index] = self.pool.take(self.refs[index].size)
                at = position - self.starts[index]
                buffer[at:at + take] = view[:take]
            position, view = position + take, view[take:]


class Lower:
    def __init__(self, fetcher: ChunkFetcher, volume: str, memory: int, unit: int) -> None:
        self.fetcher, self.volume, self.memory, self.unit = fetcher, volume, memory, unit
        self.room = memory // 4       # kept for the chunks being read and the newest read ones
        self._lru: OrderedDict[str, Buffer] = OrderedDict()
        self._lru_bytes = 0
        self._ahead: dict[str, int] = {}             # read ahead, not read yet: chunk id -> size
        self._ahead_of: dict[str, int] = {}          # ... and the inode it was read for
        self._loading: dict[str, asyncio.Future[Buffer]] = {}
        self._reserved = 0                           # bytes of runs in flight, not delivered yet
        self._caching: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._plans: dict[int, _Plan] = {}
        self._pool = _Pool()
        self._deferred: dict[str, tuple[Node, int]] = {}   # chunk id -> readahead due on its arrival
        self.errors = 0
        self.runs = 0                    # GET-sized loads started (runs and lone chunks)
        self.cache_skipped = 0

    @property
    def inflight(self) -> int:
        """Bytes of loads started and not delivered yet."""
        return self._reserved

    @property
    def loading(self) -> int:
        """Loads (GETs) not finished: a run's chunks are delivered before its GET ends."""
        return len(self._tasks)

    # ---------------------------------------------------------------- demand

    async def chunk(self, node: Node, index: int) -> Buffer:
        ref = node.chunks[index]
        data = self._lru.get(ref.id)
        if data is not None:
            self._lru.move_to_end(ref.id)
            self._read(ref.id)
            return data
        future = self._loading.get(ref.id)
        if future is None:
            self._start(node, [index], ahead=False)
            future = self._loading[ref.id]
        try:
            data = await asyncio.shield(future)
        except SyncdError as exc:
            self.errors += 1
            log.warning("read of %s chunk %s failed: %s", self.volume, ref.id, exc)
            raise FsError(errno.EIO) from exc
        except Exception as exc:   # a bug below must still answer the kernel, never hang its reader
            self.errors += 1
            log.error("read of %s chunk %s failed unexpectedly: %r", self.volume, ref.id, exc)
            raise FsError(errno.EIO) from exc
        self._read(ref.id)
        return data

    def _read(self, chunk_id: str) -> None:
        self._ahead.pop(chunk_id, None)
        self._ahead_of.pop(chunk_id, None)

    # ---------------------------------------------------------------- readahead

    def ahead(self, node: Node, index: int) -> None:
        """A sequential read of chunk ``index``: load its run if it is not loading (whatever
        the budget: the reader needs it), then the runs after it that fit; when this started
        the reader's own run, those wait until its chunk is here (started at once, they would
        share the bandwidth that the first byte waits for)."""
        plan = self._plan(node)
        run = bisect.bisect_right(plan.firsts, index) - 1
        for first, end in plan.bounds[run:]:
            wanted = [i for i in range(first, end) if node.chunks[i].id not in self._lru
                      and node.chunks[i].id not in self._loading]
            size = sum(node.chunks[i].size for i in wanted)
            if first > index and self._committed() + size > self.memory - self.room:
                break
            if wanted:
                self._start(node, wanted, ahead=True)
            if index in wanted:   # the reader's own run: the rest once its chunk is here, so
                self._deferred[node.chunks[index].id] = (node, index)   # it has the bandwidth
                break

    def closed(self, node: Node) -> None:
        """The node's last handle closed: what was read ahead for it may be evicted."""
        for chunk_id in [c for c, ino in self._ahead_of.items() if ino == node.ino]:
            self._read(chunk_id)

    def _committed(self) -> int:
        """Bytes that cannot be evicted to make room: in flight and read ahead, not read yet."""
        return self._reserved + sum(self._ahead.values())

    def _plan(self, node: Node) -> _Plan:
        plan = self._plans.get(node.ino)
        if plan is None or plan.chunks is not node.chunks:
            firsts, bounds, at = [], [], 0
            for run in coalesce(node.chunks, self.unit):
                firsts.append(at)
                bounds.append((at, at + len(run)))
                at += len(run)
            plan = self._plans[node.ino] = _Plan(node.chunks, firsts, bounds)
        return plan

    def forget(self, node: Node) -> None:
        self._plans.pop(node.ino, None)

    # ---------------------------------------------------------------- loading

    def _start(self, node: Node, indexes: Sequence[int], ahead: bool) -> None:
        """Load chunks ``indexes`` (consecutive, none loaded or loading) in one task."""
        loop = asyncio.get_running_loop()
        refs = [node.chunks[i] for i in indexes]
        for ref in refs:
            self._loading[ref.id] = loop.create_future()
            self._reserved += ref.size
        self.runs += 1
        task = asyncio.ensure_future(self._load(node, refs, ahead))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, node: Node, refs: list[ChunkRef], ahead: bool) -> None:
        try:
            if len(node.chunks) == 1 and refs[0].pack is not None:
                found = await self.fetcher.get_packed(self.volume, refs[0].pack, self._pack_peers(node, refs[0]))
                for chunk_id, piece in found.items():
                    self._deliver(chunk_id, piece, node.ino, ahead and chunk_id in self._loading)
                return
            cached = await self.fetcher.cache.contains(r.id for r in refs) if self.fetcher.cache else set()
            if self.fetcher.sources or cached:
                await asyncio.gather(*(self._one(r, node.ino, ahead, r.id in cached) for r in refs))
                return
            for run in coalesce(refs, self.unit):
                await self._stream(run, node.ino, ahead)
        except SyncdError as exc:
            self._fail(refs, exc)
        except BaseException as exc:
            self._fail(refs, exc)
            raise

    async def _one(self, ref: ChunkRef, ino: int, ahead: bool, cached: bool) -> None:
        data = await self.fetcher.get(self.volume, ref, cache_bytes=bool(self.fetcher.sources))
        self._deliver(ref.id, data, ino, ahead)
        if not cached and not self.fetcher.sources:
            self._cache_later(ref.id, data)

    async def _stream(self, refs: list[ChunkRef], ino: int, ahead: bool) -> None:
        starts = [0]
        for ref in refs:
            starts.append(starts[-1] + ref.size)
        run = _Run(refs, ino, ahead, starts, self._pool)
        loop = asyncio.get_running_loop()

        def verified(index: int) -> None:   # the reading thread: seal first, then hand over
            run.sealed.add(index)
            loop.call_soon_threadsafe(self._delivered, run, index)

        async def write(position: int, pieces: list[bytes]) -> None:
            for piece in pieces:
                run.write(position, memoryview(piece))
                position += len(piece)
        await self.fetcher.stream_run(self.volume, refs, write, run.write, verified)

    def _delivered(self, run: _Run, index: int) -> None:
        ref, data = run.refs[index], run.buffers.pop(index, bytearray())
        self._deliver(ref.id, data, run.ino, run.ahead)
        self._cache_later(ref.id, data)

    def _deliver(self, chunk_id: str, data: Buffer, ino: int, ahead: bool) -> None:
        future = self._loading.pop(chunk_id, None)
        if future is not None:
            self._reserved -= len(data)
        if ahead:
            self._ahead[chunk_id], self._ahead_of[chunk_id] = len(data), ino
        self._remember(chunk_id, data)
        if future is not None and not future.done():
            future.set_result(data)
        deferred = self._deferred.pop(chunk_id, None)
        if deferred is not None:
            self.ahead(*deferred)

    def _fail(self, refs: list[ChunkRef], exc: BaseException) -> None:
        for ref in refs:
            self._deferred.pop(ref.id, None)
            future = self._loading.pop(ref.id, None)
            if future is None:
                continue
            self._reserved -= ref.size
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            elif not future.done():
                future.set_exception(exc)
                future.exception()   # retrieved: the reader may have gone away

    def _remember(self, chunk_id: str, data: Buffer) -> None:
        """Keep a verified chunk; evict chunks already read, oldest first, past the budget.
        Chunks read ahead and not read yet are never evicted (evicting them would fetch them
        twice): ``ahead`` only starts what fits, so they stay within the budget."""
        if chunk_id in self._lru:
            self._lru.move_to_end(chunk_id)
            return
        self._lru[chunk_id] = data
        self._lru_bytes += len(data)
        if self._lru_bytes + self._reserved <= self.memory:
            return
        read = [k for k in self._lru if k not in self._ahead and k != chunk_id]
        for victim in read[:-KEEP_READ]:  # the newest read chunks are likely still being read
            if self._lru_bytes + self._reserved <= self.memory:
                break
            evicted = self._lru.pop(victim)
            self._lru_bytes -= len(evicted)
            self._pool.give(evicted)

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

    # ---------------------------------------------------------------- disk cache

    def _cache_later(self, chunk_id: str, data: Buffer) -> None:
        """Copy a verified chunk to the disk cache in the background; skipped when
        ``CACHE_WRITES`` chunks already wait for the disk (each holds one chunk copy)."""
        cache = self.fetcher.cache
        if cache is None:
            return
        if len(self._caching) >= CACHE_WRITES:
            self.cache_skipped += 1
            return

        async def put() -> None:
            await cache.put(chunk_id, data if isinstance(data, bytes) else await asyncio.to_thread(bytes, data))
        task = asyncio.ensure_future(put())
        self._caching.add(task)
        task.add_done_callback(self._caching.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._caching, return_exceptions=True)
