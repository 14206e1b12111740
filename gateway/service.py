"""The gateway's core: a verified disk cache in front of the store, single-flight.

``GatewayService.open(obj)`` answers one request for an immutable object of
a volume (``ObjectRef``: owner, volume, key family, content id; the families
are ``syncd.data.gatewayclient.FAMILIES``: chunks, packs, snapshots,
each named by the xxh3 of its bytes) with a body to stream, in this
order:

1. a fetch of the same object of the same volume already in flight: join
   it (no new GET);
2. the disk cache (gateway/objcache.py): one diskcache for every owner, keys
   owner-scoped. A hit is an open file, verified whole before it is handed
   out and then sent with ``sendfile`` (gateway/send.py); a corrupt entry is
   evicted and counted, and the request continues as a miss;
3. a miss: start a :class:`~gateway.flight.Flight` and a leader task that
   streams the object from the store (``store.open_stream``, one GET) into
   it; an object of 32 KiB or more is spooled to a file in the cache
   directory as it arrives. Readers follow the flight as bytes arrive (from
   the spool file with ``sendfile``). Once the whole object has arrived and
   hashed to its id, the leader moves the spool file into the cache (or puts
   a small object's bytes) and only then drops the flight, so a later
   request always finds one or the other.
   A body that breaks off part-way (a transient store error) is resumed with
   a ranged GET from the first missing byte, so readers never notice.

Ranges. An object's id is the hash of the whole object, so only a whole
object can be verified. The rule for a ranged miss: an object of at most
``whole_limit`` bytes (``--whole-limit``, default 64 MiB; syncd's chunks and
packs are 8 MiB) is fetched whole, once, and the range is cut from it (the
end of the range is released when the whole object has verified; the next
worker's range is a cache hit). A larger object is not fetched whole for a
range: the leader learns the size from the store's first answer, gives up
(:class:`RangeOnly`; that first GET is closed after its headers, and the
size is remembered, so later ranges of it go straight to a ranged GET)
and the request is relayed as a ranged GET
(:class:`RangeBody`), uncached and marked ``X-Syncd-Verified: client``; the
worker verifies every chunk it cuts from it, as it always does.

HEAD (the commit point, mutable) has its own rule: gateway/heads.py. With a
``--pool``, a miss first asks the other gateways' caches (gateway/peers.py).

The leader is its own task: a client that disconnects does not cancel the
fetch that other clients (and the cache) are waiting for. The store below is
syncd's usual stack (wiring.py): retries, a connection limit and counting.

``warm`` prefetches a volume's objects (a snapshot, or explicit ids) into the
cache, a bounded number at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from syncd.data.gatewayclient import FAMILIES
from syncd.engine.volumes import VolumeRepo
from syncd.errors import InvalidName, NotFound, TransientStoreError
from syncd.format.chunking import is_content_id
from syncd.format.layout import Layout, validate_name
from syncd.limits import in_thread
from syncd.store.base import ObjectStore, open_stream

from .flight import Flight
from .heads import HeadCache, HeadCopy
from .metrics import GatewayMetrics
from .objcache import Hit, ObjectCache
from .peers import Peers
from .trees import TREE_LEADERS, TreeServer

log = logging.getLogger(__name__)

WARM_CONCURRENCY = 8
RESUMES = 3                   # times a body cut off part-way is resumed from where it stopped
WHOLE_LIMIT = 64 * 1024 * 1024  # a ranged miss on an object up to this size fetches it whole
HEAD_TTL = 1.0
LARGE_KEPT = 100_000           # sizes of objects above whole_limit remembered (LRU)
READ_PIECE = 1 << 20          # file reads when sendfile is not available


@dataclass(frozen=True)
class ObjectRef:
    owner: str
    volume: str
    kind: str  # a key family of FAMILIES
    id: str

    def __post_init__(self) -> None:
        validate_name(self.owner, "owner")
        validate_name(self.volume)
        if self.kind not in FAMILIES:
            raise InvalidName(f"unknown object kind {self.kind!r}")
        if not is_content_id(self.id):
            raise InvalidName(f"invalid object id {self.id!r}")

    @property
    def flight_key(self) -> tuple[str, str, str, str]:
        """Fetches are per volume (a missing object in one volume must not fail another's)."""
        return self.owner, self.volume, self.kind, self.id


class Body(Protocol):
    async def length(self) -> int: ...

    def read(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]: ...

    def close(self) -> None: ...


class RangeOnly(Exception):
    """A ranged miss on an object above ``whole_limit``: relay the range instead (RangeBody)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"object of {size} bytes is too large to fetch whole for a range")
        self.size = size


class CachedBody:
    """A verified cache hit: bytes (small objects) or an open file (sent with sendfile)."""

    def __init__(self, hit: Hit) -> None:
        self.hit = hit

    @property
    def file(self) -> BinaryIO | None:
        """The verified file (for sendfile), or None for an in-memory hit."""
        return self.hit.file

    async def length(self) -> int:
        return self.hit.size

    async def read(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        if self.hit.data is not None:
            yield memoryview(self.hit.data)[start:end]
            return
        assert self.hit.file is not None
        fd = self.hit.file.fileno()
        while start < end:
            piece = await in_thread(os.pread, fd, min(READ_PIECE, end - start), start)
            if not piece:
                raise TransientStoreError("cached file ended early")
            yield piece
            start += len(piece)

    def close(self) -> None:
        self.hit.close()


class RangeBody:
    """A range relayed from the store (objects above ``whole_limit``): not cached, not verified here."""

    verified_by = "client"

    def __init__(self, store: ObjectStore, key: str, size: int, metrics: GatewayMetrics) -> None:
        self.store, self.key, self.size, self.metrics = store, key, size, metrics

    async def length(self) -> int:
        return self.size

    async def read(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        self.metrics.origin_requests.inc()
        async with open_stream(self.store, self.key, start, end) as stream:
            async for piece in stream.pieces:
                self.metrics.origin_bytes.inc(len(piece))
                yield piece

    def close(self) -> None:
        return None


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
                 metrics: GatewayMetrics | None = None, *, head_ttl: float = HEAD_TTL,
                 whole_limit: int = WHOLE_LIMIT, clock: Callable[[], float] = time.monotonic,
                 peers: Peers | None = None, tree_leaders: int = TREE_LEADERS) -> None:
        self.store, self.prefix, self.peers = store, prefix, peers
        self.cache_dir, self.cache_size, self.whole_limit = cache_dir, cache_size, whole_limit
        self.metrics = metrics or GatewayMetrics()
        self.heads = HeadCache(store, prefix, head_ttl, self.metrics, clock)
        self._cache: ObjectCache | None = None
        self._repos: dict[str, VolumeRepo] = {}
        self._flights: dict[tuple[str, str, str, str], Flight] = {}
        self._large: OrderedDict[tuple[str, str], int] = OrderedDict()  # (owner, id) -> size > whole_limit
        self._leaders: set[asyncio.Task[None]] = set()
        self.trees = TreeServer(store, prefix, lambda: self.cache, self.metrics,  # format v2 trees (trees.py)
                                tree_leaders)

    def layout(self, owner: str) -> Layout:
        return Layout(self.prefix, owner)

    @property
    def cache(self) -> ObjectCache:
        """The one disk cache of every owner (opened on first use; keys ``<owner>:<family>:<id>``)."""
        if self._cache is None:
            self._cache = ObjectCache(self.cache_dir, self.cache_size, self.metrics.corrupt.inc)
        return self._cache

    def key(self, obj: ObjectRef) -> str:
        return self.layout(obj.owner).volume_prefix(obj.volume) + FAMILIES[obj.kind](obj.id)

    async def head(self, owner: str, volume: str) -> HeadCopy:
        validate_name(owner, "owner")
        validate_name(volume)
        return await self.heads.get(owner, volume)

    async def open(self, obj: ObjectRef, ranged: bool = False, *, cache_only: bool = False,
                   authorization: str | None = None) -> Body:
        """A body for ``obj``: a fetch in flight, a verified cache entry, or a new fetch.
        ``ranged``: the request wants a part (a large object is then relayed, see RangeOnly).
        ``cache_only``: a peer asks (peers.py): NotFound rather than a fetch. ``authorization``
        is forwarded to peers a miss asks first."""
        if cache_only:
            return await self._local(obj)
        flight = self._flights.get(obj.flight_key)
        if flight is None:
            cached = await self._cached(obj)
            if cached is not None:
                return cached
            flight = self._flights.get(obj.flight_key)  # another request may have started one
        large = self._large.get((obj.owner, obj.id))
        if ranged and flight is None and large is not None:
            return self.relay(obj, large)  # known to be too large to fetch whole for a range
        if flight is not None:
            self.metrics.joins.labels(obj.kind).inc()
            return flight.join()
        self.metrics.misses.labels(obj.kind).inc()
        flight = Flight(obj.id, self.cache.spool_dir)
        self._flights[obj.flight_key] = flight
        task = asyncio.create_task(self._lead(obj, flight, ranged, authorization))
        self._leaders.add(task)
        task.add_done_callback(self._leaders.discard)
        return flight.join()

    async def _local(self, obj: ObjectRef) -> Body:
        """A peer's request: a flight fed by the store, the verified cached copy, or NotFound.
        Never a flight fed by a peer: two gateways whose misses asked each other would each
        wait for the other's bytes; a store-fed flight waits on nobody."""
        flight = self._flights.get(obj.flight_key)
        body: Body | None = flight.join() if flight is not None and flight.from_store else await self._cached(obj)
        if body is None:
            raise NotFound(f"{obj.kind}/{obj.id} is not cached here")
        self.metrics.peer_served.inc()
        return body

    def relay(self, obj: ObjectRef, size: int) -> RangeBody:
        self.metrics.relayed.inc()
        return RangeBody(self.store, self.key(obj), size, self.metrics)

    async def _cached(self, obj: ObjectRef) -> CachedBody | None:
        hit = await self.cache.open(obj.owner, obj.kind, obj.id)
        if hit is None:
            return None
        self.metrics.hits.labels(obj.kind).inc()
        return CachedBody(hit)

    async def _lead(self, obj: ObjectRef, flight: Flight, ranged: bool, authorization: str | None) -> None:
        """Stream ``obj`` from a peer's cache or the store into ``flight``; cache it once verified."""
        self.metrics.inflight.inc()
        try:
            if not (self.peers and await self._from_peers(obj, flight, ranged, authorization)):
                flight.from_store = True  # from now on peers may follow this flight (see _local)
                await self._pull(obj, flight, ranged)
            flight.finish()
            await self._keep(obj, flight)
        except RangeOnly as exc:
            flight.fail(exc)
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
            flight.release()

    async def _keep(self, obj: ObjectRef, flight: Flight) -> None:
        """A verified flight into the cache: its spool file moved in, or a small body's bytes."""
        if flight.spool_path is None:
            await self.cache.put(obj.owner, obj.kind, obj.id, flight.body())
        elif await self.cache.put_file(obj.owner, obj.kind, obj.id, flight.spool_path, flight.received):
            flight.handed_over()

    async def _from_peers(self, obj: ObjectRef, flight: Flight, ranged: bool, authorization: str | None) -> bool:
        """True when a peer delivered the whole body into ``flight`` (not yet verified)."""
        assert self.peers is not None
        path = f"/v1/{obj.owner}/{obj.volume}/{obj.kind}/{obj.id}"
        peer_bytes = self.metrics.peer_bytes
        for url in self.peers.order(obj.id):
            try:
                async with self.peers.open(url, path, authorization) as stream:
                    if ranged and stream.size > self.whole_limit:
                        return False  # the store's ranged GET is cheaper than the whole object
                    await flight.start(stream.size)
                    async for piece in stream.pieces:
                        await flight.add(piece)
                        peer_bytes.inc(len(piece))
            except NotFound:
                continue
            except TransientStoreError as exc:
                log.info("peer %s failed for %s: %s", url, obj.id, exc)
                if flight.received:
                    return False  # the store resumes from the first missing byte
                continue
            self.metrics.peer_fills.inc()
            return True
        return False

    async def _pull(self, obj: ObjectRef, flight: Flight, ranged: bool) -> None:
        """The body into ``flight``; a body cut off part-way resumes where it stopped (ranged GET)."""
        origin_bytes = self.metrics.origin_bytes
        for resume in range(RESUMES + 1):
            opened = False
            self.metrics.origin_requests.inc()
            try:
                async with open_stream(self.store, self.key(obj), flight.received or None) as stream:
                    opened = True
                    if flight.size is None:
                        if ranged and stream.size > self.whole_limit:
                            self._remember_large(obj, stream.size)
                            raise RangeOnly(stream.size)  # closes the body after its headers
                        await flight.start(stream.size)
                    async for piece in stream.pieces:
                        await flight.add(piece)
                        origin_bytes.inc(len(piece))
                return
            except TransientStoreError as exc:
                if not opened or resume == RESUMES:  # opening was already retried by the store stack
                    raise
                if flight.size is not None and flight.received == flight.size:
                    return      # it broke off after the last byte: nothing to resume (a range
                                # starting at the end is a 416); the flight verifies it whole
                log.info("resuming %s at byte %d after %s", obj.id, flight.received, exc)

    def _remember_large(self, obj: ObjectRef, size: int) -> None:
        self._large[(obj.owner, obj.id)] = size
        while len(self._large) > LARGE_KEPT:
            self._large.popitem(last=False)

    async def warm(self, owner: str, volume: str, snapshot: str | None = None,
                   chunks: Iterable[str] | None = None, packs: Iterable[str] | None = None) -> WarmResult:
        """Fetch a volume's objects into the cache: the given ids, else all of a snapshot."""
        if chunks is None and packs is None:
            snapshot, chunks, packs = await self._snapshot_objects(owner, volume, snapshot)
        objs = [ObjectRef(owner, volume, "chunks", i) for i in sorted(set(chunks or ()))]
        objs += [ObjectRef(owner, volume, "packs", i) for i in sorted(set(packs or ()))]
        result = WarmResult(volume, snapshot, objects=len(objs))
        present = (await self.cache.contains(owner, "chunks", [o.id for o in objs if o.kind == "chunks"])
                   | await self.cache.contains(owner, "packs", [o.id for o in objs if o.kind == "packs"]))
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
                finally:
                    body.close()

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

    async def usage(self) -> tuple[int, int]:
        """(bytes, entries) of the disk cache, read in a thread; (0, 0) before it is first opened."""
        cache = self._cache
        return (0, 0) if cache is None else await asyncio.to_thread(cache.usage)

    async def settled(self) -> None:
        """Wait until every origin fetch in flight has finished (and been cached)."""
        while self._leaders:
            await asyncio.gather(*self._leaders, return_exceptions=True)

    async def close(self) -> None:
        await self.trees.close()
        for task in list(self._leaders):
            task.cancel()
        await asyncio.gather(*self._leaders, return_exceptions=True)
        if self.peers is not None:
            await self.peers.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None
