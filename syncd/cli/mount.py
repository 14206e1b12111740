"""``syncd mount VOLUME DIR``: serve a volume lazily as a FUSE mount until SIGTERM (docs/MOUNT.md)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from syncd.cli.core import command
from syncd.config import Config, parse_size
from syncd.errors import ConfigError, LocalIOError


def _mount_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")
    p.add_argument("dir", type=Path)
    p.add_argument("--read-only", action="store_true", help="refuse writes (EROFS)")
    p.add_argument("--snapshot", default=None, help="mount this snapshot (always read-only)")
    p.add_argument("--upper-limit", default=None,
                   help="bytes of local writes the mount may hold (ENOSPC beyond; default: the disk's)")
    p.add_argument("--debounce", type=float, default=1.0, help="commit once writes were quiet this long (s)")
    p.add_argument("--max-delay", type=float, default=10.0, help="commit a mount that keeps changing this often (s)")


@command("mount", "mount a volume lazily (FUSE): the tree at once, bytes on read; writes committed back",
         _mount_args)
async def _mount(args: argparse.Namespace, config: Config) -> Any:
    if importlib.util.find_spec("pyfuse3") is None:
        raise ConfigError("syncd mount needs pyfuse3: apt-get install fuse3 libfuse3-dev pkg-config, "
                          "then pip install 'syncd[mount]'")
    from syncd.mount.process import MountOptions, serve
    logging.getLogger("syncd").setLevel(min(logging.getLogger().level, logging.INFO))
    opts = MountOptions(args.volume, args.dir, args.read_only, args.snapshot,
                        upper_limit=parse_size(args.upper_limit) if args.upper_limit else None,
                        debounce=args.debounce, max_delay=args.max_delay)
    print(f"syncd mount: {args.volume} at {args.dir} (SIGTERM or Ctrl-C to commit and unmount)",
          file=sys.stderr, flush=True)
    if await serve(config, opts):
        raise LocalIOError(f"the final commit of {args.volume} failed; see the log above")
    return None
