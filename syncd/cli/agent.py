"""``syncd agent``: run the sidecar in the foreground until SIGTERM (see agent.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any

from syncd.cli.core import command
from syncd.config import Config
from syncd.local.watchsettings import WatchSettings

if TYPE_CHECKING:
    from syncd.agent.service import Agent


def _agent_args(p: argparse.ArgumentParser) -> None:
    defaults = WatchSettings()
    p.add_argument("--poll", type=float, default=defaults.poll, help="seconds between change scans")
    p.add_argument("--debounce", type=float, default=defaults.debounce,
                   help="commit once the tree was quiet this long (seconds)")
    p.add_argument("--max-delay", type=float, default=defaults.max_delay,
                   help="commit a tree that keeps changing at least this often (seconds)")
    p.add_argument("--watch", choices=("auto", "poll"), default=defaults.mode,
                   help="change detection: inotify, else polling (auto), or always poll (see docs/AGENT.md)")
    p.add_argument("--max-watches", type=int, default=defaults.max_watches,
                   help="poll instead of inotify for a mount with more directories than this (0: kernel limit)")
    p.add_argument("--status-addr", type=_status_addr, metavar="HOST:PORT",
                   help="serve the status page (GET /status), /metrics and /healthz over HTTP here; "
                        "PORT alone binds loopback (default: off)")


def _status_addr(text: str) -> tuple[str, int]:
    from syncd.agent.api import parse_addr
    from syncd.errors import ConfigError
    try:
        return parse_addr(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


@command("agent", "run the worker sidecar: mount volumes under SYNCD_ROOT, serve SYNCD_SOCKET", _agent_args,
         creates=True)
async def _agent(args: argparse.Namespace, config: Config) -> Any:
    from syncd.agent.api import serve
    from syncd.agent.rootlock import RootLock
    logging.getLogger("syncd").setLevel(min(logging.getLogger().level, logging.INFO))

    def ready(agent: Agent) -> None:
        where = f", status {agent.status_url}/status" if agent.status_url else ""
        print(f"syncd agent: owner {config.owner}, root {config.root}, socket {config.socket}{where}",
              file=sys.stderr, flush=True)

    lock = await asyncio.to_thread(RootLock.acquire, config.root)   # before anything is served or hydrated
    try:
        settings = WatchSettings(args.poll, args.debounce, args.max_delay, args.watch, args.max_watches)
        failed = await serve(config, settings, ready, status_addr=args.status_addr)
    finally:
        lock.release()
    if failed:
        from syncd.errors import LocalIOError
        raise LocalIOError("could not flush: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return None


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", metavar="URL", help="show this gateway's status (its /status.json) instead")


async def _gateway_status(url: str, as_json: bool) -> Any:
    import json
    import urllib.error
    import urllib.request

    from gateway.status import render_text
    from syncd.errors import StoreError

    def fetch() -> Any:
        with urllib.request.urlopen(url.rstrip("/") + "/status.json", timeout=30) as resp:
            return json.loads(resp.read())
    try:
        doc = await asyncio.to_thread(fetch)
    except (OSError, ValueError) as exc:   # URLError and HTTPError are OSErrors
        raise StoreError(f"cannot read the status of the gateway at {url}: {exc}") from exc
    return doc if as_json else render_text(doc)


@command("status", "show this worker's agent: volumes and their mode, pending writes, last commit, "
         "write-back lag, errors, the cache and where bytes came from (--gateway URL: a gateway's)",
         _status_args)
async def _status(args: argparse.Namespace, config: Config) -> Any:
    if args.gateway:
        return await _gateway_status(args.gateway, args.json)
    from syncd.agent.status import render_text
    from syncd.sdk.volume import AgentClient
    status: dict[str, Any] = await asyncio.to_thread(AgentClient(config.socket, connect_wait=0).call,
                                                     "GET", "/v1/status")
    return status if args.json else render_text(status)
