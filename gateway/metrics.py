"""The gateway's Prometheus metrics, in a registry of its own.

Each :class:`GatewayMetrics` has its own ``CollectorRegistry`` (not the global
one), so several gateways can live in one process (tests) without clashing.
``GET /metrics`` renders it in the text exposition format.

=======================================  =========  ==========================================
metric                                   labels     meaning
=======================================  =========  ==========================================
syncd_gateway_requests_total             kind,code  object and HEAD requests answered, by status code
syncd_gateway_cache_hits_total           kind       objects served from the disk cache
syncd_gateway_cache_misses_total         kind       objects that started an origin fetch
syncd_gateway_singleflight_joins_total   kind       requests that joined a fetch in flight
syncd_gateway_cache_corrupt_total                   cached objects that failed verification
syncd_gateway_origin_requests_total                 GETs sent to the object store
syncd_gateway_origin_bytes_total                    bytes received from the object store
syncd_gateway_served_bytes_total         kind       body bytes sent to clients
syncd_gateway_sendfile_bytes_total                  of those, sent by sendfile (cache files, spooled flights)
syncd_gateway_relayed_ranges_total                  ranges of large objects relayed from the store
syncd_gateway_peer_fills_total                      misses filled from another gateway's cache
syncd_gateway_peer_bytes_total                      bytes received from other gateways
syncd_gateway_peer_served_total                     objects served to other gateways (cache-only)
syncd_gateway_inflight_fetches                      origin fetches in progress
syncd_gateway_request_seconds            kind       time to answer an object request
syncd_gateway_refusals_total             code       requests refused: 401 no token, 403 other owner, 503 busy
syncd_gateway_cache_bytes                           bytes of the disk cache (read when scraped)
syncd_gateway_cache_entries                         objects in the disk cache (read when scraped)
syncd_gateway_peer_up                    peer       1 while a peer's breaker is closed (--pool)
syncd_gateway_uptime_seconds                        seconds since the gateway started
=======================================  =========  ==========================================

No metric carries an owner or volume name: ``/metrics`` needs no token
(docs/SECURITY.md). Requests per owner are counted in ``owner_requests``, a
plain dict outside the registry, shown only by ``/status`` to a loopback
client (status.py); it names at most ``MAX_OWNERS`` owners, the first seen,
and counts the rest as ``(other)``: with ``--no-auth`` a client names any
owner it likes, and an entry per name would grow without bound.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MAX_OWNERS = 256
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("syncd_gateway_requests", "Object requests answered",
                                ["kind", "code"], registry=r)
        self.hits = Counter("syncd_gateway_cache_hits", "Objects served from the cache", ["kind"], registry=r)
        self.misses = Counter("syncd_gateway_cache_misses", "Objects fetched from the store",
                              ["kind"], registry=r)
        self.joins = Counter("syncd_gateway_singleflight_joins", "Requests that joined an origin fetch",
                             ["kind"], registry=r)
        self.corrupt = Counter("syncd_gateway_cache_corrupt", "Cached objects that failed verification",
                               registry=r)
        self.origin_requests = Counter("syncd_gateway_origin_requests", "GETs sent to the object store",
                                       registry=r)
        self.origin_bytes = Counter("syncd_gateway_origin_bytes", "Bytes received from the object store",
                                    registry=r)
        self.served_bytes = Counter("syncd_gateway_served_bytes", "Body bytes sent to clients",
                                    ["kind"], registry=r)
        self.sendfile_bytes = Counter("syncd_gateway_sendfile_bytes",
                                      "Bytes sent by sendfile (cache files, spooled flights)",
                                      registry=r)
        self.relayed = Counter("syncd_gateway_relayed_ranges", "Ranges of large objects relayed from the store",
                               registry=r)
        self.peer_fills = Counter("syncd_gateway_peer_fills", "Misses filled from another gateway's cache",
                                  registry=r)
        self.peer_bytes = Counter("syncd_gateway_peer_bytes", "Bytes received from other gateways", registry=r)
        self.peer_served = Counter("syncd_gateway_peer_served", "Objects served to other gateways",
                                   registry=r)
        self.inflight = Gauge("syncd_gateway_inflight_fetches", "Origin fetches in progress", registry=r)
        self.latency = Histogram("syncd_gateway_request_seconds", "Time to answer an object request",
                                 ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.owner_requests: dict[str, int] = {}   # not exported: see the module docstring
        self.refusals = Counter("syncd_gateway_refusals", "Requests refused (401, 403, 503)", ["code"],
                                registry=r)
        self.cache_bytes = Gauge("syncd_gateway_cache_bytes", "Bytes of the disk cache", registry=r)
        self.cache_entries = Gauge("syncd_gateway_cache_entries", "Objects in the disk cache", registry=r)
        self.peer_up = Gauge("syncd_gateway_peer_up", "1 while a peer's breaker is closed", ["peer"], registry=r)
        self.started = time.time()
        Gauge("syncd_gateway_uptime_seconds", "Seconds since the gateway started",
              registry=r).set_function(lambda: time.time() - self.started)

    def owner(self, owner: str) -> None:
        """Count one request let through for ``owner`` (bounded: see the module docstring)."""
        named = owner in self.owner_requests or len(self.owner_requests) < MAX_OWNERS
        key = owner if named else "(other)"
        self.owner_requests[key] = self.owner_requests.get(key, 0) + 1

    def values(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample now, keyed by (name, sorted labels): what /status reads."""
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in self.registry.collect() for sample in family.samples}

    def render(self) -> bytes:
        return generate_latest(self.registry)
