"""Volume commands: ``syncd volume create|ls|rm|info|log|upgrade``, ``put``, ``get``, ``restore``.

They talk to the bucket directly (no agent needed), as the owner SYNCD_OWNER.
Each returns a value that cli.py prints as text or, with ``--json``, as one
JSON object; errors map to the exit codes listed in cli.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from syncd.cli.core import SNAPSHOT_HELP, command, filling, open_engine, progress_for, volume_arg
from syncd.config import Config
from syncd.errors import ConfigError


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _volume(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")


def _create_args(p: argparse.ArgumentParser) -> None:
    _volume(p)
    p.add_argument("--exist-ok", action="store_true", help="succeed if it already exists")


@command("volume create", "create an empty volume", _create_args, creates=True)
async def _create(args: argparse.Namespace, config: Config) -> Any:
    from syncd.errors import PreconditionFailed
    name = volume_arg(args)
    async with open_engine(config) as engine:
        try:
            head, created = await engine.repo.create(name, exist_ok=args.exist_ok)
        except PreconditionFailed as exc:
            raise ConfigError(f"volume {name!r} already exists (use --exist-ok)") from exc
    return {"volume": name, "owner": config.owner, "created": created, "seq": head.seq}


@command("volume ls", "list the owner's volumes")
async def _ls(args: argparse.Namespace, config: Config) -> Any:
    async with open_engine(config) as engine:
        names = sorted(await engine.repo.names())
    return {"owner": config.owner, "volumes": names} if args.json else names


@command("volume info", "show a volume's latest snapshot: files, bytes, times", _volume)
async def _info(args: argparse.Namespace, config: Config) -> Any:
    name = volume_arg(args)
    async with open_engine(config) as engine:   # a v2 snapshot's header has the totals: no tree is read
        head = await engine.repo.head(name)
        snap = await engine.repo.header(name, head.snapshot) if head.snapshot else None
    entries = snap.entries.values() if snap else []
    stats = snap.stats if snap is not None and snap.stats is not None else None
    return {"volume": name, "owner": config.owner, "snapshot": head.snapshot or "(empty)", "seq": head.seq,
            "format": snap.format if snap else head.format,
            "files": stats.files if stats else sum(e.kind == "file" for e in entries),
            "dirs": stats.dirs if stats else sum(e.kind == "dir" for e in entries),
            "bytes": stats.bytes if stats else sum(e.size for e in entries), "created": _when(head.created),
            "updated": _when(head.updated)}


def _log_args(p: argparse.ArgumentParser) -> None:
    _volume(p)
    p.add_argument("-n", "--limit", type=int, default=20, help="at most this many snapshots (0: all)")


@command("volume log", "list a volume's snapshots, newest first", _log_args)
async def _log(args: argparse.Namespace, config: Config) -> Any:
    name = volume_arg(args)
    async with open_engine(config) as engine:
        history = await engine.repo.history(name, limit=args.limit or None, entries=False)
    rows = [{"snapshot": sid, "seq": s.seq, "time": _when(s.created), "writer": s.writer,
             "files": s.total_files, "bytes": s.total_bytes,
             "message": s.message} for sid, s in history]
    if args.json:
        return {"volume": name, "snapshots": rows}
    return [f"{r['seq']:>5}  {r['snapshot']}  {r['time']}  {r['files']:>6} files  {r['bytes']:>12} B  "
            f"{r['writer']}  {r['message']}" for r in rows]


def _rm_args(p: argparse.ArgumentParser) -> None:
    _volume(p)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


async def _confirm(name: str, owner: str) -> None:
    if not sys.stdin.isatty():
        raise ConfigError(f"refusing to delete volume {name!r} without --yes (no terminal to ask on)")
    answer = await asyncio.to_thread(
        input, f"Delete volume {name!r} of owner {owner!r} with all its snapshots and data? "
               f"Type the volume name to confirm: ")
    if answer.strip() != name:
        raise ConfigError("not confirmed; nothing was deleted")


@command("volume rm", "delete a volume, all its snapshots and data (asks unless --yes)", _rm_args)
async def _rm(args: argparse.Namespace, config: Config) -> Any:
    name = volume_arg(args)
    if not args.yes:
        await _confirm(name, config.owner)
    async with open_engine(config) as engine:
        removed = await engine.repo.delete(name)
    return {"volume": name, "deleted": True, "objects_removed": removed}


@command("volume upgrade", "move a format-1 or -2 volume to format 3 and index its chunks (no data copied)",
         _volume)
async def _upgrade(args: argparse.Namespace, config: Config) -> Any:
    from syncd.maint.reindex import index_snapshot
    name = volume_arg(args)
    async with open_engine(config) as engine:
        head, upgraded = await engine.repo.upgrade(name)
        indexed = await index_snapshot(engine, name, head.snapshot) if head.snapshot else 0
    return {"volume": name, "upgraded": upgraded, "snapshot": head.snapshot, "seq": head.seq, "format": 3,
            "index_objects": indexed}


def _put_args(p: argparse.ArgumentParser) -> None:
    _volume(p)
    p.add_argument("local", help="a local file or directory")
    p.add_argument("path", nargs="?", help="where in the volume (default: the local name)")


@command("put", "copy a local file or directory into a volume (creates the volume)", _put_args, creates=True)
async def _put(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.transfer import put
    name = volume_arg(args)
    async with open_engine(config) as engine:
        return await filling(engine, name, put(engine, name, Path(args.local), args.path, progress=progress_for(args)))


def _get_args(p: argparse.ArgumentParser) -> None:
    _volume(p)
    p.add_argument("path", help="a file or directory in the volume ('/' for everything)")
    p.add_argument("local", help="local destination")
    p.add_argument("--snapshot", help=SNAPSHOT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace local files that differ (default: refuse)")


@command("get", "copy a file or directory out of a volume (refuses to replace differing local files)", _get_args)
async def _get(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.refs import resolve
    from syncd.engine.transfer import get
    name = volume_arg(args)
    async with open_engine(config) as engine:
        return await get(engine, name, args.path, Path(args.local), await resolve(engine, name, args.snapshot),
                         progress=progress_for(args), overwrite=args.overwrite)


def _restore_args(p: argparse.ArgumentParser) -> None:
    _volume(p)
    p.add_argument("path", nargs="?", help="restore only this file or directory (default: everything)")
    p.add_argument("--snapshot", required=True,
                   help="the snapshot to restore from: its id, a unique id prefix or its seq ('volume log')")
    p.add_argument("-m", "--message", default="")


@command("restore", "commit a new snapshot whose content (at PATH) equals an old snapshot's", _restore_args)
async def _restore(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.refs import resolve
    from syncd.engine.restore import restore
    name = volume_arg(args)
    async with open_engine(config) as engine:
        snapshot = await resolve(engine, name, args.snapshot)
        assert snapshot is not None                      # --snapshot is required
        return await restore(engine, name, snapshot, args.path, args.message)
