"""Wiring: the one place that stacks the layers into a working engine.

``open_engine(config)`` builds, from the bottom up::

    ObstoreStore       moves bytes, translates errors (SYNCD_STORE_BACKEND: obstore by
                       default, or aiobotocore's S3Store; store/select.py)
    LimitingStore      at most SYNCD_MAX_CONNECTIONS requests in flight
    RetryingStore      backoff on TransientStoreError: SYNCD_RETRIES attempts, and
                       for SYNCD_STORE_DEADLINE seconds once the store has answered
    CountingStore      per-operation counts and bytes (tests, metrics)
    GatewayStore       (with SYNCD_GATEWAY, under the VolumeRepo only) HEAD, snapshots
                       and trees through the gateway pool, then the store
    VolumeRepo         HEAD and snapshots
    ChunkCache         diskcache, verified, best-effort
    ChunkFetcher       cache -> gateways -> store, single-flight
    IndexStore         local sync state under SYNCD_STATE_DIR
    ChunkIndex         the volumes' chunk index (dedupe on every write path), cached
                       under SYNCD_STATE_DIR/chunkindex
    Chunker            where new files are cut (FastCDC, SYNCD_CHUNK_SIZE average)

Tests pass ``backend=`` to put a MemoryStore or a fault-injecting store at the
bottom of the same stack.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncd.config import Config
from syncd.data.cache import ChunkCache
from syncd.data.chunkindex import ChunkIndex
from syncd.data.fetch import ChunkFetcher, ChunkSource
from syncd.data.upload import Uploader
from syncd.engine.volumes import VolumeRepo
from syncd.format.chunking import Chunker
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef
from syncd.limits import ByteBudget
from syncd.local.index import IndexStore
from syncd.store.base import ObjectStore
from syncd.store.wrap import CountingStore, LimitingStore, RetryingStore

if TYPE_CHECKING:  # imported when gateways are configured: aiohttp is not loaded otherwise
    from syncd.data.gatewaystore import GatewayStore


@dataclass
class Engine:
    config: Config
    store: ObjectStore
    counter: CountingStore
    layout: Layout
    repo: VolumeRepo
    cache: ChunkCache | None
    fetcher: ChunkFetcher
    index: IndexStore
    budget: ByteBudget
    pooled: GatewayStore | None = None  # the VolumeRepo's reads through the gateways, if any
    chunk_index: ChunkIndex | None = None
    chunker: Chunker = dataclasses.field(default_factory=Chunker)

    def uploader(self, volume: str, known: dict[str, ChunkRef]) -> Uploader:
        """An Uploader for one write to ``volume``: large packs, compression, the chunk index."""
        return Uploader(self.store, self.layout, volume, self.budget, self.config.pack_size, known,
                        self.config.large_pack_size, self.chunk_index.session(volume) if self.chunk_index else None)


@contextlib.asynccontextmanager
async def open_engine(config: Config, *, backend: ObjectStore | None = None,
                      sources: Sequence[ChunkSource] = (), use_cache: bool = True) -> AsyncIterator[Engine]:
    layout = Layout(config.prefix, config.owner)   # bad names fail before any connection is opened
    cache = ChunkCache(config.cache_dir, config.cache_size, config.owner) if use_cache else None
    if cache is not None:
        cache.open_soon()   # its SQLite opens while the store's first requests are under way
    if backend is None:
        from syncd.store.select import open_store
        try:
            backend = await open_store(config)
        except BaseException:
            if cache is not None:
                cache.close()
            raise
    counter = CountingStore(RetryingStore(LimitingStore(backend, config.max_connections),
                                          config.retries, config.retry_base_delay,
                                          deadline=config.store_deadline))
    if not sources and config.gateways:
        from syncd.data.gatewayclient import gateway_sources
        sources = gateway_sources(config)
    # the index is keyed by what names the volumes, not by how the endpoint is spelled
    scope = f"{config.bucket}|{config.prefix}|{config.owner}"
    legacy_scope = f"{config.s3_endpoint or 'aws'}|{scope}"   # JSON-era index files, migrated on use
    pooled = None
    if sources:
        from syncd.data.gatewaystore import GatewayStore, ObjectSource
        pool = [s for s in sources if isinstance(s, ObjectSource)]
        pooled = GatewayStore(counter, layout, pool, config.gateway_head_ttl) if pool else None
    repo = VolumeRepo(pooled or counter, layout, cache=cache, tree_pool=pooled)
    engine = Engine(config, counter, counter, layout, repo, cache,
                    ChunkFetcher(counter, layout, cache, sources), IndexStore(config.state_dir, scope, legacy_scope),
                    ByteBudget(config.max_inflight_bytes), pooled, ChunkIndex(counter, layout, config.state_dir, scope),
                    Chunker(config.chunk_size, config.pack_threshold))
    try:
        yield engine
    finally:
        try:
            for source in sources:
                closer = getattr(source, "close", None)
                if closer is not None:
                    await closer()
        finally:
            if cache is not None:
                cache.close()
            await counter.close()
