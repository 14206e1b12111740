"""The gateway's core: a verified disk cache in front of the store, single-flight.

``GatewayService.open(obj)`` answers one request for a chunk or pack object
of a volume (``ObjectRef``: owner, volume, kind, content id) with a body to
stream, in this order:

1. a fetch of the same object of the same volume already in flight: join
   it (no new GET);
2. the disk cache: one ``syncd.engine.cache.ChunkCache`` (one diskcache handle,
   whatever the number of owners), seen per owner through ``for_owner``, so
   the size bound (LRU) covers every owner together while keys stay
   owner-scoped. Every cached read is re-hashed; a corrupt
   entry is evicted and counted, and the request continues as a miss;
3. a miss: start a :class:`~gateway.flight.Flight` and a leader task that
   streams the object from the store (``store.open_stream``, one GET) into
   it. Readers follow the flight as bytes arrive. Once the whole object has
   arrived and hashed to its id, the leader puts it into the cache and only
   then drops the flight, so a later request always finds one or the other.
   A body that breaks off part-way (a transient store error) is resumed with
   a ranged GET from the first missing byte, so readers never notice.

Packs are fetched and cached whole even when a request asks for a range: a
pack's id is the hash of the whole pack, so only a whole pack can be verified,
and the next worker's range of the same pack is then a cache hit.

The leader is its own task: a client that disconnects does not cancel the
fetch that other clients (and the cache) are waiting for. The store below is
syncd's usual stack (engine.py): retries, a connection limit and counting.

``warm`` prefetches a volume's objects (a snapshot, or explicit ids) into the
cache, a bounded number at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from syncd.engine.cache import ChunkCache
from syncd.engine.volumes import VolumeRepo
from syncd.errors import InvalidName, TransientStoreError
from syncd.format.chunking import is_content_id
from syncd.format.layout import Layout, validate_name
from syncd.store.base import ObjectStore, open_stream

from .flight import Flight
from .metrics import GatewayMetrics

log = logging.getLogger(__name__)

Kind = Literal["chunks", "packs"]
KINDS: tuple[Kind, ...] = ("chunks", "packs")
WARM_CONCURRENCY = 8
RESUMES = 3  # times a body cut off part-way is resumed from where it stopped


@dataclass(frozen=True)
class ObjectRef:
    owner: str
    volume: str
    kind: Kind
    id: str

    def __post_init__(self) -> None:
        validate_name(self.owner, "owner")
        validate_name(self.volume)
        if self.kind not in KINDS:
            raise InvalidName(f"unknown object kind {self.kind!r}")
        if not is_content_id(self.id):
            raise InvalidName(f"invalid object id {self.id!r}")

    @property
    def flight_key(self) -> tuple[str, str, str]:
        """Fetches are per volume (a missing object in one volume must not fail another's)."""
        return self.owner, self.volume, self.id


class Body(Protocol):
    async def length(self) -> int: ...

    def read(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]: ...


class CachedBody:
    """An object read (and verified) from the disk cache."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def length(self) -> int:
        return len(self.data)

    async def read(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        yield memoryview(self.data)[start:end]


@dataclass
class WarmResult:
    volume: str
    snapshot: str | None
    objects: int = 0
    cached: int = 0
    fetched: int = 0
    bytes_fetched: int = 0
    failed: list[str] = field(default_factory=list)


class GatewayService:
    def __init__(self, store: ObjectStore, prefix: str, cache_dir: Path, cache_size: int,
                 metrics: GatewayMetrics | None = None) -> None:
        self.store, self.prefix = store, prefix
        self.cache_dir, self.cache_size = cache_dir, cache_size
        self.metrics = metrics or GatewayMetrics()
        self._cache: ChunkCache | None = None
        self._repos: dict[str, VolumeRepo] = {}
        self._flights: dict[tuple[str, str, str], Flight] = {}  # (owner, volume, id)
        self._leaders: set[asyncio.Task[None]] = set()

    def layout(self, owner: str) -> Layout:
        return Layout(self.prefix, owner)

    def cache(self, owner: str) -> ChunkCache:
        """``owner``'s view of the one disk cache (keys ``<owner>:<id>``; no handle per owner)."""
        if self._cache is None:
            self._cache = ChunkCache(self.cache_dir, self.cache_size, owner)
        return self._cache.for_owner(owner)

    def key(self, obj: ObjectRef) -> str:
        layout = self.layout(obj.owner)
        return layout.chunk(obj.volume, obj.id) if obj.kind == "chunks" else layout.pack(obj.volume, obj.id)

    async def open(self, obj: ObjectRef) -> Body:
        """A body for ``obj``: a fetch in flight, a verified cache entry, or a new fetch."""
        flight = self._flights.get(obj.flight_key)
        if flight is None:
            cached = await self._cached(obj)
            if cached is not None:
                return cached
            flight = self._flights.get(obj.flight_key)  # another request may have started one
        if flight is not None:
            self.metrics.joins.labels(obj.kind).inc()
            return flight
        self.metrics.misses.labels(obj.kind).inc()
        flight = Flight(obj.id)
        self._flights[obj.flight_key] = flight
        task = asyncio.create_task(self._lead(obj, flight))
        self._leaders.add(task)
        task.add_done_callback(self._leaders.discard)
        return flight

    async def _cached(self, obj: ObjectRef) -> CachedBody | None:
        cache = self.cache(obj.owner)
        corrupt = cache.stats.corrupt
        data = await cache.get(obj.id)
        if cache.stats.corrupt > corrupt:
            self.metrics.corrupt.inc(cache.stats.corrupt - corrupt)
        if data is None:
            return None
        self.metrics.hits.labels(obj.kind).inc()
        return CachedBody(data)

    async def _lead(self, obj: ObjectRef, flight: Flight) -> None:
        """Stream ``obj`` from the store into ``flight``; cache it once verified."""
        self.metrics.inflight.inc()
        try:
            await self._pull(obj, flight)
            flight.finish()
            await self.cache(obj.owner).put(obj.id, flight.body())
        except Exception as exc:
            flight.fail(exc)
            log.warning("origin fetch of %s/%s %s failed: %s", obj.owner, obj.volume, obj.id, exc)
        except BaseException as exc:
            flight.fail(exc)
            raise
        finally:
            self.metrics.inflight.dec()
            if self._flights.get(obj.flight_key) is flight:
                del self._flights[obj.flight_key]

    async def _pull(self, obj: ObjectRef, flight: Flight) -> None:
        """The body into ``flight``; a body cut off part-way resumes where it stopped (ranged GET)."""
        for resume in range(RESUMES + 1):
            opened = False
            self.metrics.origin_requests.inc()
            try:
                async with open_stream(self.store, self.key(obj), flight.received or None) as stream:
                    opened = True
                    if flight.size is None:
                        flight.start(stream.size)
                    async for piece in stream.pieces:
                        flight.add(piece)
                        self.metrics.origin_bytes.inc(len(piece))
                return
            except TransientStoreError as exc:
                if not opened or resume == RESUMES:  # opening was already retried by the store stack
                    raise
                log.info("resuming %s at byte %d after %s", obj.id, flight.received, exc)

    async def warm(self, owner: str, volume: str, snapshot: str | None = None,
                   chunks: Iterable[str] | None = None, packs: Iterable[str] | None = None) -> WarmResult:
        """Fetch a volume's objects into the cache: the given ids, else all of a snapshot."""
        if chunks is None and packs is None:
            snapshot, chunks, packs = await self._snapshot_objects(owner, volume, snapshot)
        objs = [ObjectRef(owner, volume, "chunks", i) for i in sorted(set(chunks or ()))]
        objs += [ObjectRef(owner, volume, "packs", i) for i in sorted(set(packs or ()))]
        result = WarmResult(volume, snapshot, objects=len(objs))
        present = await self.cache(owner).contains(o.id for o in objs)
        result.cached = sum(1 for o in objs if o.id in present)
        slots = asyncio.Semaphore(WARM_CONCURRENCY)

        async def one(obj: ObjectRef) -> None:
            async with slots:
                body = await self.open(obj)
                try:
                    if isinstance(body, Flight):
                        await body.wait_done()
                        result.fetched += 1
                        result.bytes_fetched += body.received
                except Exception as exc:
                    result.failed.append(f"{obj.kind}/{obj.id}: {exc}")

        await asyncio.gather(*(one(o) for o in objs if o.id not in present))
        await self.settled()  # every fetched object is in the cache before we answer
        return result

    async def _snapshot_objects(self, owner: str, volume: str,
                                snapshot: str | None) -> tuple[str | None, set[str], set[str]]:
        repo = self._repos.get(owner) or self._repos.setdefault(owner, VolumeRepo(self.store, self.layout(owner)))
        sid = snapshot or (await repo.head(volume)).snapshot
        if sid is None:
            return None, set(), set()
        snap = await repo.snapshot(volume, sid)
        refs = [ref for entry in snap.entries.values() for ref in entry.chunks]
        return (sid, {r.id for r in refs if r.pack is None}, {r.pack for r in refs if r.pack is not None})

    async def settled(self) -> None:
        """Wait until every origin fetch in flight has finished (and been cached)."""
        while self._leaders:
            await asyncio.gather(*self._leaders, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._leaders):
            task.cancel()
        await asyncio.gather(*self._leaders, return_exceptions=True)
        if self._cache is not None:
            self._cache.close()
            self._cache = None
