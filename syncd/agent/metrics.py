"""syncd's own Prometheus metrics: where a worker's bytes came from, its cache, its commits.

Most of what the agent exports is read at scrape time from counters that exist
anyway: ``ChunkFetcher.bytes_by_source`` counts verified chunk bytes by source
(``cache``, ``gateway:<host:port>``, ``store``), each gateway source counts its
requests, failures and skips, the chunk cache counts hits and misses, and each
mount knows whether it has pending changes and since when. :class:`FetchCollector`
and :class:`AgentCollector` turn those into metric families when scraped, so
nothing is counted twice and the fetch path stays free of metrics code. Only
commit latency is recorded as it happens, in :class:`AgentMetrics`' histogram.
Labels are bounded: ``source`` and ``gateway`` by ``SYNCD_GATEWAY``, ``volume``
by the mounts of this worker.

=======================================  =========  ==========================================
metric                                   labels     meaning
=======================================  =========  ==========================================
syncd_fetch_bytes_total                  source     verified chunk bytes, by where they came from
syncd_gateway_client_requests_total      gateway    requests sent to a gateway
syncd_gateway_client_failures_total      gateway    requests that failed (down, slow, 5xx)
syncd_gateway_client_skipped_total       gateway    requests not sent: its breaker was open
syncd_cache_hits_total                              chunk cache lookups that found the chunk
syncd_cache_misses_total                            chunk cache lookups that did not
syncd_cache_bytes                                   bytes of the chunk cache on disk
syncd_cache_entries                                 entries in the chunk cache
syncd_commits_total                      outcome    commits of eager mounts (ok, error)
syncd_commit_seconds                                time a commit of an eager mount took
syncd_mounts                             mode       volumes mounted (eager, lazy, read-only)
syncd_pending_changes                    volume     1 while a mount has writes not committed yet
syncd_writeback_lag_seconds              volume     how long a mount's oldest uncommitted write waited
syncd_uptime_seconds                                seconds since the agent started
=======================================  =========  ==========================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncd.data.cache import CacheStats
from syncd.data.fetch import ChunkFetcher
from syncd.data.gatewayclient import GatewaySource

COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class FetchCollector(Collector):
    def __init__(self, fetcher: ChunkFetcher) -> None:
        self.fetcher = fetcher

    def collect(self) -> Iterator[Metric]:
        by_source = CounterMetricFamily("syncd_fetch_bytes", "Verified chunk bytes by source",
                                        labels=["source"])
        for name, count in sorted(self.fetcher.bytes_by_source.items()):
            by_source.add_metric([name], count)
        yield by_source
        gateways = [s for s in self.fetcher.sources if isinstance(s, GatewaySource)]
        for name, help_text in (("requests", "Requests sent to a gateway"),
                                ("failures", "Gateway requests that failed"),
                                ("skipped", "Gateway requests not sent while its breaker was open")):
            family = CounterMetricFamily(f"syncd_gateway_client_{name}", help_text, labels=["gateway"])
            for gateway in gateways:
                family.add_metric([gateway.public_url], getattr(gateway, name))
            yield family


@dataclass
class MountRow:
    """What the metrics need of one mount (the agent builds these; see status.py)."""
    name: str
    mode: str                 # eager, lazy, read-only
    pending: bool
    lag: float | None         # seconds the oldest uncommitted write has waited


@dataclass
class Snapshot:
    """The facts read at scrape time; ``usage`` was read off the event loop by the caller."""
    stats: CacheStats | None
    usage: tuple[int, int]
    mounts: list[MountRow] = field(default_factory=list)


class AgentCollector(Collector):
    def __init__(self, read: Callable[[], Snapshot], started: float) -> None:
        self.read, self.started = read, started

    def collect(self) -> Iterator[Metric]:
        facts = self.read()
        stats = facts.stats or CacheStats()
        yield CounterMetricFamily("syncd_cache_hits", "Chunk cache lookups that found the chunk", stats.hits)
        yield CounterMetricFamily("syncd_cache_misses", "Chunk cache lookups that did not", stats.misses)
        yield GaugeMetricFamily("syncd_cache_bytes", "Bytes of the chunk cache on disk", facts.usage[0])
        yield GaugeMetricFamily("syncd_cache_entries", "Entries in the chunk cache", facts.usage[1])
        mounts = GaugeMetricFamily("syncd_mounts", "Volumes mounted on this worker", labels=["mode"])
        for mode in ("eager", "lazy", "read-only"):
            mounts.add_metric([mode], sum(1 for m in facts.mounts if m.mode == mode))
        yield mounts
        pending = GaugeMetricFamily("syncd_pending_changes", "1 while a mount has writes not committed yet",
                                    labels=["volume"])
        lag = GaugeMetricFamily("syncd_writeback_lag_seconds",
                                "Seconds the oldest uncommitted write of a mount has waited", labels=["volume"])
        for m in facts.mounts:
            if m.mode != "read-only":
                pending.add_metric([m.name], int(m.pending))
                lag.add_metric([m.name], m.lag or 0.0)
        yield pending
        yield lag
        yield GaugeMetricFamily("syncd_uptime_seconds", "Seconds since the agent started",
                                time.time() - self.started)


class AgentMetrics:
    """The agent's registry: commit latency recorded live, the rest collected at scrape time."""

    def __init__(self, fetcher: ChunkFetcher, read: Callable[[], Snapshot], started: float) -> None:
        r = self.registry = CollectorRegistry()
        r.register(FetchCollector(fetcher))
        r.register(AgentCollector(read, started))
        self.commits = Counter("syncd_commits", "Commits of eager mounts", ["outcome"], registry=r)
        self.commit_seconds = Histogram("syncd_commit_seconds", "Time a commit of an eager mount took",
                                        buckets=COMMIT_BUCKETS, registry=r)

    def committed(self, seconds: float, ok: bool) -> None:
        self.commits.labels("ok" if ok else "error").inc()
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def render(fetcher: ChunkFetcher) -> bytes:
    """The fetcher's metrics alone in the Prometheus text format (a process without an agent)."""
    registry = CollectorRegistry()
    registry.register(FetchCollector(fetcher))
    return generate_latest(registry)
