"""Serving format v2's trees through the gateway, each tree verified by its own id.

A worker reads a directory's tree as ``size`` bytes at ``offset`` of the tree
pack ``trees/<pack>`` (docs/FORMAT.md section 5). The pack's id is drawn at
random when it is opened, so unlike chunks and packs the gateway cannot check
a tree pack by its name; what it can check is each tree the worker names:
those bytes must inflate as one zlib stream to canonical bytes that hash to
the tree id. So the unit this module serves and caches is the tree, not the
pack::

    POST /v1/<owner>/<volume>/trees/<pack>   {"trees": [[tree id, offset, size], ...]}

answers with, for each requested tree in request order, an 8-byte big-endian
length and the tree's **canonical** bytes (inflated, verified). Canonical
rather than stored bytes because verification is then a plain xxh3 on every
hop: the gateway checks a cached tree by hashing it (as it checks every other
cached object, at memory speed), the worker checks what it receives the same
way, and the one inflate per tree happens once per pool, on the miss. The
price is that trees cross the gateway link uncompressed (canonical trees are
a few times larger than their zlib streams; still a small share of a volume).

Order of lookups, per tree: a fetch of the same reference already in flight
(join it: no new GET), then the disk cache (gateway/objcache.py, family
``trees``, owner-scoped like every entry; a hit is hashed before it is used
and a corrupt entry is evicted and refetched), then a miss.

The rule for misses: the trees of one request that are neither cached nor in
flight are read from the store with **one ranged GET** spanning the first
missing tree's offset to the last one's end, never the whole pack (a pack
holds up to 8 MiB of trees of a commit; a lazy mount listing one directory
must not cost the gateway the whole of it). The engine already groups the
trees it asks for into such spans (engine/trees.py: gaps under 1 MiB, at
most 32 MiB a read), so a fleet of workers hydrating the same snapshot asks
for the same spans and the store serves each once. Each tree of the span is
inflated and verified in a worker thread, cached, and handed to every
request waiting for it; one that fails verification fails only the requests
that named it (502: the worker reads that tree from the next gateway or the
store and verifies it itself).

Single flight is keyed by the whole reference (owner, volume, pack, id,
offset, size): a worker that names a tree at a wrong offset cannot make a
correct worker's request of that tree fail. The leader is its own task, so a
client that goes away does not cancel what others wait for.

Bounds on what one request can cause: at most ``MAX_TREES`` trees, each
``size`` at most 256 MiB, and a span of missing trees of at most
``MAX_SPAN`` bytes (the engine's largest read) unless the request names a
single tree; each stream inflates to at most the format's 256 MiB per tree
(format/tree.py). Nothing of that is held in memory (issue 22, finding 1:
twenty requests for three 24 MiB trees once took a gateway to 2.9 GiB): a
miss's span is spooled to disk and each tree inflated from it piece by piece
into the cache (gateway/treefiles.py); at most ``leaders`` misses
(``--tree-leaders``) do that at once and the others wait for a turn; an
answer's length is known before its headers (every tree verified and cached
first) and its trees are then sent one at a time from one shared verified
copy (``sendfile`` for a tree in a file). A tree that left the cache between
the two steps (evicted under pressure) ends the answer short of its length:
the worker reads the trees from the next gateway or the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from syncd.data.gatewayclient import TREES_PER_REQUEST
from syncd.engine.trees import MAX_READ
from syncd.errors import IntegrityError, InvalidName, NotFound, TransientStoreError
from syncd.format.chunking import is_content_id
from syncd.format.layout import Layout, validate_name
from syncd.format.tree import MAX_TREE_BYTES
from syncd.store.base import ObjectStore

from .metrics import GatewayMetrics
from .objcache import ObjectCache
from .treefiles import FAMILY, Copies, Copy, Span, discard, inflate_trees, spool_span

log = logging.getLogger(__name__)

MAX_TREES = TREES_PER_REQUEST
MAX_SPAN = MAX_READ          # the engine's largest tree read (engine/trees.py)
MAX_STREAM = MAX_TREE_BYTES + MAX_TREE_BYTES // 8192 + 64  # a zlib stream of the largest tree, stored
                                                           # blocks' 5 bytes per 64 KiB and framing included
TREE_LEADERS = 4             # misses read and inflated at once (--tree-leaders): the rest wait


@dataclass(frozen=True)
class TreeAt:
    """One tree a request names: its id and where it lies in the request's pack."""

    id: str
    offset: int
    size: int


