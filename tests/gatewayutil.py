"""Helpers for the gateway tests: gateways in-process or as a killable process."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.auth import Tokens
from gateway.main import running
from gateway.service import GatewayService
from syncd.config import Config, MiB
from syncd.data.gatewayclient import rendezvous_order
from syncd.engine.commit import commit
from syncd.engine.wiring import Engine, open_engine
from syncd.format.manifest import Snapshot
from syncd.store.devserver import free_port
from syncd.store.wrap import CountingStore

from .treeutil import make_tree


async def commit_tree(config: Config, src: Path, small_files: int = 40,
                      large_size: int = 3 * MiB + 17) -> tuple[str, Snapshot]:
    """Commit a test tree as volume "vol"; its snapshot id and snapshot."""
    make_tree(src, small_files=small_files, large_size=large_size)
    async with open_engine(config) as eng:
        result = await commit(eng, "vol", src)
        assert result.snapshot
        return result.snapshot, await eng.repo.snapshot("vol", result.snapshot)


@dataclass
class Gateway:
    url: str
    service: GatewayService

    @property
    def origin(self) -> CountingStore:
        """The gateway's own store stack: counts what it read from S3."""
        store = self.service.store
        assert isinstance(store, CountingStore)
        return store


@contextlib.asynccontextmanager
async def serve_gateway(config: Config, tmp_path: Path, name: str = "gw",
                        tokens: dict[str, str] | None = None, port: int = 0,
                        **options: Any) -> AsyncIterator[Gateway]:
    """A gateway on a free loopback port in this process (auth off unless ``tokens``);
    ``options`` go to ``gateway.main.running`` (head_ttl, whole_limit, clock)."""
    async with running(config, Tokens(tokens), "127.0.0.1", port, tmp_path / name / "cache",
                       256 * MiB, **options) as (service, port):
        yield Gateway(f"http://127.0.0.1:{port}", service)


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """A stand-in gateway (any aiohttp app) on a free loopback port: its URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def gateway_process(config: Config, tmp_path: Path, timeout: float = 30.0, port: int = 0,
                    cache: str = "gwproc-cache", extra: tuple[str, ...] = ()
                    ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``syncd-gateway --no-auth --port PORT [EXTRA...]`` as a child process; killed on exit."""
    env = {**os.environ, "SYNCD_S3_ENDPOINT": config.s3_endpoint or "", "SYNCD_BUCKET": config.bucket,
           "SYNCD_PREFIX": config.prefix}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--no-auth", "--port", str(port),
                             "--cache-dir", str(tmp_path / cache), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                raise RuntimeError(f"gateway did not start (exit {proc.poll()}, output {line!r})")
            if select.select([proc.stdout], [], [], remaining)[0]:
                line += os.read(proc.stdout.fileno(), 4096)  # unbuffered: select sees the rest
        yield proc, line.decode().split()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def pool_port(objects: Iterable[str], *others: str, least: int = 1) -> int:
    """A free loopback port for one more gateway such that, in the pool of ``others`` and it,
    it ranks first (rendezvous) for at least ``least`` of ``objects`` and every other gateway
    for at least one: placement follows the URLs, so with any port a test's dozen objects could
    all land on one gateway."""
    objects = list(objects)
    assert len(objects) >= least + len(others), "too few objects to give every gateway a share"
    for _ in range(10_000):
        port = free_port()
        me = f"http://127.0.0.1:{port}"
        firsts = [rendezvous_order((*others, me), o)[0] for o in objects]
        if firsts.count(me) >= least and all(url in firsts for url in others):
            return port
    raise AssertionError(f"no port gives {me} {least} of {len(objects)} objects and the others one each")


def through(config: Config, *urls: str, token: str | None = None) -> Config:
    return config.replace(gateways=tuple(urls), gateway_token=token)


def source_bytes(engine: Engine) -> dict[str, int]:
    """Chunk bytes this engine got, by source (cache, gateway:<host:port>, store)."""
    return {k: v for k, v in engine.fetcher.bytes_by_source.items() if v}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text ``text`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
