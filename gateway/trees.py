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
(format/tree.py). The answer is built in memory: the canonical bytes of at
most one span.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from syncd.data.gatewayclient import TREES_PER_REQUEST
from syncd.engine.trees import MAX_READ
from syncd.errors import IntegrityError, InvalidName, ManifestError, NotFound
from syncd.format.chunking import is_content_id, verify
from syncd.format.layout import Layout, validate_name
from syncd.format.tree import MAX_TREE_BYTES, inflate_tree
from syncd.store.base import ObjectStore

from .metrics import GatewayMetrics
from .objcache import ObjectCache

log = logging.getLogger(__name__)

MAX_TREES = TREES_PER_REQUEST
MAX_SPAN = MAX_READ          # the engine's largest tree read (engine/trees.py)
MAX_STREAM = MAX_TREE_BYTES + MAX_TREE_BYTES // 8192 + 64  # a zlib stream of the largest tree, stored
                                                           # blocks' 5 bytes per 64 KiB and framing included
FAMILY = "trees"


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


class TreeServer:
    """Verified trees for the gateway's tree route: the cache, single-flight and the miss rule above."""

    def __init__(self, store: ObjectStore, prefix: str, cache: Callable[[], ObjectCache],
                 metrics: GatewayMetrics) -> None:
        self.store, self.prefix, self.metrics = store, prefix, metrics
        self._cache = cache  # the gateway's one disk cache, opened on first use (service.py)
        self._flights: dict[Key, asyncio.Future[bytes]] = {}
        self._leaders: set[asyncio.Task[None]] = set()

    async def read(self, owner: str, volume: str, pack: str, trees: Sequence[TreeAt]) -> list[bytes]:
        """The canonical bytes of each of ``trees``, in order, each verified against its id."""
        validate_name(owner, "owner")
        validate_name(volume)
        waits: dict[Key, asyncio.Future[bytes]] = {}
        found: dict[Key, bytes] = {}
        wanted = {(owner, volume, pack, t.id, t.offset, t.size): t for t in trees}
        looked = [t.id for k, t in wanted.items() if k not in self._flights]
        hits = await self._cached(owner, looked) if looked else {}
        # from here to the leader's start nothing awaits: a concurrent request finds our flights
        missing: dict[Key, TreeAt] = {}
        for key, tree in wanted.items():
            flight = self._flights.get(key)
            if flight is not None:
                self.metrics.joins.labels(FAMILY).inc()
                waits[key] = flight
            elif tree.id in hits:
                found[key] = hits[tree.id]
            else:
                missing[key] = tree
        if missing:
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
        for key, future in waits.items():
            found[key] = await asyncio.shield(future)
        return [found[(owner, volume, pack, t.id, t.offset, t.size)] for t in trees]

    async def _cached(self, owner: str, tree_ids: list[str]) -> dict[str, bytes]:
        """The verified cached trees among ``tree_ids`` (one worker-thread job for all of them)."""
        hits = await asyncio.to_thread(_cached_trees, self._cache(), owner, tree_ids)
        if hits:
            self.metrics.hits.labels(FAMILY).inc(len(hits))
        return hits

    async def _lead(self, owner: str, volume: str, pack: str, missing: dict[Key, TreeAt],
                    futures: dict[Key, asyncio.Future[bytes]]) -> None:
        self.metrics.inflight.inc()
        try:
            start = min(t.offset for t in missing.values())
            end = max(t.offset + t.size for t in missing.values())
            if end - start > MAX_SPAN and len(missing) > 1:  # one large tree may exceed it; nothing else
                raise InvalidName(f"the missing trees span {end - start} bytes of the pack (at most {MAX_SPAN})")
            key = Layout(self.prefix, owner).tree_pack(volume, pack)
            self.metrics.origin_requests.inc()
            try:
                blob = await self.store.get(key, start, end)
            except NotFound as exc:
                raise NotFound(f"tree pack {pack} of {owner}/{volume} does not exist") from exc
            self.metrics.origin_bytes.inc(len(blob.data))
            results = await asyncio.to_thread(_verify_all, blob.data, start, list(missing.values()))
            for (k, tree), result in zip(missing.items(), results, strict=True):
                if isinstance(result, bytes):
                    await self._cache().put(owner, FAMILY, tree.id, result)
                    futures[k].set_result(result)
                else:
                    log.warning("tree %s of %s/%s pack %s failed verification: %s",
                                tree.id, owner, volume, pack, result)
                    futures[k].set_exception(result)
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

    async def close(self) -> None:
        for task in list(self._leaders):
            task.cancel()
        await asyncio.gather(*self._leaders, return_exceptions=True)


def _retrieve(future: asyncio.Future[bytes]) -> None:
    """A flight nobody waited for (its request went away) must not log 'exception never retrieved'."""
    if not future.cancelled():
        future.exception()


def _cached_trees(cache: ObjectCache, owner: str, tree_ids: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for tree_id in dict.fromkeys(tree_ids):
        hit = cache.open_now(owner, FAMILY, tree_id)  # verified (bytes, or a file hashed whole)
        if hit is None:
            continue
        try:
            data = hit.data if hit.file is None else _read_all(hit.file)
        finally:
            hit.close()
        if data is not None and verify(tree_id, data):  # a file could change after it was hashed
            out[tree_id] = data
    return out


def _read_all(file: BinaryIO) -> bytes:
    fd = file.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0)


def _verify_all(data: bytes, start: int, trees: list[TreeAt]) -> list[bytes | Exception]:
    """Each tree's canonical bytes from one ranged read, or the error that tree failed with."""
    out: list[bytes | Exception] = []
    for tree in trees:
        piece = data[tree.offset - start:tree.offset - start + tree.size]
        if len(piece) != tree.size:
            out.append(IntegrityError(f"tree {tree.id}: the pack ends before byte {tree.offset + tree.size}"))
            continue
        try:
            out.append(inflate_tree(piece, tree.id))
        except ManifestError as exc:
            out.append(IntegrityError(str(exc)))
    return out
