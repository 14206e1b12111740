"""The ``syncd`` command line.

Each subcommand parses its arguments, opens one engine (engine.py) and calls
one engine function; output is human-readable by default and one JSON object
with ``--json``. Exit codes: 0 success, 1 unexpected error, 2 bad arguments or
names, 3 volume or snapshot not found, 4 integrity or manifest error, 5 local
conflict, 6 commit conflict, 7 local filesystem error, 8 object store error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .config import Config
from .engine import open_engine
from .errors import SyncdError
from .layout import normalize_volume_name

Handler = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, Any]]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn
    return register


def _volume(args: argparse.Namespace) -> str:
    return normalize_volume_name(args.volume)


@command("hydrate")
async def _hydrate(args: argparse.Namespace, config: Config) -> Any:
    from .hydrate import hydrate
    async with open_engine(config) as engine:
        return await hydrate(engine, _volume(args), Path(args.dir), snapshot_id=args.snapshot,
                             overwrite=args.overwrite, progress=_progress(args))


@command("commit")
async def _commit(args: argparse.Namespace, config: Config) -> Any:
    from .commit import commit
    async with open_engine(config) as engine:
        return await commit(engine, _volume(args), Path(args.dir), message=args.message,
                            progress=_progress(args))


def _progress(args: argparse.Namespace) -> Any:
    if args.json or args.quiet or not sys.stderr.isatty():
        return None
    from .cliprogress import RichProgress
    return RichProgress()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd", description="Persistent volumes kept in object storage.")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hydrate", help="make DIR match the volume's latest snapshot")
    p.add_argument("volume")
    p.add_argument("dir")
    p.add_argument("--snapshot", help="a snapshot id instead of the latest")
    p.add_argument("--overwrite", action="store_true", help="replace conflicting local files")
    p = sub.add_parser("commit", help="write DIR's changes back as a new snapshot")
    p.add_argument("volume")
    p.add_argument("dir")
    p.add_argument("-m", "--message", default="")
    return parser


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _print(args: argparse.Namespace, value: Any) -> None:
    if value is None:
        return
    if args.json:
        print(json.dumps(_jsonable(value), indent=None, sort_keys=True))
        return
    data = _jsonable(value)
    if isinstance(data, dict):
        for key, item in data.items():
            if item not in (None, [], {}):
                print(f"{key}: {item}")
    elif isinstance(data, list):
        for item in data:
            print(item if not isinstance(item, dict) else "  ".join(f"{k}={v}" for k, v in item.items()))
    else:
        print(data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        config = Config.from_env()
        result: Any = asyncio.run(COMMANDS[args.command](args, config))
    except SyncdError as exc:
        if args.json:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        else:
            print(f"syncd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("syncd: interrupted", file=sys.stderr)
        return 130
    _print(args, result)
    return 0
