"""HEAD through the gateway: a short time-to-live, then one refetch for everyone.

HEAD is the one mutable object of a volume (the commit point), so it cannot be
cached like content-addressed objects. The rule (docs/GATEWAY.md):

* a HEAD fetched from the store is served for at most ``ttl`` seconds
  (``--head-ttl``, default ``SYNCD_GATEWAY_HEAD_TTL`` = 1 s), measured from the
  moment the GET *was sent*, so a commit that finished before then is in it;
* after that the next request refetches it; concurrent requests for the same
  volume share that one GET (single-flight), so a fleet costs the store one
  HEAD GET per volume per ``ttl``, however many workers poll;
* hence a commit made through any worker is served by every gateway at most
  ``ttl`` seconds after it finished.

A missing HEAD (no such volume) is not remembered: a volume created a moment
later is seen at once. Only a bounded number of volumes' HEADs are kept (LRU).

Workers keep their own writes consistent: after a worker writes or fails to
write a HEAD it reads that HEAD from the store directly for a while
(data/gatewaystore.py), so a commit retry never loops on a stale copy.
The clock is injectable so tests count GETs instead of sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from syncd.errors import NotFound, VolumeNotFound
from syncd.format.layout import Layout
from syncd.limits import SingleFlight
from syncd.store.base import ObjectStore

from .metrics import GatewayMetrics

HEADS_KEPT = 10_000


@dataclass(frozen=True)
class HeadCopy:
    data: bytes
    etag: str
    fetched: float  # clock() when the GET that produced it was sent


class HeadCache:
    def __init__(self, store: ObjectStore, prefix: str, ttl: float, metrics: GatewayMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.prefix, self.ttl, self.metrics, self.clock = store, prefix, ttl, metrics, clock
        self._copies: OrderedDict[tuple[str, str], HeadCopy] = OrderedDict()
        self._fetches: SingleFlight[tuple[str, str], HeadCopy] = SingleFlight()

    async def get(self, owner: str, volume: str) -> HeadCopy:
        """HEAD of ``owner/volume``, at most ``ttl`` seconds old; raises VolumeNotFound."""
        key = (owner, volume)
        copy = self._copies.get(key)
        if copy is not None and self.clock() - copy.fetched < self.ttl:
            self._copies.move_to_end(key)
            self.metrics.hits.labels("HEAD").inc()
            return copy
        return await self._fetches.do(key, lambda: self._fetch(owner, volume))

    async def _fetch(self, owner: str, volume: str) -> HeadCopy:
        self.metrics.misses.labels("HEAD").inc()
        self.metrics.origin_requests.inc()
        sent = self.clock()
        try:
            blob = await self.store.get(Layout(self.prefix, owner).head(volume))
        except NotFound as exc:
            self._copies.pop((owner, volume), None)
            raise VolumeNotFound(f"volume {volume!r} does not exist (owner {owner!r})") from exc
        self.metrics.origin_bytes.inc(len(blob.data))
        copy = HeadCopy(blob.data, blob.etag, sent)
        self._copies[(owner, volume)] = copy
        self._copies.move_to_end((owner, volume))
        while len(self._copies) > HEADS_KEPT:
            self._copies.popitem(last=False)
        return copy
