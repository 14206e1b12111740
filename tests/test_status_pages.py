"""The status pages in a real browser: the agent's and the gateway's ``GET /status`` (issue 23).

A gateway process serves a hydrate to an agent process started with
``--status-addr``; headless Chromium (Debian's ``chromium``; ``scripts/test.sh``
installs it where it can) loads both pages, and the test reads the rendered DOM
by the ``data-field`` names the pages carry (syncd/webpage.py). Each page's
screenshot is kept under the test's tmp dir, and its path printed (``-s``).
``syncd status`` and ``/metrics`` on the status address are checked against the
same run. Skips, saying why, where no Chromium is installed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.store.devserver import free_port
from syncd.webpage import REFRESH

from .agentutil import Agents, env_for, wait_for
from .gatewayutil import commit_tree, gateway_process, metric, through
from .mountutil import fuse_missing

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium installed (Debian: apt-get install chromium; scripts/test.sh does it as root)")


def browse(url: str, screenshot: Path) -> str:
    """The DOM Chromium rendered for ``url``; a screenshot of it goes to ``screenshot``."""
    browser = _chromium()
    with tempfile.TemporaryDirectory() as profile:
        base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = subprocess.run([*base, f"--screenshot={screenshot}", "--window-size=1280,900", url],
                              capture_output=True, text=True, timeout=120)
        assert shot.returncode == 0 and screenshot.stat().st_size > 0, shot.stderr[-2000:]
    print(f"screenshot of {url}: {screenshot}")
    return dom.stdout


class Fields(HTMLParser):
    """``rows[table id]``: one dict per table row, data-field -> text; also whether a script is present."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[dict[str, str]]] = {}
        self.scripts = 0
        self.refresh: str | None = None
        self._table: str | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a.get("content")
        if tag == "table":
            self._table = a.get("id") or ""
            self.rows.setdefault(self._table, [])
        if tag == "tr" and self._table is not None:
            self.rows[self._table].append({})
        if tag == "td" and a.get("data-field"):
            self._field = a["data-field"]
            if self._table is not None and self.rows[self._table]:
                self.rows[self._table][-1][self._field] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._field = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._field is not None and self._table is not None and self.rows[self._table]:
            self.rows[self._table][-1][self._field] += data

    def table(self, table_id: str) -> list[dict[str, str]]:
        return [r for r in self.rows.get(table_id, []) if r]

    def fact(self, table_id: str, field: str) -> str:
        return next(r[field] for r in self.table(table_id) if field in r)


