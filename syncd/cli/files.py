"""File commands without a mount: ``syncd ls|cat|rm|cp|mv|diff`` and ``syncd volume rename``.

Each reads or edits the volume's snapshots in the bucket directly (engine/edit.py):
nothing is hydrated, no agent is needed. ``rm``, ``cp`` and ``mv`` make one new
snapshot each through the conditional HEAD advance, so they never lose a
concurrent writer's work; ``cp`` and ``mv`` copy entries only (the chunks are
shared). Like ``cp`` and ``mv`` on a local disk, a destination that is an
existing directory (or ends in ``/``) receives the source under its own name.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import stat
import sys
import time
from typing import Any

from syncd.cli.core import SNAPSHOT_HELP, command, open_engine, volume_arg
from syncd.config import Config


def _kind_char(kind: str) -> str:
    return {"dir": "d", "symlink": "l"}.get(kind, "-")


def _row(entry: Any, root: str) -> dict[str, Any]:
    return {"path": entry.path, "name": posixpath.relpath(entry.path, root) if root else entry.path,
            "type": entry.kind, "size": entry.size, "mode": entry.mode, "mtime": entry.mtime_ns / 1e9,
            **({"target": entry.target} if entry.kind == "symlink" else {})}


def _ls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("path", nargs="?", default="", help="a directory or file in the volume (default: /)")
    p.add_argument("-l", "--long", action="store_true", help="type, mode, size, modification time")
    p.add_argument("-R", "--recursive", action="store_true", help="everything below PATH")
    p.add_argument("--snapshot", help=SNAPSHOT_HELP)


@command("ls", "list a directory of a volume (no mount needed)", _ls_args)
async def _ls(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.edit import listing, normalize_path
    from syncd.engine.refs import resolve
    name, root = volume_arg(args), normalize_path(args.path)
    async with open_engine(config, use_cache=False) as engine:
        t, top, entries = await listing(engine, name, root, args.recursive, await resolve(engine, name, args.snapshot))
    base = root if top.kind == "dir" else posixpath.dirname(root)
    rows = [_row(e, base) for e in entries]
    if args.json:
        return {"volume": name, "path": root or "/", "snapshot": t.snapshot, "entries": rows}
    if not args.long:
        return [r["name"] + ("/" if r["type"] == "dir" else "") for r in rows]
    return [f"{_kind_char(r['type'])}{stat.filemode(r['mode'])[1:]} {r['size']:>12} "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['mtime']))} {r['name']}"
            + (f" -> {r['target']}" if r["type"] == "symlink" else "") for r in rows]


def _cat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("path")
    p.add_argument("--snapshot", help=SNAPSHOT_HELP)


@command("cat", "write a file of a volume to stdout, streamed and verified", _cat_args)
async def _cat(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.edit import read, stat
    from syncd.engine.refs import resolve
    name = volume_arg(args)
    out = sys.stdout.buffer
    async with open_engine(config) as engine:
        entry = await stat(engine, name, args.path, await resolve(engine, name, args.snapshot))
        try:
            async for piece in read(engine, name, entry):
                out.write(piece)
            out.flush()
        except BrokenPipeError:        # `syncd cat ... | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
    return None


def _rm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("paths", nargs="+", metavar="path")
    p.add_argument("-r", "--recursive", action="store_true", help="remove directories and their contents")
    p.add_argument("-f", "--force", action="store_true", help="ignore paths that do not exist")
    p.add_argument("-m", "--message", default="")


@command("rm", "remove files or directories from a volume: one new snapshot", _rm_args)
async def _rm(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.edit import Batch, normalize_path
    from syncd.errors import ConfigError
    name = volume_arg(args)
    if any(not normalize_path(p) for p in args.paths):
        raise ConfigError("refusing to remove the volume root; use 'syncd volume rm' to delete the volume")
    async with open_engine(config, use_cache=False) as engine:
        batch = Batch(engine, name)
        for path in args.paths:
            batch.remove(path, args.recursive, missing_ok=args.force)
        return await batch.publish(args.message)


def _cp_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("-m", "--message", default="")


async def _copy(args: argparse.Namespace, config: Config, move: bool) -> Any:
    from syncd.engine.edit import Batch, entry, normalize_path
    name = volume_arg(args)
    src, dst = normalize_path(args.src), normalize_path(args.dst)
    async with open_engine(config, use_cache=False) as engine:
        target = await entry(engine, name, dst)
        if not dst or args.dst.endswith("/") or (target is not None and target.kind == "dir"):
            dst = posixpath.join(dst, posixpath.basename(src)) if dst else posixpath.basename(src)
        batch = Batch(engine, name)
        (batch.move if move else batch.copy)(src, dst)
        return await batch.publish(args.message)


@command("cp", "copy a file or tree inside a volume (metadata only: chunks are shared)", _cp_args)
async def _cp(args: argparse.Namespace, config: Config) -> Any:
    return await _copy(args, config, move=False)


@command("mv", "move a file or tree inside a volume (metadata only)", _cp_args)
async def _mv(args: argparse.Namespace, config: Config) -> Any:
    return await _copy(args, config, move=True)


def _diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("old", nargs="?", help="snapshot id, id prefix or seq (default: the parent of NEW)")
    p.add_argument("new", nargs="?", help="snapshot id, id prefix or seq (default: the latest)")


@command("diff", "what changed between two snapshots (default: the latest commit)", _diff_args)
async def _diff(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.diff import snapshot_diff
    from syncd.engine.refs import resolve
    name = volume_arg(args)
    async with open_engine(config, use_cache=False) as engine:
        old, new, changes = await snapshot_diff(engine, name, await resolve(engine, name, args.old),
                                                await resolve(engine, name, args.new))
    if args.json:
        return {"volume": name, "old": old, "new": new, "changes": changes}
    marks = {"added": "+", "removed": "-", "modified": "M"}
    return [f"{marks[c.status]} {c.path}{'/' if c.kind == 'dir' else ''}" for c in changes]


def _rename_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("new_name")
    p.add_argument("--keep-old", action="store_true", help="keep the old volume (a copy of its latest content)")


@command("volume rename", "rename a volume: its latest content moves to NEW_NAME (history stays behind, then is deleted)",
         _rename_args)
async def _rename(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.rename import rename
    from syncd.format.layout import normalize_volume_name
    name, new = volume_arg(args), normalize_volume_name(args.new_name)
    async with open_engine(config, use_cache=False) as engine:
        return await rename(engine, name, new, keep_old=args.keep_old)
