"""The ``syncd`` command line.

Each subcommand parses its arguments, opens one engine (engine.py) and calls
one engine function; output is human-readable by default and one JSON object
with ``--json``. Exit codes: 0 success, 1 unexpected error, 2 bad arguments or
names, 3 volume or snapshot not found, 4 integrity or manifest error, 5 local
conflict, 6 commit conflict, 7 local filesystem error, 8 object store error,
9 no agent answers on SYNCD_SOCKET, 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from syncd import __version__

if TYPE_CHECKING:
    import contextlib

    from syncd.config import Config
    from syncd.engine.wiring import Engine

T = TypeVar("T")
Handler = Callable[[argparse.Namespace, "Config"], Coroutine[Any, Any, Any]]
Configure = Callable[[argparse.ArgumentParser], None]


class Command(NamedTuple):   # not a dataclass: ``dataclasses`` costs --version its inspect import
    name: str            # "hydrate", or "volume prune" for a nested group
    help: str
    configure: Configure
    handler: Handler
    creates: bool = False  # it may create a volume, so it may create a missing bucket too


SNAPSHOT_HELP = "a snapshot instead of the latest: its id, a unique id prefix or its seq ('volume log')"
COMMANDS: dict[str, Command] = {}
PARSERS: dict[str, argparse.ArgumentParser] = {}   # each command's own parser, filled by build_parser()
# Modules that register more commands with @command; imported by build_parser().
COMMAND_MODULES: list[str] = ["syncd.cli.agent", "syncd.cli.volume", "syncd.cli.maint", "syncd.cli.gateway",
                              "syncd.cli.files", "syncd.cli.mount", "syncd.cli.cache", "syncd.cli.devs3"]
# The first word of each command -> the modules that register commands under it, so a run imports
# only what its command needs (start-up: docs/BENCHMARKS.md); tests/test_cli_startup.py keeps this
# in step with the registrations. A word not here (``--help``, a typo) imports them all.
COMMAND_WORDS: dict[str, tuple[str, ...]] = {
    "hydrate": (), "commit": (),
    "agent": ("syncd.cli.agent",), "status": ("syncd.cli.agent",),
    "volume": ("syncd.cli.volume", "syncd.cli.maint", "syncd.cli.files"),
    "put": ("syncd.cli.volume",), "get": ("syncd.cli.volume",), "restore": ("syncd.cli.volume",),
    "gateway": ("syncd.cli.gateway",), "mount": ("syncd.cli.mount",), "cache": ("syncd.cli.cache",),
    "dev-s3": ("syncd.cli.devs3",),
    **{w: ("syncd.cli.files",) for w in ("ls", "cat", "rm", "cp", "mv", "diff")},
}


def command(name: str, help: str, configure: Configure | None = None,
            creates: bool = False) -> Callable[[Handler], Handler]:
    """Register ``handler`` as ``syncd <name>``; ``configure`` adds its arguments. Only a command
    that ``creates`` volumes may create a missing bucket (with a warning); the others say it is missing."""
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, configure or (lambda p: None), fn, creates)
        return fn
    return register


def volume_arg(args: argparse.Namespace) -> str:
    from syncd.format.layout import normalize_volume_name
    return normalize_volume_name(args.volume)


def open_engine(config: Config, **options: Any) -> contextlib.AbstractAsyncContextManager[Engine]:
    """``engine.wiring.open_engine``, imported when a command runs: registering the commands (and
    ``--help``, ``--version``, argument errors) imports no engine, store or cache (start-up)."""
    from syncd.engine.wiring import open_engine as opened
    return opened(config, **options)


_BARS: list[Any] = []   # progress bars of this run, stopped before anything is printed


def progress_for(args: argparse.Namespace) -> Any:
    if args.json or args.quiet or not sys.stderr.isatty():
        return None
    from syncd.cli.progress import RichProgress
    bar = RichProgress()
    _BARS.append(bar)
    return bar


def stop_bars() -> None:
    while _BARS:
        _BARS.pop().close()


_ON_INTERRUPT: list[str] = []   # said after 'syncd: interrupted' if Ctrl-C ends this run


async def filling(engine: Engine, name: str, run: Coroutine[Any, Any, T]) -> T:
    """Run a command that writes ``name``'s first snapshot (commit, put); if Ctrl-C stops it before
    the snapshot is published, say that the volume exists but is empty and how to finish.

    The volume is created before any byte is uploaded (so two writers cannot both create it),
    which is why an interrupted first commit leaves it listed and empty."""
    import asyncio

    from syncd.errors import VolumeNotFound
    try:
        empty = (await engine.repo.head(name)).snapshot is None
    except VolumeNotFound:
        empty = True
    note = (f"syncd: volume {name!r} has no snapshot yet: the command did not finish, so the volume is "
            "empty. Run it again to finish: the chunks already stored are found, not stored twice "
            "(counted as reused_chunks).")
    if empty:
        _ON_INTERRUPT.append(note)
    interrupted = False
    try:
        return await run
    except (asyncio.CancelledError, KeyboardInterrupt):
        interrupted = True               # the note stays for main() to print
        raise
    finally:
        if empty and not interrupted:
            _ON_INTERRUPT.remove(note)


def _hydrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("dir")
    p.add_argument("--snapshot", help=SNAPSHOT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace conflicting local files")


@command("hydrate", "make DIR match the volume's latest snapshot", _hydrate_args)
async def _hydrate(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.hydrate import hydrate
    from syncd.engine.refs import resolve
    name = volume_arg(args)
    async with open_engine(config) as engine:
        return await hydrate(engine, name, Path(args.dir), snapshot_id=await resolve(engine, name, args.snapshot),
                             overwrite=args.overwrite, progress=progress_for(args))


def _commit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("dir")
    p.add_argument("-m", "--message", default="")


@command("commit", "write DIR's changes back as a new snapshot", _commit_args, creates=True)
async def _commit(args: argparse.Namespace, config: Config) -> Any:
    from syncd.engine.commit import commit
    name = volume_arg(args)
    async with open_engine(config) as engine:
        return await filling(engine, name, commit(engine, name, Path(args.dir), message=args.message,
                                                  progress=progress_for(args)))


def _global_flags(p: argparse.ArgumentParser, default: Any) -> None:
    """``--json``, ``-q``, ``-v``: accepted before and after the subcommand.

    The subcommands get the same flags with SUPPRESS defaults, so a flag given
    after the subcommand is set there and one given before it is not reset.
    """
    flag = default if default is argparse.SUPPRESS else False
    p.add_argument("--json", action="store_true", default=flag, help="print one JSON object instead of text")
    p.add_argument("-q", "--quiet", action="store_true", default=flag, help="no progress bars")
    p.add_argument("-v", "--verbose", action="count", default=default if default is argparse.SUPPRESS else 0,
                   help="more log output (-vv: debug)")


def _command_word(argv: list[str]) -> str | None:
    """The first argument that is not a global flag (None if there is none)."""
    for arg in argv:
        if arg in ("--json", "-q", "--quiet", "--verbose") or (arg.startswith("-v") and set(arg[1:]) <= {"v"}):
            continue
        return arg
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with every command (``argv`` None), or with those ``argv``'s command word needs."""
    word = _command_word(argv) if argv is not None else None
    modules = COMMAND_WORDS.get(word or "", COMMAND_MODULES) if argv is not None else COMMAND_MODULES
    if argv is not None and word in (None, "--version") and "--version" in argv:
        modules = ()   # nothing to register: the answer is one line
    for module in modules:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="syncd", description="Persistent volumes kept in object storage.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    _global_flags(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for name in sorted(COMMANDS):
        cmd = COMMANDS[name]
        words = name.split()
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=f"{words[0]} commands", parents=[common])
                groups[words[0]] = group.add_subparsers(dest="subcommand", required=True)
            target = groups[words[0]]
        p = target.add_parser(words[-1], help=cmd.help, parents=[common])
        cmd.configure(p)
        p.set_defaults(_command=name)
        PARSERS[name] = p
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse like argparse, but an optional positional may also follow the options.

    argparse fills positionals greedily in one pass: in ``restore VOL --snapshot ID PATH``
    it gives PATH its default while reading ``VOL`` and then calls ``PATH`` unrecognized
    (``parse_intermixed_args`` refuses subcommands). So unrecognized words that do not
    look like options fill the command's still-empty optional positionals, in order."""
    parser = build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        for action in PARSERS[args._command]._get_positional_actions():
            if action.nargs == "?" and getattr(args, action.dest) == action.default \
                    and extras and not extras[0].startswith("-"):
                setattr(args, action.dest, extras.pop(0))
    if extras:
        PARSERS[args._command].error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _jsonable(value: Any) -> Any:
    import dataclasses
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
    args = parse(sys.argv[1:] if argv is None else argv)
    import asyncio
    import logging

    from syncd.config import Config
    from syncd.errors import SyncdError
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if isinstance(getattr(args, "volume", None), str):
            volume_arg(args)   # a bad name is reported before any connection
        cmd = COMMANDS[args._command]
        config = Config.from_env(create_bucket=cmd.creates)
        result: Any = asyncio.run(cmd.handler(args, config))
    except SyncdError as exc:
        stop_bars()
        if args.json:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        else:
            print(f"syncd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        stop_bars()                  # else the bar's refresh thread draws it once more below the message
        print("syncd: interrupted", file=sys.stderr)
        for note in _ON_INTERRUPT:
            print(note, file=sys.stderr)
        _ON_INTERRUPT.clear()
        return 130
    stop_bars()
    _print(args, result)
    return 0


# A hydrate or commit allocates a few container objects per file (entries, rows, tuples), so at
# CPython's default threshold (700) the cyclic collector ran every few dozen files and its full
# passes walked the tree cache again and again: 0.7-0.9 s of the 5.5 s of user CPU of a cold
# hydrate of 100,000 files (three runs each, alternated; disabling the collector saved the same).
# Little of syncd's garbage is cyclic (reference counting frees it), so the console script
# collects every 50,000 allocations instead; the memory bounds (docs/SCALE.md) did not move.
GC_THRESHOLDS = (50_000, 20, 100)


def run() -> None:
    """The console script: ``main()``, then leave without interpreter finalisation.

    obstore's Rust runtime keeps threads that can race CPython's shutdown and abort a
    short-lived process (SIGABRT, seen once in ~270 CLI runs). Everything syncd owns is closed
    by the time ``main()`` returns (engines are context managers), so after flushing stdio
    the process exits at once with ``main()``'s code. Tests call ``main()`` directly.

    The cyclic garbage collector runs after ``GC_THRESHOLDS[0]`` new container objects instead
    of CPython's 700: a commit or hydrate of many small files keeps tens of thousands of
    entries alive for a moment (a batch waiting for its uploads), so at 700 they were
    promoted and scanned again and again -- a quarter of a 100,000-file first commit's
    CPU (8.4 -> 6.2 user seconds; bench/scale.py, docs/SCALE.md). Nothing here relies on
    cycles being freed early; the memory they hold at most is bounded by the threshold.
    """
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        code = main()
    except SystemExit as exc:            # argparse: --help, --version, usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