def parse_request(pack: str, doc: object) -> list[TreeAt]:
    """The trees of a request body (``{"trees": [[id, offset, size], ...]}``), validated (hostile input)."""
    if not is_content_id(pack):
        raise InvalidName(f"invalid tree pack id {pack[:80]!r}")
    if not isinstance(doc, dict) or set(doc) != {"trees"} or not isinstance(doc["trees"], list):
        raise InvalidName('the body must be {"trees": [[tree id, offset, size], ...]}')
    items = doc["trees"]
    if not 1 <= len(items) <= MAX_TREES:
        raise InvalidName(f"a request names 1 to {MAX_TREES} trees, not {len(items)}")
    out: list[TreeAt] = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 3 or not is_content_id(item[0])
                or type(item[1]) is not int or type(item[2]) is not int
                or item[1] < 0 or not 0 < item[2] <= MAX_STREAM):
            raise InvalidName(f"invalid tree reference {str(item)[:120]}: [tree id, offset >= 0, size > 0]")
        out.append(TreeAt(item[0], item[1], item[2]))
    return out


Key = tuple[str, str, str, str, int, int]  # owner, volume, pack, tree id, offset, size


def _key(owner: str, volume: str, pack: str, tree: TreeAt) -> Key:
    return owner, volume, pack, tree.id, tree.offset, tree.size


