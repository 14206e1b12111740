"""syncd through gateways, on a real SeaweedFS: placement, failover, fan-out, warm-up."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from syncd.agent.metrics import render
from syncd.cli.core import COMMANDS, build_parser
from syncd.config import Config, MiB
from syncd.data.fetch import coalesce
from syncd.data.gatewayclient import Breaker, GatewaySource, gateway_sources
from syncd.data.httpget import Connections
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.format.manifest import Snapshot

from .conftest import worker_config
from .gatewayutil import (
    Gateway,
    commit_tree,
    gateway_process,
    metric,
    pool_port,
    serve_app,
    serve_gateway,
    source_bytes,
    through,
)
from .treeutil import snapshot_tree


def volume_bytes(snap: Snapshot) -> int:
    """Bytes of the distinct chunks the snapshot references: what one full download reads."""
    return sum({r.id: r.size for e in snap.entries.values() for r in e.chunks}.values())


def object_gets(gw: Gateway) -> int:
    """The gateway's origin GETs of chunks and packs (not HEAD or snapshots)."""
    return sum(n for key, n in gw.origin.keys.items() if "/chunks/" in key or "/packs/" in key)


async def test_hydrate_reads_chunks_through_the_gateway(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src")
    async with serve_gateway(config, tmp_path) as gw:
        async with open_engine(through(worker_config(config, tmp_path, "w1"), gw.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "dst")
            # HEAD, the snapshot, format v2's trees and every chunk came through it: no GET of the store
            assert eng.counter.calls["get"] == 0
            assert source_bytes(eng) == {f"gateway:{gw.url[7:]}": volume_bytes(snap)}
            assert eng.pooled is not None and set(eng.pooled.bytes_by_source) == {f"gateway:{gw.url[7:]}"}
            text = render(eng.fetcher).decode()
    assert metric(text, "syncd_fetch_bytes_total", source=f"gateway:{gw.url[7:]}") == volume_bytes(snap)
    assert metric(text, "syncd_gateway_client_requests_total", gateway=gw.url) > 0
    assert metric(text, "syncd_gateway_client_failures_total", gateway=gw.url) == 0
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(tmp_path / "src")


async def test_gateway_chunks_stream_into_place_without_a_buffer_per_body(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large file's chunks go from the gateway's socket through one reused buffer, hashed, into
    the file (fetch_into, store/rangeread.py), a pack's run of chunks with one ranged GET: no copy
    into bytes per chunk (GatewaySource._call copies) and no body-sized buffer per chunk (httpget's
    are only for metadata and packs)."""
    copied: list[str] = []
    made: list[int] = []
    streamed: list[int] = []
    real_call, real_buffer, real_into = GatewaySource._call, Connections._buffer, GatewaySource.fetch_into

    async def call(self: GatewaySource, method: str, path: str, *args: Any, **kw: Any) -> Any:
        copied.append(path)
        return await real_call(self, method, path, *args, **kw)

    def buffer(self: Connections, size: int) -> bytearray:
        made.append(size)
        return real_buffer(self, size)

    async def into(self: GatewaySource, volume: str, refs: Any, sink: Any) -> Any:
        streamed.append(len(refs))
        return await real_into(self, volume, refs, sink)

    monkeypatch.setattr(GatewaySource, "_call", call)
    monkeypatch.setattr(Connections, "_buffer", buffer)
    monkeypatch.setattr(GatewaySource, "fetch_into", into)
    cfg = config.replace(chunk_size=MiB, max_inflight_bytes=4 * MiB, large_pack_size=8 * MiB)
    _, snap = await commit_tree(cfg, tmp_path / "src", small_files=5, large_size=24 * MiB + 5)
    async with serve_gateway(cfg, tmp_path) as gw:
        async with open_engine(through(worker_config(cfg, tmp_path, "w1"), gw.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "dst")
            assert source_bytes(eng) == {f"gateway:{gw.url[7:]}": volume_bytes(snap)}
    chunk_reads = [u for u in copied if "/packs/" in u or "/chunks/" in u]
    small_packs = {r.pack for e in snap.entries.values() if e.kind == "file" and e.size < cfg.pack_threshold
                   for r in e.chunks}     # one, or two when the budget was short and the open pack was flushed
    assert sorted(u.rsplit("/", 1)[1] for u in chunk_reads) == sorted(small_packs)   # none of the large chunks
    assert len(made) == len(copied) <= 7 + len(small_packs)   # httpget buffers: HEAD, snapshot, trees, those packs
    runs = coalesce(snap.entries["models/big.bin"].chunks, cfg.large_pack_size)
    assert sorted(streamed) == sorted(map(len, runs)) and len(runs) < 25   # one GET a run, as from the store
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(tmp_path / "src")


async def test_rendezvous_spreads_objects_over_two_gateways(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=120, large_size=16 * MiB)
    objects = {r.pack or r.id for e in snap.entries.values() for r in e.chunks}
    async with serve_gateway(config, tmp_path, "a") as a, \
            serve_gateway(config, tmp_path, "b", port=pool_port(objects, a.url)) as b:   # each first for some
        async with open_engine(through(worker_config(config, tmp_path, "w1"), a.url, b.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "w1" / "dst")
            by_source = source_bytes(eng)
        assert set(by_source) == {f"gateway:{a.url[7:]}", f"gateway:{b.url[7:]}"}
        assert sum(by_source.values()) == volume_bytes(snap)
        # each object was fetched through exactly one gateway: the pool's caches add up (a tree pack is
        # read once per level, a ranged GET of that level's trees: gateway/trees.py)
        assert a.origin.keys and b.origin.keys and not set(a.origin.keys) & set(b.origin.keys)
        assert max(n for gw in (a, b) for k, n in gw.origin.keys.items() if "/trees/" not in k) == 1
        # a second worker (listing the gateways in the other order) hits those caches
        gets = object_gets(a) + object_gets(b)
        async with open_engine(through(worker_config(config, tmp_path, "w2"), b.url, a.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "w2" / "dst")
        assert object_gets(a) + object_gets(b) == gets  # (HEAD may be refetched: its TTL is real time here)
    assert snapshot_tree(tmp_path / "w2" / "dst") == snapshot_tree(tmp_path / "src")


async def test_warm_command_fills_each_gateway_with_its_share(config: Config, tmp_path: Path) -> None:
    sid, snap = await commit_tree(config, tmp_path / "src", small_files=60, large_size=16 * MiB)
    objects = {r.pack or r.id for e in snap.entries.values() for r in e.chunks}
    async with serve_gateway(config, tmp_path, "a") as a, \
            serve_gateway(config, tmp_path, "b", port=pool_port(objects, a.url)) as b:   # each first for some
        args = build_parser().parse_args(["gateway", "warm", "vol", "--snapshot", sid])
        result = await COMMANDS[args._command].handler(args, through(config, a.url, b.url))
        assert result["fetched"] == result["objects"] == len(objects) and result["failed"] == [], result
        assert a.origin.calls["get"] > 0 and b.origin.calls["get"] > 0
        gets = object_gets(a) + object_gets(b)
        async with open_engine(through(worker_config(config, tmp_path, "w1"), a.url, b.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "dst", snapshot_id=sid)
        assert object_gets(a) + object_gets(b) == gets  # every chunk and pack was already warm
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(tmp_path / "src")


async def test_objects_of_a_dead_gateway_go_to_the_next_gateway_not_the_store(config: Config,
                                                                              tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=60, large_size=6 * MiB)
    objects = {r.pack or r.id for e in snap.entries.values() for r in e.chunks}
    async with serve_gateway(config, tmp_path) as live:
        dead = f"http://127.0.0.1:{pool_port(objects, live.url)}"   # nothing listens; it ranks first for some objects
        cfg = through(worker_config(config, tmp_path, "w1"), dead, live.url)
        sources = gateway_sources(cfg)
        async with open_engine(cfg, sources=sources) as eng:
            await hydrate(eng, "vol", tmp_path / "dst")
            assert source_bytes(eng) == {f"gateway:{live.url[7:]}": volume_bytes(snap)}
    down = sources[0]
    assert isinstance(down, GatewaySource) and down.failures >= 1  # it was asked, and failed
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(tmp_path / "src")


async def test_a_hung_gateway_costs_one_timeout_not_one_per_chunk(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=10, large_size=12 * MiB)
    chunks = len({r.id for e in snap.entries.values() for r in e.chunks})
    accepted: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accept, read the request, never answer

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    cfg = through(worker_config(config, tmp_path, "w1"), url).replace(max_inflight_bytes=2 * MiB)
    sources = gateway_sources(cfg, read_timeout=0.3)
    try:
        async with open_engine(cfg, sources=sources) as eng:
            await hydrate(eng, "vol", tmp_path / "dst")
            assert source_bytes(eng) == {"store": volume_bytes(snap)}
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    hung = sources[0]
    assert isinstance(hung, GatewaySource)
    assert hung.requests <= 4 < chunks  # the breaker opened after the first timeouts: at most 4 waited out
    assert hung.skipped > 0
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(tmp_path / "src")


async def test_bad_bytes_from_a_gateway_are_caught_on_the_worker(config: Config, tmp_path: Path) -> None:
    await commit_tree(config, tmp_path / "src", small_files=30)

    async def liar(request: web.Request) -> web.Response:
        return web.Response(body=os.urandom(int(request.headers.get("Range", "bytes=0-99").split("-")[1]) + 1))

    app = web.Application()
    app.router.add_get("/{tail:.*}", liar)
    async with serve_app(app) as url, open_engine(through(worker_config(config, tmp_path, "w1"), url)) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
        assert set(source_bytes(eng)) == {"store"}
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(tmp_path / "src")


async def test_six_concurrent_hydrates_read_the_volume_about_once(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=150, large_size=8 * MiB + 5)
    async with serve_gateway(config, tmp_path) as gw:
        async def worker(i: int) -> int:
            async with open_engine(through(worker_config(config, tmp_path, f"w{i}"), gw.url)) as eng:
                await hydrate(eng, "vol", tmp_path / f"w{i}" / "dst")
                assert eng.counter.calls["get"] == 0  # HEAD, snapshot and trees came through it too
                return source_bytes(eng).get("store", 0)

        direct = await asyncio.gather(*(worker(i) for i in range(6)))
    assert direct == [0] * 6  # no worker read a chunk from the store itself
    assert gw.origin.bytes_in <= 1.15 * volume_bytes(snap)
    want = snapshot_tree(tmp_path / "src")
    for i in range(6):
        assert snapshot_tree(tmp_path / f"w{i}" / "dst") == want


async def test_killing_the_gateway_mid_run_lets_every_hydrate_finish(config: Config, tmp_path: Path) -> None:
    await commit_tree(config, tmp_path / "src", small_files=60, large_size=8 * MiB)
    with gateway_process(config, tmp_path) as (proc, url):
        engines = [open_engine(through(worker_config(config, tmp_path, f"w{i}"), url)
                               .replace(max_inflight_bytes=1 * MiB)) for i in range(6)]
        opened = [await e.__aenter__() for e in engines]
        try:
            runs = [asyncio.ensure_future(hydrate(eng, "vol", tmp_path / f"w{i}" / "dst"))
                    for i, eng in enumerate(opened)]
            deadline = time.monotonic() + 20
            while not any(k.startswith("gateway:") for eng in opened for k in source_bytes(eng)):
                assert time.monotonic() < deadline and not all(r.done() for r in runs)
                await asyncio.sleep(0.002)
            proc.kill()
            await asyncio.gather(*runs)
            totals = [source_bytes(eng) for eng in opened]
        finally:
            for e in engines:
                await e.__aexit__(None, None, None)
    assert any(k.startswith("gateway:") for t in totals for k in t)
    assert any("store" in t for t in totals)  # the kill happened while hydrates were running
    want = snapshot_tree(tmp_path / "src")
    for i in range(6):
        assert snapshot_tree(tmp_path / f"w{i}" / "dst") == want


def test_breaker_backs_off_probes_one_at_a_time_and_recovers() -> None:
    now = [100.0]
    breaker = Breaker(first=1.0, maximum=4.0, probe_window=10.0, clock=lambda: now[0])
    assert breaker.allows() and breaker.allows()  # closed: everything goes
    breaker.failed()
    breaker.failed()  # a second failure while open (a concurrent request) does not extend it
    assert not breaker.allows() and breaker.delay == 1.0
    now[0] += 1.0
    assert breaker.allows()  # half-open: one probe goes ...
    assert not breaker.allows()  # ... and only one
    breaker.failed()
    assert breaker.delay == 2.0 and not breaker.allows()
    now[0] += 2.0
    assert breaker.allows()
    now[0] += 10.0  # the probe never reported back: its slot is free again
    assert breaker.allows()
    breaker.failed()
    now[0] += 4.0
    assert breaker.allows()
    breaker.failed()
    assert breaker.delay == 4.0  # capped
    now[0] += 4.0
    assert breaker.allows()
    breaker.succeeded()
    assert breaker.allows() and breaker.allows() and breaker.delay == 0.0
