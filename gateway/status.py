"""``GET /status`` of a gateway: what it cached, what it cost the store, whom it served and refused.

One document, :func:`report`, read from the gateway's own metric registry (so
the page and ``/metrics`` cannot disagree) plus the disk cache's size (read in
a thread) and each peer's breaker: cache size and hit ratio, origin bytes and
requests, bytes served and origin bytes per byte served, requests per owner,
peers and their health, refusals (401 no token, 403 another owner's token,
503 busy), uptime. ``/status`` renders it as HTML (no JavaScript, refreshed by
the browser; syncd/webpage.py), ``/status.json`` as JSON and ``syncd status
--gateway URL`` as text. Like ``/metrics`` and ``/healthz`` these need no token
and show no object; unlike them they name owners, so only to a client on
loopback (the gateway's own host, or ``kubectl port-forward``): anyone else
sees the per-owner requests as one total, withheld, as docs/SECURITY.md asks
of every token-less route. No metric names an owner (metrics.py).
"""

from __future__ import annotations

import os
import time
from typing import Any

from syncd import webpage as w

from .metrics import GatewayMetrics
from .service import GatewayService

REFUSED = ("401", "403", "503")


def _total(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in values.items() if n == name)


def _by(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in values.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def _peers(service: GatewayService) -> list[dict[str, Any]]:
    if service.peers is None:
        return []
    now = time.monotonic()
    rows = []
    for url, breaker in sorted(service.peers.breakers.items()):
        state = "up" if not breaker.delay else ("down" if now < breaker.open_until else "probing")
        rows.append({"url": url, "state": state, "trips": breaker.trips,
                     "retry_in": max(0.0, breaker.open_until - now) if breaker.delay else 0.0})
    return rows


def refresh_peers(metrics: GatewayMetrics, peers: list[dict[str, Any]]) -> None:
    for peer in peers:
        metrics.peer_up.labels(peer["url"]).set(1 if peer["state"] == "up" else 0)


WITHHELD = "(names withheld: not a loopback client)"


async def report(service: GatewayService, names: bool = True) -> dict[str, Any]:
    """The facts of the page; also sets the cache and peer gauges, so /metrics agrees.
    ``names`` False: the per-owner requests as one total under ``WITHHELD``."""
    metrics = service.metrics
    size, entries = await service.usage()
    metrics.cache_bytes.set(size)
    metrics.cache_entries.set(entries)
    peers = _peers(service)
    refresh_peers(metrics, peers)
    v = metrics.values()
    refusals = _by(v, "syncd_gateway_refusals_total", "code")
    return {"pid": os.getpid(), "started_at": metrics.started, "now": time.time(),
            "cache": {"bytes": size, "entries": entries,
                      "hits": _total(v, "syncd_gateway_cache_hits_total"),
                      "misses": _total(v, "syncd_gateway_cache_misses_total"),
                      "joins": _total(v, "syncd_gateway_singleflight_joins_total"),
                      "corrupt": _total(v, "syncd_gateway_cache_corrupt_total")},
            "origin": {"requests": _total(v, "syncd_gateway_origin_requests_total"),
                       "bytes": _total(v, "syncd_gateway_origin_bytes_total"),
                       "peer_fills": _total(v, "syncd_gateway_peer_fills_total"),
                       "peer_bytes": _total(v, "syncd_gateway_peer_bytes_total")},
            "served": {"bytes": _total(v, "syncd_gateway_served_bytes_total"),
                       "by_kind": _by(v, "syncd_gateway_served_bytes_total", "kind")},
            "owners": dict(metrics.owner_requests) if names or not metrics.owner_requests
            else {WITHHELD: sum(metrics.owner_requests.values())},
            "peers": peers,
            "refusals": {code: refusals.get(code, 0.0) for code in REFUSED}}


def _num(x: float) -> str:
    return f"{x:.0f}"


def render_html(doc: dict[str, Any]) -> str:
    cache, origin, served = doc["cache"], doc["origin"], doc["served"]
    now = float(doc["now"])
    summary = w.facts("gateway", [
        ("up", "uptime", w.duration(now - float(doc["started_at"]))), ("pid", "pid", doc["pid"]),
        ("cache size", "cache_bytes", w.size(cache["bytes"])), ("cache entries", "cache_entries", cache["entries"]),
        ("hit ratio", "hit_ratio", w.ratio(cache["hits"], cache["hits"] + cache["misses"])),
        ("hits / misses / joined", "hits_misses", f"{_num(cache['hits'])} / {_num(cache['misses'])} / "
                                                  f"{_num(cache['joins'])}"),
        ("origin requests", "origin_requests", _num(origin["requests"])),
        ("origin bytes", "origin_bytes", w.size(origin["bytes"])),
        ("bytes served", "served_bytes", w.size(served["bytes"])),
        ("origin bytes per byte served", "origin_per_served",
         "-" if not served["bytes"] else f"{origin['bytes'] / served['bytes']:.3f}"),
        ("filled from peers", "peer_fills", f"{_num(origin['peer_fills'])} ({w.size(origin['peer_bytes'])})")])
    owners = w.table("owners", ("owner", "requests"),
                     ([w.cell(o, "owner"), w.cell(_num(n), "requests", "num")] for o, n in sorted(doc["owners"].items())),
                     empty="no request yet")
    peers = w.table("peers", ("peer", "health", "breaker trips", "retry in"),
                    ([w.cell(p["url"], "peer"), w.cell(p["state"], "health", "ok" if p["state"] == "up" else "err"),
                      w.cell(p["trips"], "trips", "num"), w.cell(w.duration(p["retry_in"]), "retry_in", "num")]
                     for p in doc["peers"]), empty="no pool (--pool not given)")
    refusals = w.table("refusals", ("status", "meaning", "count"), (
        [w.cell(code, "code"), w.cell(meaning), w.cell(_num(doc["refusals"][code]), f"refused_{code}", "num")]
        for code, meaning in (("401", "no or unknown token"), ("403", "token of another owner"),
                              ("503", "busy: too many connections or requests"))))
    kinds = w.table("served", ("kind", "bytes"), ([w.cell(k, "kind"), w.cell(w.size(n), "bytes", "num")]
                                                  for k, n in sorted(served["by_kind"].items())), empty="nothing yet")
    return w.page("syncd-gateway", [("Cache and origin", summary), ("Requests by owner", owners),
                                    ("Bytes served by kind", kinds), ("Peers", peers), ("Refusals", refusals)])


def render_text(doc: dict[str, Any]) -> list[str]:
    cache, origin, served = doc["cache"], doc["origin"], doc["served"]
    per = "-" if not served["bytes"] else f"{origin['bytes'] / served['bytes']:.3f}"
    lines = [f"gateway pid {doc['pid']}, up {w.duration(float(doc['now']) - float(doc['started_at']))}",
             f"cache: {w.size(cache['bytes'])} in {cache['entries']} entries, hit ratio "
             f"{w.ratio(cache['hits'], cache['hits'] + cache['misses'])}",
             f"origin: {_num(origin['requests'])} requests, {w.size(origin['bytes'])}; served {w.size(served['bytes'])} "
             f"({per} origin bytes per byte served)",
             "owners: " + (", ".join(f"{o} {_num(n)}" for o, n in sorted(doc["owners"].items())) or "none yet"),
             "peers: " + (", ".join(f"{p['url']} {p['state']}" for p in doc["peers"]) or "no pool"),
             "refused: " + ", ".join(f"{code} {_num(n)}" for code, n in doc["refusals"].items())]
    return lines
