"""``syncd-gateway``: run the caching gateway.

Store settings come from the same ``SYNCD_*`` environment as syncd itself
(endpoint, bucket, prefix, connection limit, retries; see syncd/config.py);
flags set what is the gateway's own: where to listen, the tokens file and the
disk cache. The store stack is built by ``syncd.engine.open_engine`` (without
a local chunk cache and without gateways of its own).

On start it prints one line, ``syncd-gateway listening on http://HOST:PORT``,
to stdout (``--port 0`` picks a free port; tests and benchmarks read it). It
stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from syncd.config import Config, parse_size
from syncd.engine.wiring import open_engine
from syncd.errors import ConfigError, SyncdError

from .app import MAX_REQUESTS, create_app
from .auth import Tokens
from .guard import ConnectionGuard, ServerLimits
from .peers import Peers
from .service import WHOLE_LIMIT, GatewayService
from .trees import TREE_LEADERS

# A fleet connects all at once: with the default backlog (128) SYNs beyond it are dropped and
# retried a second later, which a worker's connect timeout counted as a dead gateway.
LISTEN_BACKLOG = 4096


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="syncd-gateway", description="Caching gateway for syncd volumes.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8480, help="port (0 = any free port)")
    p.add_argument("--tokens", type=Path, help="file of 'TOKEN OWNER' lines")
    p.add_argument("--no-auth", action="store_true", help="serve without tokens (trusted networks only)")
    p.add_argument("--cache-dir", type=Path, help="disk cache (default $SYNCD_CACHE_DIR/gateway)")
    p.add_argument("--cache-size", help="cache size bound, e.g. 200G (default $SYNCD_CACHE_SIZE)")
    p.add_argument("--max-requests", type=int, default=MAX_REQUESTS,
                   help=f"object requests served at once; more wait briefly, then get 503 (default {MAX_REQUESTS})")
    p.add_argument("--keepalive-timeout", type=float, default=ServerLimits.keepalive_timeout,
                   help="seconds before an idle keep-alive connection is closed (default %(default)s)")
    p.add_argument("--header-timeout", type=float, default=ServerLimits.header_timeout,
                   help="seconds a new connection has to send its request head (default %(default)s)")
    p.add_argument("--max-connections", type=int, default=ServerLimits.max_connections,
                   help="connections open at once; beyond, requests get 503 (default %(default)s)")
    p.add_argument("--max-per-client", type=int, default=ServerLimits.max_per_client,
                   help="connections open at once from one address; beyond, 503 (default %(default)s)")
    p.add_argument("--head-ttl", type=float, help="seconds a volume's HEAD is served before it is fetched "
                   "again (default $SYNCD_GATEWAY_HEAD_TTL, 1)")
    p.add_argument("--whole-limit", type=parse_size, default=WHOLE_LIMIT,
                   help="a ranged miss on an object up to this size fetches it whole (default 64M)")
    p.add_argument("--tree-leaders", type=int, default=TREE_LEADERS,
                   help="tree misses read and inflated at once, each in a few MiB; the others wait "
                   "(default %(default)s)")
    p.add_argument("--pool", help="the gateway pool, as the workers' SYNCD_GATEWAY lists it: a miss asks the "
                   "other gateways' caches before the store (default $SYNCD_GATEWAY)")
    p.add_argument("--self-url", help="this gateway's URL in --pool (default http://HOST:PORT)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p.parse_args(argv)


@contextlib.asynccontextmanager
async def running(config: Config, tokens: Tokens, host: str, port: int, cache_dir: Path,
                  cache_size: int, max_requests: int = MAX_REQUESTS, limits: ServerLimits = ServerLimits(),
                  *, head_ttl: float | None = None, whole_limit: int = WHOLE_LIMIT,
                  clock: Callable[[], float] = time.monotonic,
                  peers: Peers | None = None,
                  tree_leaders: int = TREE_LEADERS) -> AsyncIterator[tuple[GatewayService, int]]:
    """A serving gateway; yields the service and the bound port. Used by main() and the tests.

    ``limits`` bound idle and slow connections and how many a client may hold (guard.py).
    """
    async with open_engine(config.replace(gateways=()), use_cache=False) as engine:
        service = GatewayService(engine.store, config.prefix, cache_dir, cache_size,
                                 head_ttl=config.gateway_head_ttl if head_ttl is None else head_ttl,
                                 whole_limit=whole_limit, clock=clock, peers=peers, tree_leaders=tree_leaders)
        guard = ConnectionGuard(limits)
        runner = web.AppRunner(create_app(service, tokens, max_requests, guard), shutdown_timeout=2.0,
                               access_log=None, keepalive_timeout=limits.keepalive_timeout)
        await runner.setup()
        assert runner.server is not None
        guard.attach(runner.server)
        try:
            site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
            await site.start()
            yield service, int(runner.addresses[0][1])
        finally:
            await runner.cleanup()
            await service.close()


async def serve(args: argparse.Namespace) -> None:
    if not args.tokens and not args.no_auth:
        raise ConfigError("give --tokens FILE (or --no-auth on a trusted network)")
    tokens = Tokens.load(args.tokens) if args.tokens else Tokens(None)
    if not tokens.enabled:
        logging.getLogger(__name__).warning("serving without tokens (--no-auth): anyone who can connect "
                                            "reads every owner's volumes")
    config = Config.from_env()
    cache_dir = args.cache_dir or config.cache_dir / "gateway"
    cache_size = parse_size(args.cache_size) if args.cache_size else config.cache_size
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    limits = ServerLimits(args.keepalive_timeout, args.header_timeout, args.max_connections, args.max_per_client)
    _raise_fd_limit(limits.max_connections)
    pool = [u.strip() for u in args.pool.split(",") if u.strip()] if args.pool else list(config.gateways)
    peers = Peers(pool, args.self_url or f"http://{args.host}:{args.port}") if pool else None
    async with running(config, tokens, args.host, args.port, cache_dir, cache_size, args.max_requests, limits,
                       head_ttl=args.head_ttl, whole_limit=args.whole_limit, peers=peers,
                       tree_leaders=args.tree_leaders) as (_, port):
        print(f"syncd-gateway listening on http://{args.host}:{port}", flush=True)
        await stop.wait()


def _raise_fd_limit(connections: int) -> None:
    """Let the descriptor limit, not just the default soft one, hold the connection bound plus headroom."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except SyncdError as exc:
        print(f"syncd-gateway: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