def parse(dom: str) -> Fields:
    fields = Fields()
    fields.feed(dom)
    return fields


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def test_status_pages_in_headless_chromium(config: Config, agents: Agents, tmp_path: Path) -> None:
    _chromium()
    snapshot, _ = asyncio.run(commit_tree(config, tmp_path / "src", small_files=12, large_size=300_000))
    gw_port, dead_peer = free_port(), f"http://127.0.0.1:{free_port()}"   # nothing listens on the peer's port
    me = f"http://127.0.0.1:{gw_port}"
    with gateway_process(config, tmp_path, port=gw_port, extra=("--pool", f"{me},{dead_peer}", "--self-url", me)) \
            as (_, gateway_url):
        worker = through(config, gateway_url)
        port = free_port()
        # no write-back while the page is read: a write stays pending, with its lag, until committed
        agent = agents.start(worker, "--status-addr", f"127.0.0.1:{port}", "--debounce", "600", "--max-delay", "600")
        mounted = agent.client.call("POST", "/v1/volumes/vol/mount", {})
        assert mounted["snapshot"] == snapshot
        agent.client.call("POST", "/v1/volumes/vol/mount", {"read_only": True})
        lazy = fuse_missing() is None
        if lazy:
            agent.client.call("POST", "/v1/volumes/vol2/mount", {"mode": "lazy"})
        (Path(mounted["path"]) / "committed.txt").write_text("one commit, so the page has a last commit\n")
        committed = agent.client.call("POST", "/v1/volumes/vol/commit", {"message": "status page"})
        (Path(mounted["path"]) / "pending.txt").write_text("written after it: pending, with a lag\n")
        wait_for(lambda: agent.mount_status("vol")["pending"], 30, "the write to be seen as pending")
        base = f"http://127.0.0.1:{port}"
        assert f"status {base}/status" in agent.log()

        page = parse(browse(f"{base}/status", tmp_path / "agent-status.png"))
        assert page.scripts == 0 and page.refresh == str(REFRESH)        # reloads itself, no JavaScript
        rows = {(r["name"], r["mode"]): r for r in page.table("mounts")}
        eager, view = rows[("vol", "eager")], rows[("vol", "read-only")]
        assert eager["snapshot"] == committed["snapshot"] and eager["last_error"] == "none"
        assert eager["pending"] == "yes" and re.fullmatch(r"\d+ s", eager["write_back_lag"]), eager
        assert re.fullmatch(r"\d\d:\d\d:\d\d UTC \(\d+ s ago\)", eager["last_commit"]), eager
        assert eager["path"].endswith("/vol") and eager["seq"] == str(committed["seq"])
        assert view["snapshot"] == snapshot and view["pending"] == "no"
        if lazy:
            assert rows[("vol2", "lazy")]["pending"] == "no"
        sources = {r["source"]: r["bytes"] for r in page.table("sources")}
        gateway_source = f"gateway:{gateway_url.removeprefix('http://')}"
        assert gateway_source in sources and sources[gateway_source] != "0 B", sources
        assert page.fact("cache", "hit_ratio").endswith("%") or page.fact("cache", "hit_ratio") == "-"
        assert page.fact("cache", "cache_entries").isdigit() and int(page.fact("cache", "cache_entries")) > 0
        assert page.fact("cache", "cache_bytes").endswith("iB")
        assert page.fact("agent", "owner") == config.owner

        gw = parse(browse(f"{gateway_url}/status", tmp_path / "gateway-status.png"))
        assert gw.scripts == 0 and gw.refresh is not None
        assert gw.fact("gateway", "origin_requests") != "0"
        assert gw.fact("gateway", "served_bytes") != "0 B"
        assert gw.fact("gateway", "hit_ratio").endswith("%")
        assert {r["owner"]: int(r["requests"]) for r in gw.table("owners")}[config.owner] > 0
        assert {r["code"] for r in gw.table("refusals")} == {"401", "403", "503"}
        assert gw.fact("gateway", "uptime").endswith(" s") or "min" in gw.fact("gateway", "uptime")
        peers = gw.table("peers")           # the dead peer was asked on the first miss, and is down
        assert [p["peer"] for p in peers] == [dead_peer], peers
        assert peers[0]["health"] in ("down", "probing") and int(peers[0]["trips"]) >= 1, peers

        done = subprocess.run([sys.executable, "-m", "syncd", "status"], env=env_for(worker),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "vol" in done.stdout and "eager" in done.stdout and "read-only" in done.stdout
        assert gateway_source in done.stdout and "hit ratio" in done.stdout
        done = subprocess.run([sys.executable, "-m", "syncd", "status", "--gateway", gateway_url],
                              env=env_for(worker), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"{config.owner} " in done.stdout and "origin:" in done.stdout

        text = get(f"{base}/metrics")
        assert metric(text, "syncd_fetch_bytes_total", source=gateway_source) > 0
        assert metric(text, "syncd_mounts", mode="eager") == 1
        assert metric(text, "syncd_cache_entries") > 0
        assert get(f"{base}/healthz") == "ok\n"
        assert json.loads(get(f"{base}/status.json"))["mounts"][0]["mode"] == "eager"
        assert agent.terminate() == 0


def test_status_addr_is_loopback_unless_told_and_rejects_a_bad_address() -> None:
    from syncd.agent.api import parse_addr
    from syncd.errors import ConfigError
    assert parse_addr("9480") == ("127.0.0.1", 9480)
    assert parse_addr(":9480") == ("127.0.0.1", 9480)
    assert parse_addr("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_addr("[::1]:9480") == ("::1", 9480)
    for bad in ("", "host:", "host:99999", "x"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_addr(bad)


def test_the_gateway_page_names_owners_only_to_a_loopback_client() -> None:
    from gateway.app import _loopback
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("127.8.0.2")
    assert not any(_loopback(r) for r in ("10.0.0.7", "192.168.1.2", "2001:db8::1", "", None, "unix"))
