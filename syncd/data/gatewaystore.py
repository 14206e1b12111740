"""An ObjectStore that reads HEAD and immutable metadata through the gateway pool.

A hydrate reads a volume's HEAD, its snapshot (and, in format v2, its tree
objects) before any chunk. With a hundred workers that is a hundred GETs of
each for the store, which the chunk path through the gateways (fetch.py,
gatewayclient.py) never saw. :class:`GatewayStore` is a wrapper like those in
store/wrap.py, stacked by wiring.py under the VolumeRepo only: a GET of

* ``<volume>/HEAD`` goes to the gateways (``GET /v1/<owner>/<volume>/HEAD``,
  at most the gateway's HEAD TTL old, gateway/heads.py);
* a whole object of a key family in ``FAMILIES`` other than chunks and packs
  (snapshots, any family added there later) goes to the gateways
  (``GET /v1/<owner>/<volume>/<family>/<id>``);
* format v2 trees are not a GET of this wrapper: the TreeStore asks
  :meth:`GatewayStore.fetch_trees` for the trees of one tree pack by
  reference (``POST /v1/<owner>/<volume>/trees/<pack>``, gateway/trees.py),
  and reads the store itself only when no gateway delivers;

in rendezvous order (the object's id, or the HEAD's key, ranks the gateways
exactly as gatewayclient.py does for chunks), falling through to the next
gateway and then the store. Chunks and packs are not routed here: the
ChunkFetcher already asks the gateways for them (a chunk, a pack's range, or a
run of a large file's chunks, each chunk verified), and a worker must not ask
the same gateway twice for one chunk. Everything
else (ranges, PUTs, listings, HEAD requests, deletes) goes to the store.

Trust. What a gateway returns for an immutable key is hashed against the id
in the key before it is returned; bytes that do not match count as that
gateway failing (the next one, then the store, is asked), so a bad gateway
can never make a hydrate fail. The caller verifies again as always
(``manifest.decode`` checks a snapshot's id). HEAD cannot be verified, only
bounded in age: a gateway is trusted not to serve a HEAD older than its TTL
(one that is not a JSON object with an ETag is skipped like bad bytes).

Read your own writes. After this worker PUTs a HEAD, or a conditional PUT of it
fails (someone else advanced it), that HEAD is read from the store directly
for ``head_ttl`` seconds. So a commit that loses a race re-reads the real HEAD
instead of retrying forever against a gateway's stale copy, and a worker always
sees its own commit at once. The clock is injectable for tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol, runtime_checkable

from syncd.data.gatewayclient import FAMILIES, TREES_PER_REQUEST
from syncd.errors import SyncdError
from syncd.format.chunking import is_content_id, verify
from syncd.format.layout import Layout
from syncd.format.manifest import TreeRef
from syncd.store.base import Blob, BlobStream, ObjectInfo, ObjectStore, open_stream

log = logging.getLogger(__name__)
VIA_FETCHER = frozenset({"chunks", "packs"})  # the ChunkFetcher routes these (fetch.py)
DIRECT_KEPT = 1024


def _plausible_head(blob: Blob) -> bool:
    """What a HEAD from a gateway must be to be returned: a JSON object with the store's ETag.
    (It cannot be verified; a garbled one is that gateway failing, not the read.)"""
    try:
        return bool(blob.etag) and isinstance(json.loads(blob.data), dict)
    except ValueError:
        return False


@runtime_checkable
class ObjectSource(Protocol):
    name: str

    def weight(self, key: str) -> int: ...

    async def fetch_object(self, volume: str, family: str, object_id: str) -> bytes | None: ...

    async def fetch_head(self, volume: str) -> Blob | None: ...

    async def fetch_trees(self, volume: str, pack: str, refs: Sequence[TreeRef]) -> list[bytes] | None: ...


class GatewayStore:
    def __init__(self, inner: ObjectStore, layout: Layout, sources: Sequence[ObjectSource],
                 head_ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner, self.layout, self.sources = inner, layout, list(sources)
        self.head_ttl, self.clock = head_ttl, clock
        self.bytes_by_source: Counter[str] = Counter()
        self.rejected = 0  # gateway answers that failed verification
        self._direct: dict[str, float] = {}  # HEAD key -> read it from the store until then

    def route(self, key: str) -> tuple[str, str, str | None] | None:
        """``(volume, family, id)`` for a key the pool serves (family "HEAD", id None), else None."""
        prefix = self.layout.owner_prefix
        if not key.startswith(prefix):
            return None
        volume, _, rest = key[len(prefix):].partition("/")
        if rest == "HEAD":
            return (volume, "HEAD", None) if self.clock() >= self._direct.get(key, 0.0) else None
        family, object_id = rest.split("/", 1)[0], rest.rsplit("/", 1)[-1]
        build = FAMILIES.get(family)
        if build is None or family in VIA_FETCHER or not is_content_id(object_id) or build(object_id) != rest:
            return None
        return volume, family, object_id

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        route = self.route(key) if start is None and end is None else None
        if route is not None:
            blob = await self._pooled(key, *route)
            if blob is not None:
                return blob
        return await self.inner.get(key, start, end)

    async def _pooled(self, key: str, volume: str, family: str, object_id: str | None) -> Blob | None:
        rank = object_id or key
        for source in sorted(self.sources, key=lambda s: s.weight(rank), reverse=True):
            try:
                if object_id is None:
                    blob = await source.fetch_head(volume)
                else:
                    data = await source.fetch_object(volume, family, object_id)
                    blob = None if data is None else Blob(data, f'"{object_id}"')
            except SyncdError as exc:
                log.info("gateway %s failed for %s: %s", source.name, key, exc)
                continue
            if blob is None:
                continue
            if not (_plausible_head(blob) if object_id is None else verify(object_id, blob.data)):
                self.rejected += 1
                log.warning("gateway %s returned bad bytes for %s; skipping it", source.name, key)
                continue
            self.bytes_by_source[source.name] += len(blob.data)
            return blob
        return None

    async def fetch_trees(self, volume: str, pack: str, refs: Sequence[TreeRef]) -> dict[str, bytes] | None:
        """Format v2 trees of one tree pack through the pool (engine/trees.py's TreePool): their
        canonical bytes by id, each verified against its id, or None when no gateway delivered
        (the TreeStore then reads the store). Ranked by the pack id, so a pack's trees are cached
        together on one gateway and a fleet's identical requests meet there."""
        if len(refs) > TREES_PER_REQUEST:  # a wide level of one pack: several requests, all or nothing
            out: dict[str, bytes] = {}
            for i in range(0, len(refs), TREES_PER_REQUEST):
                part = await self.fetch_trees(volume, pack, refs[i:i + TREES_PER_REQUEST])
                if part is None:
                    return None
                out.update(part)
            return out
        for source in sorted(self.sources, key=lambda s: s.weight(pack), reverse=True):
            try:
                trees = await source.fetch_trees(volume, pack, refs)
            except SyncdError as exc:
                log.info("gateway %s failed for trees of pack %s: %s", source.name, pack, exc)
                continue
            if trees is None:
                continue
            if len(trees) != len(refs) or not all(verify(r.id, t) for r, t in zip(refs, trees, strict=True)):
                self.rejected += 1
                log.warning("gateway %s returned bad trees of pack %s; skipping it", source.name, pack)
                continue
            self.bytes_by_source[source.name] += sum(map(len, trees))
            return {r.id: t for r, t in zip(refs, trees, strict=True)}
        return None

    def _wrote(self, keys: Sequence[str]) -> None:
        until = self.clock() + self.head_ttl
        for key in keys:
            if key.endswith("/HEAD"):
                self._direct[key] = until
        if len(self._direct) > DIRECT_KEPT:
            now = self.clock()
            self._direct = {k: t for k, t in self._direct.items() if t > now}

    @contextlib.asynccontextmanager
    async def get_stream(self, key: str, start: int | None = None,
                         end: int | None = None) -> AsyncIterator[BlobStream]:
        async with open_stream(self.inner, key, start, end) as stream:
            yield stream

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        try:
            return await self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)
        finally:  # written, or lost a race: either way the gateways' copy is not to be trusted now
            self._wrote([key])

    async def head(self, key: str) -> ObjectInfo:
        return await self.inner.head(key)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        async for item in self.inner.list_objects(prefix):
            yield item

    async def list_prefixes(self, prefix: str) -> list[str]:
        return await self.inner.list_prefixes(prefix)

    async def delete(self, keys: list[str]) -> None:
        try:
            await self.inner.delete(keys)
        finally:
            self._wrote(keys)

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        return await self.inner.abort_stale_uploads(prefix, older_than)

    async def close(self) -> None:
        await self.inner.close()
