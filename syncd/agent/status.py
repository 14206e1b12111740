"""What an operator sees of one worker's agent: ``GET /status`` (HTML) and ``syncd status`` (text).

Both are views of one document, the agent's ``/v1/status`` JSON (service.py
``Agent.status()``, after ``Agent.refresh()`` asked the lazy mount processes
and read the cache's size off the event loop): so the page in a browser, the
terminal and a script reading JSON never disagree. Per mount: its name, mode
(eager, lazy or read-only), snapshot, whether changes are pending, the last
commit this agent made of it and how long ago, the write-back lag (how long
the oldest uncommitted write has waited) and the last error; then the chunk
cache (bytes, entries, hit ratio) and where chunk bytes came from (cache, each
gateway, the store).

The page is served only on ``syncd agent --status-addr HOST:PORT`` (off by
default, loopback unless a host is named): beside ``/status`` that listener
answers ``/status.json``, ``/metrics`` (for Prometheus, which cannot scrape the
agent's Unix socket) and ``/healthz`` (a readiness probe), all read-only.
"""

from __future__ import annotations

import time
from typing import Any

from syncd import webpage as w


def _mode(m: dict[str, Any]) -> str:
    return str(m.get("mode") or ("read-only" if m.get("read_only") else "eager"))


def _mount_cells(m: dict[str, Any], now: float) -> list[str]:
    pending = m.get("pending")
    error = m.get("last_error")
    return [w.cell(m.get("name"), "name"), w.cell(_mode(m), "mode"), w.cell(m.get("snapshot") or "(empty)", "snapshot"),
            w.cell(m.get("seq"), "seq", "num"),
            w.cell("yes" if pending else "no", "pending", "err" if pending else "ok"),
            w.cell(w.ago(m.get("last_commit_at"), now), "last_commit"),
            w.cell(w.duration(m.get("write_back_lag")), "write_back_lag", "num"),
            w.cell(error or "none", "last_error", "err" if error else "muted"), w.cell(m.get("path"), "path")]


def _view_cells(v: dict[str, Any], now: float) -> list[str]:
    return [w.cell(v.get("name"), "name"), w.cell("read-only", "mode"), w.cell(v.get("snapshot") or "(empty)", "snapshot"),
            w.cell(v.get("seq"), "seq", "num"), w.cell("no", "pending", "ok"),
            w.cell("never (a view is not committed)", "last_commit"), w.cell("-", "write_back_lag", "num"),
            w.cell("none", "last_error", "muted"), w.cell(v.get("path"), "path")]


def hit_ratio(cache: dict[str, Any]) -> str:
    hits, misses = int(cache.get("hits", 0)), int(cache.get("misses", 0))
    return w.ratio(hits, hits + misses)


def render_html(status: dict[str, Any]) -> str:
    now = float(status.get("now") or time.time())
    mounts = [_mount_cells(m, now) for m in status["mounts"]] + [_view_cells(v, now) for v in status.get("views", [])]
    cache = status.get("cache", {})
    sources = status.get("sources", {})
    total = sum(sources.values())
    source_rows = [[w.cell(name, "source"), w.cell(w.size(n), "bytes", "num"), w.cell(w.ratio(n, total), "share", "num")]
                   for name, n in sorted(sources.items())]
    agent = w.facts("agent", [("owner", "owner", status["owner"]), ("root", "root", status["root"]),
                              ("pid", "pid", status["pid"]),
                              ("up", "uptime", w.duration(now - float(status.get("started_at", now)))),
                              ("gateways", "gateways", ", ".join(status.get("gateways", [])) or "none")])
    cache_table = w.facts("cache", [
        ("size", "cache_bytes", w.size(cache.get("bytes", 0)) if cache.get("enabled", True) else "disabled"),
        ("entries", "cache_entries", cache.get("entries", 0)),
        ("hit ratio", "hit_ratio", hit_ratio(cache)),
        ("hits / misses", "hits_misses", f"{cache.get('hits', 0)} / {cache.get('misses', 0)}")])
    headers = ("volume", "mode", "snapshot", "seq", "pending", "last commit", "write-back lag", "last error", "path")
    return w.page(f"syncd agent: {status['owner']}", [
        ("Agent", agent),
        ("Volumes", w.table("mounts", headers, mounts, empty="no volume is mounted")),
        ("Chunk cache", cache_table),
        ("Where chunk bytes came from", w.table("sources", ("source", "bytes", "share"), source_rows,
                                                 empty="nothing read yet"))])


def render_text(status: dict[str, Any]) -> list[str]:
    """``syncd status``: the same facts as the page, one line each."""
    now = float(status.get("now") or time.time())
    cache = status.get("cache", {})
    lines = [f"agent pid {status['pid']}, owner {status['owner']}, root {status['root']}, "
             f"up {w.duration(now - float(status.get('started_at', now)))}"]
    rows = list(status["mounts"]) + list(status.get("views", []))
    if not rows:
        lines.append("  no volume is mounted")
    for m in rows:
        mode = _mode(m)
        state = "pending writes" if m.get("pending") else "clean"
        line = (f"  {m['name']:<24} {mode:<9} seq {m.get('seq')!s:<6} {state:<14} "
                f"snapshot {(m.get('snapshot') or '(empty)')[:12]}")
        if mode != "read-only":
            line += f"  last commit {w.ago(m.get('last_commit_at'), now)}"
            if m.get("pending"):
                line += f"  write-back lag {w.duration(m.get('write_back_lag'))}"
        if m.get("last_error"):
            line += f"  last error: {m['last_error']}"
        lines.append(line)
    lines.append(f"cache: {w.size(cache.get('bytes', 0))} in {cache.get('entries', 0)} entries, "
                 f"hit ratio {hit_ratio(cache)} ({cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses)")
    sources = status.get("sources", {})
    lines.append("bytes from: " + (", ".join(f"{name} {w.size(n)}" for name, n in sorted(sources.items()))
                                   or "nothing read yet"))
    return lines
