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


@command("agent", "run the worker sidecar: mount volumes under SYNCD_ROOT, serve SYNCD_SOCKET", _agent_args,
         creates=True)
async def _agent(args: argparse.Namespace, config: Config) -> Any:
    from syncd.agent.api import serve
    from syncd.agent.rootlock import RootLock
    logging.getLogger("syncd").setLevel(min(logging.getLogger().level, logging.INFO))

    def ready(agent: Agent) -> None:
        print(f"syncd agent: owner {config.owner}, root {config.root}, socket {config.socket}",
              file=sys.stderr, flush=True)

    lock = await asyncio.to_thread(RootLock.acquire, config.root)   # before anything is served or hydrated
    try:
        failed = await serve(config, WatchSettings(args.poll, args.debounce, args.max_delay, args.watch,
                                                   args.max_watches), ready)
    finally:
        lock.release()
    if failed:
        from syncd.errors import LocalIOError
        raise LocalIOError("could not flush: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return None


@command("status", "show this worker's agent: mounted volumes, pending writes, errors")
async def _status(args: argparse.Namespace, config: Config) -> Any:
    from syncd.sdk.volume import AgentClient
    status: dict[str, Any] = await asyncio.to_thread(AgentClient(config.socket, connect_wait=0).call,
                                                     "GET", "/v1/status")
    if args.json:
        return status
    lines = [f"agent pid {status['pid']}, owner {status['owner']}, root {status['root']}"]
    for m in status["mounts"]:
        state = "pending writes" if m["pending"] else "clean"
        lines.append(f"  {m['name']:<24} seq {m['seq']:<6} {state}"
                     + (f"  last error: {m['last_error']}" if m["last_error"] else ""))
    return lines