class TreeServer:
    """Verified trees for the gateway's tree route: the cache, single-flight and the miss rule above.

    A request is answered in two steps: :meth:`sizes` makes sure each tree it names is verified
    and in the cache (joining or starting the misses' flights) and learns each tree's size, so the
    answer's length is known before its headers; then the trees are sent one at a time, each
    through :meth:`acquire` and :meth:`release` (one verified copy shared by every request
    sending that tree at once: gateway/treefiles.py)."""

    def __init__(self, store: ObjectStore, prefix: str, cache: Callable[[], ObjectCache],
                 metrics: GatewayMetrics, leaders: int = TREE_LEADERS) -> None:
        self.store, self.prefix, self.metrics = store, prefix, metrics
        self._cache = cache  # the gateway's one disk cache, opened on first use (service.py)
        self._copies = Copies(cache)
        self._flights: dict[Key, asyncio.Future[int]] = {}  # result: the tree's size, now cached
        self._leaders: set[asyncio.Task[None]] = set()
        self._budget = asyncio.Semaphore(leaders)  # misses read and inflated at once (back-pressure)

    async def sizes(self, owner: str, volume: str, pack: str, trees: Sequence[TreeAt]) -> list[int]:
        """The canonical size of each of ``trees``, in order, once each is verified and cached."""
        validate_name(owner, "owner")
        validate_name(volume)
        wanted = {_key(owner, volume, pack, t): t for t in trees}
        known = {t.id: n for t in wanted.values() if (n := self._copies.size(owner, t.id)) is not None}
        looked = [t.id for k, t in wanted.items() if k not in self._flights and t.id not in known]
        hits = await self._cached(owner, looked) if looked else {}
        self.metrics.hits.labels(FAMILY).inc(len(known) + len(hits))
        known.update(hits)
        # from here to the leader's start nothing awaits: a concurrent request finds our flights
        waits: dict[Key, asyncio.Future[int]] = {}
        missing: dict[Key, TreeAt] = {}
        for key, tree in wanted.items():
            flight = self._flights.get(key)
            if tree.id in known:
                continue
            if flight is not None:
                self.metrics.joins.labels(FAMILY).inc()
                waits[key] = flight
            else:
                missing[key] = tree
        if missing:
            self._start(owner, volume, pack, missing, waits)
        for key, future in waits.items():
            known[key[3]] = await asyncio.shield(future)
        return [known[t.id] for t in trees]

    def _start(self, owner: str, volume: str, pack: str, missing: dict[Key, TreeAt],
               waits: dict[Key, asyncio.Future[int]]) -> None:
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key in missing}
        for key, future in futures.items():
            future.add_done_callback(_retrieve)
            self._flights[key] = future
            waits[key] = future
        self.metrics.misses.labels(FAMILY).inc(len(missing))
        task = asyncio.create_task(self._lead(owner, volume, pack, missing, futures))
        self._leaders.add(task)
        task.add_done_callback(self._leaders.discard)

    async def acquire(self, owner: str, tree_id: str) -> Copy | None:
        """A verified copy of a cached tree to send (then :meth:`release` it); None if it left the cache."""
        return await self._copies.acquire(owner, tree_id)

    def release(self, copy: Copy) -> None:
        self._copies.release(copy)

    async def _cached(self, owner: str, tree_ids: list[str]) -> dict[str, int]:
        """The sizes of the verified cached trees among ``tree_ids`` (one worker-thread job for all)."""
        return await asyncio.to_thread(_cached_sizes, self._cache(), owner, tree_ids)

    async def _lead(self, owner: str, volume: str, pack: str, missing: dict[Key, TreeAt],
                    futures: dict[Key, asyncio.Future[int]]) -> None:
        self.metrics.inflight.inc()
        try:
            start = min(t.offset for t in missing.values())
            end = max(t.offset + t.size for t in missing.values())
            if end - start > MAX_SPAN and len(missing) > 1:  # one large tree may exceed it; nothing else
                raise InvalidName(f"the missing trees span {end - start} bytes of the pack (at most {MAX_SPAN})")
            async with self._budget:
                await self._read_span(owner, volume, pack, start, end, missing, futures)
        except Exception as exc:
            for future in futures.values():
                if not future.done():
                    future.set_exception(exc)
        except BaseException:  # cancelled (the gateway is closing): so are the requests waiting
            for future in futures.values():
                future.cancel()
            raise
        finally:
            self.metrics.inflight.dec()
            for k, future in futures.items():
                if self._flights.get(k) is future:
                    del self._flights[k]

    async def _read_span(self, owner: str, volume: str, pack: str, start: int, end: int,
                         missing: dict[Key, TreeAt], futures: dict[Key, asyncio.Future[int]]) -> None:
        """One ranged GET into a spool file, then each tree inflated, verified and cached from it."""
        key = Layout(self.prefix, owner).tree_pack(volume, pack)
        spool_dir = self._cache().spool_dir
        self.metrics.origin_requests.inc()
        try:
            spool = await spool_span(self.store, key, start, end, spool_dir)
        except NotFound as exc:
            raise NotFound(f"tree pack {pack} of {owner}/{volume} does not exist") from exc
        try:
            self.metrics.origin_bytes.inc(os.fstat(spool.fileno()).st_size)
            pending = list(missing.items())
            while pending:
                spans = [Span(t.id, t.offset - start, t.size) for _, t in pending]
                results = await asyncio.to_thread(inflate_trees, spool.fileno(), spans, spool_dir)
                for (k, tree), result in zip(pending, results, strict=False):
                    await self._settle(owner, f"{owner}/{volume} pack {pack}", tree, futures[k], result)
                pending = pending[len(results):]
        finally:
            spool.close()

    async def _settle(self, owner: str, where: str, tree: TreeAt, future: asyncio.Future[int],
                      result: Copy | IntegrityError) -> None:
        """A verified tree into the cache, then its flight's result; or the flight's error."""
        if isinstance(result, IntegrityError):
            log.warning("tree %s of %s failed verification: %s", tree.id, where, result)
            future.set_exception(result)
            return
        cache = self._cache()
        try:
            if result.path is None:
                kept = await cache.put(owner, FAMILY, tree.id, result.data or b"")
            else:
                kept = await cache.put_file(owner, FAMILY, tree.id, result.path, result.size)
                if kept:
                    result.path = None  # moved into the cache
        finally:
            discard(result)
        if kept:
            future.set_result(result.size)
        else:
            future.set_exception(TransientStoreError(f"the gateway could not cache tree {tree.id}"))

    async def close(self) -> None:
        for task in list(self._leaders):
            task.cancel()
        await asyncio.gather(*self._leaders, return_exceptions=True)
        self._copies.close()


def _retrieve(future: asyncio.Future[int]) -> None:
    """A flight nobody waited for (its request went away) must not log 'exception never retrieved'."""
    if not future.cancelled():
        future.exception()


def _cached_sizes(cache: ObjectCache, owner: str, tree_ids: list[str]) -> dict[str, int]:
    """Each cached tree's size once it verified (one open at a time: nothing held after)."""
    out: dict[str, int] = {}
    for tree_id in dict.fromkeys(tree_ids):
        hit = cache.open_now(owner, FAMILY, tree_id)  # verified (bytes, or a file hashed whole)
        if hit is not None:
            out[tree_id] = hit.size
            hit.close()
    return out
