"""``syncd gateway warm VOLUME``: prefetch a snapshot into the gateways before a fan-out.

The command reads the snapshot (latest, or ``--snapshot``) itself, lists its
objects (chunks of large files and packs of small ones) and places each on the
gateway that rendezvous hashing ranks first for it (gatewayclient.py), exactly
where workers will ask for it. Each gateway then gets one ``POST .../warm``
with its share of ids and fetches the ones it lacks from the store, a few at a
time. Gateways are warmed concurrently; the result sums their answers, and a
gateway that fails is reported (exit code 8) after the others finished.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from typing import Any

from syncd.cli.core import command, open_engine, volume_arg
from syncd.config import Config
from syncd.errors import ConfigError


def _warm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("--snapshot", help="a snapshot id instead of the latest")


def plan_warm(gateways: tuple[str, ...], chunks: set[str], packs: set[str]) -> dict[str, dict[str, list[str]]]:
    """For each gateway, the chunk and pack ids it ranks first for. Pure."""
    from syncd.data.gatewayclient import rendezvous_order
    plan: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"chunks": [], "packs": []})
    for kind, ids in (("chunks", chunks), ("packs", packs)):
        for object_id in sorted(ids):
            plan[rendezvous_order(gateways, object_id)[0]][kind].append(object_id)
    return dict(plan)


@command("gateway warm", "prefetch a volume snapshot into the gateways (SYNCD_GATEWAY)", _warm_args)
async def _warm(args: argparse.Namespace, config: Config) -> Any:
    # imported here: gatewayclient pulls in aiohttp, ~0.25 s that every other command would pay at start-up
    from syncd.data.gatewayclient import GatewayUnavailable, warm
    if not config.gateways:
        raise ConfigError("SYNCD_GATEWAY is not set: no gateways to warm")
    volume = volume_arg(args)
    async with open_engine(config, use_cache=False) as engine:
        sid = args.snapshot or (await engine.repo.head(volume)).snapshot
        refs = [] if sid is None else [
            r for e in (await engine.repo.snapshot(volume, sid)).entries.values() for r in e.chunks]
    plan = plan_warm(config.gateways, {r.id for r in refs if r.pack is None},
                     {r.pack for r in refs if r.pack is not None})
    answers = await asyncio.gather(*(warm(url, config.gateway_token, config.owner, volume,
                                          {"snapshot": sid, **share}) for url, share in plan.items()),
                                   return_exceptions=True)
    total: dict[str, Any] = {"volume": volume, "snapshot": sid, "objects": 0, "cached": 0, "fetched": 0,
                             "bytes_fetched": 0, "failed": [], "gateways": {}}
    errors = []
    for url, answer in zip(plan, answers):
        if isinstance(answer, BaseException):
            errors.append(str(answer))  # names the gateway already
            continue
        total["gateways"][url] = answer
        for key in ("objects", "cached", "fetched", "bytes_fetched"):
            total[key] += answer.get(key, 0)
        total["failed"] += answer.get("failed", [])
    if errors:
        raise GatewayUnavailable("; ".join(errors))
    return total
