"""``deploy/grafana/syncd.json`` queries only metrics the agent and the gateway export (issue 23).

The names are read from the live processes: a ``syncd-gateway`` serves a
hydrate to a ``syncd agent --status-addr`` that also commits once, then both
``/metrics`` are scraped. Every metric name in every panel query must be a
sample name one of them exposes (a counter ``x`` exposes ``x_total``, a
histogram ``x_bucket``, ``x_sum`` and ``x_count``), and every label a query
selects on or groups by must be one of that metric's labels where the run
produced a sample of it. Prometheus adds ``instance`` and ``job`` itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from syncd.config import Config
from syncd.store.devserver import free_port

from .agentutil import Agents
from .gatewayutil import commit_tree, gateway_process, through

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "syncd.json"
SCRAPE_LABELS = {"instance", "job", "le"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "untyped": ("",)}
PROMQL_WORDS = {"sum", "min", "max", "avg", "count", "by", "without", "rate", "increase", "irate",
                "histogram_quantile", "label_values", "le", "on", "ignoring", "group_left", "group_right"}


def exported(text: str) -> dict[str, set[str]]:
    """Every sample name the exposition ``text`` can carry -> the label names seen on it."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def queries(dashboard: dict[str, object]) -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(dashboard.get("panels"))
    return found


def selectors(expr: str) -> list[tuple[str, set[str], set[str]]]:
    """(metric, labels selected on, labels grouped by in the aggregation around it) per metric in ``expr``."""
    out = []
    grouped = {g.strip() for groups in re.findall(r"\bby \(([^)]*)\)", expr) for g in groups.split(",") if g.strip()}
    for match in re.finditer(r"\b(syncd_[a-z0-9_]+)(\{([^}]*)\})?", expr):
        labels = {part.split("=")[0].rstrip("!~").strip() for part in (match.group(3) or "").split(",") if part}
        out.append((match.group(1), labels, grouped))
    return out


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for panel in panels:
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    wanted = {"throughput by source", "hit ratio", "origin bytes per byte served", "commit latency",
              "write-back lag", "errors"}
    titles = " | ".join(p["title"].lower() for p in panels)
    assert all(w in titles for w in wanted), titles
    for expr in queries(dash):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_every_metric_the_dashboard_queries_is_exported(config: Config, agents: Agents, tmp_path: Path) -> None:
    asyncio.run(commit_tree(config, tmp_path / "src", small_files=6, large_size=200_000))
    with gateway_process(config, tmp_path) as (_, gateway_url):
        port = free_port()
        agent = agents.start(through(config, gateway_url), "--status-addr", f"127.0.0.1:{port}")
        mounted = agent.client.call("POST", "/v1/volumes/vol/mount", {})
        (Path(mounted["path"]) / "new.txt").write_text("one commit, so commit latency has a sample\n")
        agent.client.call("POST", "/v1/volumes/vol/commit", {"message": "grafana test"})
        names = exported(get(f"http://127.0.0.1:{port}/metrics"))
        for name, labels in exported(get(f"{gateway_url}/metrics")).items():
            names.setdefault(name, set()).update(labels)
        assert agent.terminate() == 0

    dash = json.loads(DASHBOARD.read_text())
    used = [(expr, *sel) for expr in queries(dash) for sel in selectors(expr)]
    assert {name for _, name, _, _ in used} >= {"syncd_fetch_bytes_total", "syncd_commit_seconds_bucket",
                                                "syncd_writeback_lag_seconds", "syncd_gateway_origin_bytes_total"}
    missing = sorted({name for _, name, _, _ in used if name not in names})
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
    for expr, name, selected, grouped in used:
        if not names[name]:
            continue   # no sample of it in this run: its labels cannot be read off the wire
        unknown = selected - SCRAPE_LABELS - names[name]
        assert not unknown, f"{expr}: {name} has no label(s) {sorted(unknown)} (it has {sorted(names[name])})"
        in_expr = set().union(*(names[n] for e, n, _, _ in used if e == expr))
        assert grouped - SCRAPE_LABELS <= in_expr, f"{expr}: grouped by a label none of its metrics has"
    words = {w for expr in queries(dash) for w in re.findall(r"\b[a-z_]+\b(?=\s*\()", expr)}
    assert words <= PROMQL_WORDS, words - PROMQL_WORDS
