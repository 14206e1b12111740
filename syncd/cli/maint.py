"""Maintenance commands: ``syncd volume prune`` and ``syncd volume check``.

``prune`` reads its retention from SYNCD_KEEP_SNAPSHOTS / SYNCD_KEEP_DAYS /
SYNCD_PRUNE_GRACE, and flags override them; with no retention at all it only
deletes garbage (objects no snapshot references, older than the grace
period). ``check`` exits 4 (integrity) with a report naming every problem.
"""

from __future__ import annotations

import argparse
from typing import Any

from syncd.cli.core import command, open_engine, volume_arg
from syncd.config import Config
from syncd.errors import IntegrityError


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("--keep-snapshots", type=int, metavar="N", help="keep the newest N snapshots")
    p.add_argument("--keep-days", type=float, metavar="D", help="keep snapshots younger than D days")
    p.add_argument("--grace", type=float, metavar="SECONDS",
                   help="never delete objects younger than this (default SYNCD_PRUNE_GRACE, 3600)")
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted")


@command("volume prune", "delete old snapshots and the chunks only they used", _prune_args)
async def _prune(args: argparse.Namespace, config: Config) -> Any:
    from syncd.maint.prune import Retention, prune
    changes = {k: v for k, v in (("keep_snapshots", args.keep_snapshots), ("keep_days", args.keep_days),
                                 ("prune_grace", args.grace)) if v is not None}
    config = config.replace(**changes)
    async with open_engine(config, use_cache=False) as engine:
        return await prune(engine, volume_arg(args), Retention.from_config(config), dry_run=args.dry_run)


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("--read-data", action="store_true", help="download and verify every referenced byte")


@command("volume check", "verify HEAD, every snapshot and every referenced object", _check_args)
async def _check(args: argparse.Namespace, config: Config) -> Any:
    from syncd.maint.check import check
    async with open_engine(config, use_cache=False) as engine:
        result = await check(engine, volume_arg(args), read_data=args.read_data)
    if not result.ok:
        raise IntegrityError(result.report())
    return result
