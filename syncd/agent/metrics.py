"""syncd's own Prometheus metrics: where a worker's chunk bytes came from.

``ChunkFetcher.bytes_by_source`` already counts verified chunk bytes by source
(``cache``, ``gateway:<host:port>``, ``store``); :class:`FetchCollector`
exposes those counts, and each gateway source's request, failure and skip
counts, at scrape time, so nothing is counted twice and the fetch path stays
free of metrics code. Use :func:`render` for a one-shot text exposition, or
register a FetchCollector in the agent's registry.

=======================================  =========  ==========================================
metric                                   labels     meaning
=======================================  =========  ==========================================
syncd_fetch_bytes_total                  source     verified chunk bytes, by where they came from
syncd_gateway_client_requests_total      gateway    requests sent to a gateway
syncd_gateway_client_failures_total      gateway    requests that failed (down, slow, 5xx)
syncd_gateway_client_skipped_total       gateway    requests not sent: its breaker was open
=======================================  =========  ==========================================
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from syncd.data.fetch import ChunkFetcher
from syncd.data.gatewayclient import GatewaySource


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


def render(fetcher: ChunkFetcher) -> bytes:
    """The fetcher's metrics in the Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(FetchCollector(fetcher))
    return generate_latest(registry)
