"""The gateway serving every read of a hydrate, and a pool of gateways, on a real SeaweedFS.

HEAD within its TTL and after it, snapshots and ranges, the whole-object rule
for ranged misses, sendfile hits, a flipped byte in a cache file, a gateway of
a pool killed and restarted mid-hydrate, and rendezvous movement. Time is a
fake clock the tests advance: they count GETs, they never sleep.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from gateway.peers import Peers
from syncd.config import Config, MiB
from syncd.data.gatewayclient import FAMILIES, rendezvous_order
from syncd.data.gatewaystore import GatewayStore
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine, open_engine
from syncd.format.chunking import content_id
from syncd.format.layout import Layout
from syncd.store.base import MemoryStore
from syncd.store.devserver import free_port

from .conftest import worker_config
from .gatewayutil import commit_tree, gateway_process, metric, pool_port, serve_gateway, source_bytes, through
from .treeutil import snapshot_tree


def store_reads(eng: Engine) -> list[str]:
    """Keys this worker read from the store itself (through a healthy pool: none)."""
    return list(eng.counter.keys)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_head_is_served_within_its_ttl_then_refetched(config: Config, tmp_path: Path) -> None:
    sid, _ = await commit_tree(config, tmp_path / "src", small_files=5)
    clock = Clock()
    async with serve_gateway(config, tmp_path, head_ttl=1.0, clock=clock) as gw, \
            aiohttp.ClientSession() as http:
        head_key = Layout(config.prefix, "alice").head("vol")
        url = f"{gw.url}/v1/alice/vol/HEAD"

        async def get() -> tuple[bytes, str]:
            async with http.get(url) as resp:
                assert resp.status == 200
                return await resp.read(), resp.headers["ETag"]

        first = await asyncio.gather(*(get() for _ in range(8)))  # concurrent: one GET (single-flight)
        first += [await get() for _ in range(4)]                   # within the TTL: no GET
        assert len(set(first)) == 1 and sid.encode() in first[0][0]
        assert gw.origin.keys[head_key] == 1
        # a commit made elsewhere (straight to the store) ...
        (tmp_path / "src" / "new.txt").write_text("new\n")
        async with open_engine(config) as eng:
            newer = (await commit(eng, "vol", tmp_path / "src")).snapshot
        assert newer and newer != sid
        clock.now += 0.99  # ... is not seen before the TTL has passed
        assert await get() == first[0] and gw.origin.keys[head_key] == 1
        clock.now += 0.01  # ... and is seen once it has: one more GET
        body, etag = await get()
        assert newer.encode() in body and etag != first[0][1]
        assert gw.origin.keys[head_key] == 2
        async with http.get(f"{gw.url}/v1/alice/nope/HEAD") as resp:
            assert resp.status == 404  # not remembered: a volume created now is seen at once
        # a worker reads HEAD and the snapshot through the gateway: nothing from the store
        async with open_engine(through(worker_config(config, tmp_path, "w1"), gw.url)) as eng:
            head, snap = await eng.repo.latest("vol")
            assert head.snapshot == newer and snap is not None and "new.txt" in snap.entries
            # nothing from the store: HEAD, the snapshot and its trees all came through the gateway
            assert not store_reads(eng)
        assert gw.origin.keys[head_key] == 2


async def test_a_commit_racing_a_stale_gateway_head_reads_the_store_and_merges(config: Config,
                                                                               tmp_path: Path) -> None:
    await commit_tree(config, tmp_path / "src", small_files=5)
    clock = Clock()  # never advanced: the gateway's HEAD stays stale for the whole test
    async with serve_gateway(config, tmp_path, head_ttl=1.0, clock=clock) as gw:
        a = through(worker_config(config, tmp_path, "a"), gw.url)
        async with open_engine(a) as eng:
            await hydrate(eng, "vol", tmp_path / "a" / "dst")
        async with open_engine(worker_config(config, tmp_path, "b")) as eng:  # B commits direct
            await hydrate(eng, "vol", tmp_path / "b" / "dst")
            (tmp_path / "b" / "dst" / "from-b.txt").write_text("b\n")
            await commit(eng, "vol", tmp_path / "b" / "dst")
        (tmp_path / "a" / "dst" / "from-a.txt").write_text("a\n")
        async with open_engine(a) as eng:
            result = await commit(eng, "vol", tmp_path / "a" / "dst")
            assert result.attempts == 2 and result.merged  # stale HEAD -> 412 -> the store's HEAD
            head, snap = await eng.repo.latest("vol")   # this worker sees its own commit at once
            assert head.snapshot == result.snapshot and snap is not None
            assert {"from-a.txt", "from-b.txt"} <= set(snap.entries)


async def test_snapshots_ranges_and_the_whole_object_rule(config: Config, tmp_path: Path) -> None:
    sid, snap = await commit_tree(config, tmp_path / "src", small_files=30, large_size=2 * MiB)
    # chunks are cut by content: take the largest loose one and set the limit just below it
    big = max((r for e in snap.entries.values() for r in e.chunks if r.pack is None), key=lambda r: r.size)
    small = next(r for e in snap.entries.values() for r in e.chunks if r.pack is not None)
    limit = big.size - 1
    assert limit >= 64 * 1024  # far above the pack of 30 small files (a few KB)
    async with serve_gateway(config, tmp_path, whole_limit=limit) as gw, aiohttp.ClientSession() as http:
        async def get(path: str, span: tuple[int, int] | None = None) -> tuple[bytes, str]:
            headers = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else {}
            async with http.get(gw.url + path, headers=headers) as resp:
                assert resp.status == (206 if span else 200), path
                return await resp.read(), resp.headers["X-Syncd-Verified"]

        data, _ = await get(f"/v1/alice/vol/snapshots/{sid}")
        assert content_id(data) == sid
        part, _ = await get(f"/v1/alice/vol/snapshots/{sid}", (5, 50))
        assert part == data[5:50]
        # a pack (below --whole-limit): a ranged miss fetches it whole, once; later ranges are hits
        pack = f"/v1/alice/vol/packs/{small.pack}"
        piece, by = await get(pack, (small.offset, small.offset + small.size))
        assert content_id(piece) == small.id and by == "gateway"
        await gw.service.settled()
        assert (await get(pack, (0, 10)))[1] == "gateway"
        # a chunk above --whole-limit: a ranged miss is relayed (the worker verifies), not cached
        chunk = f"/v1/alice/vol/chunks/{big.id}"
        for _ in range(2):
            piece, by = await get(chunk, (1000, 2000))
            assert len(piece) == 1000 and by == "client"
        whole, _ = await get(chunk)  # a whole request fetches and caches it ...
        assert content_id(whole) == big.id
        await gw.service.settled()
        piece, by = await get(chunk, (1000, 2000))  # ... and a range of it is then a verified hit
        assert piece == whole[1000:2000] and by == "gateway"
        key = Layout(config.prefix, "alice")
        assert gw.origin.keys[key.snapshot("vol", sid)] == 1
        assert gw.origin.keys[key.pack("vol", small.pack or "")] == 1
        # the first relayed range also opened (and closed after its headers) the GET that told the size
        assert gw.origin.keys[key.chunk("vol", big.id)] == 4
        text = await (await http.get(f"{gw.url}/metrics")).text()
        assert metric(text, "syncd_gateway_relayed_ranges_total") == 2
        # left by sendfile: the whole fetch (a spooled flight) and the chunk hit
        assert metric(text, "syncd_gateway_sendfile_bytes_total") == big.size + 1000


async def test_a_flipped_byte_in_a_cache_file_is_never_served(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=150)  # one ~80 KiB pack: a file
    small = next(r for e in snap.entries.values() for r in e.chunks if r.pack is not None)
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/v1/alice/vol/packs/{small.pack}"
        span = {"Range": f"bytes={small.offset}-{small.offset + small.size - 1}"}
        async with http.get(url, headers=span) as resp:
            assert content_id(await resp.read()) == small.id
        await gw.service.settled()
        (cached,) = (tmp_path / "gw" / "cache").rglob("*.val")
        data = bytearray(cached.read_bytes())
        data[small.offset] ^= 0x01  # inside the very range asked for
        cached.write_bytes(bytes(data))
        async with http.get(url, headers=span) as resp:
            assert resp.status == 206 and content_id(await resp.read()) == small.id
        key = Layout(config.prefix, "alice").pack("vol", small.pack or "")
        assert gw.origin.keys[key] == 2  # detected on the hit, evicted, fetched again
        text = await (await http.get(f"{gw.url}/metrics")).text()
        assert metric(text, "syncd_gateway_cache_corrupt_total") == 1


async def test_a_pool_gateway_killed_mid_hydrate_costs_no_failed_read(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=80, large_size=12 * MiB)
    want = snapshot_tree(tmp_path / "src")
    objects = {r.pack or r.id for e in snap.entries.values() for r in e.chunks}
    async with serve_gateway(config, tmp_path, "a") as a, serve_gateway(config, tmp_path, "b") as b:
        # the killable gateway's port: one that ranks it first for a few objects (with any port
        # it was first for none about one time in 200, and there was nothing to kill mid-hydrate)
        port = pool_port(objects, a.url, b.url, least=3)
        with gateway_process(config, tmp_path, port=port) as (proc, url):
            assert url == f"http://127.0.0.1:{port}"
            pool = (a.url, b.url, url)
            engines = [open_engine(through(worker_config(config, tmp_path, f"w{i}"), *pool)
                                   .replace(max_inflight_bytes=1 * MiB)) for i in range(4)]
            opened = [await e.__aenter__() for e in engines]
            try:
                runs = [asyncio.ensure_future(hydrate(eng, "vol", tmp_path / f"w{i}" / "dst"))
                        for i, eng in enumerate(opened)]
                deadline = time.monotonic() + 20
                while not any(source_bytes(eng).get(f"gateway:{url[7:]}") for eng in opened):
                    assert time.monotonic() < deadline and not all(r.done() for r in runs)
                    await asyncio.sleep(0.002)
                proc.kill()
                await asyncio.gather(*runs)  # every hydrate finishes: no read failed
            finally:
                for e in engines:
                    await e.__aexit__(None, None, None)
        for i in range(4):
            assert snapshot_tree(tmp_path / f"w{i}" / "dst") == want
        # restarted on the same port and cache: it serves its share again, fetching each object once
        with gateway_process(config, tmp_path, port=port) as (proc, url):
            for name in ("r1", "r2"):
                async with open_engine(through(worker_config(config, tmp_path, name), *pool)) as eng:
                    await hydrate(eng, "vol", tmp_path / name / "dst")
                    assert not store_reads(eng) and f"gateway:{url[7:]}" in source_bytes(eng)
                if name == "r1":
                    gets = a.origin.calls["get"] + b.origin.calls["get"]
                    async with aiohttp.ClientSession() as http:
                        refill = metric(await (await http.get(f"{url}/metrics")).text(),
                                        "syncd_gateway_origin_requests_total")
            async with aiohttp.ClientSession() as http:
                again = metric(await (await http.get(f"{url}/metrics")).text(), "syncd_gateway_origin_requests_total")
            assert again == refill  # the second hydrate found its share in its cache: refilled once
            assert a.origin.calls["get"] + b.origin.calls["get"] <= gets + 1  # at most a HEAD refetch
        assert snapshot_tree(tmp_path / "r2" / "dst") == want


def test_rendezvous_moves_only_the_share_of_a_joining_or_leaving_gateway() -> None:
    keys = [content_id(str(i).encode()) for i in range(20_000)]
    three = ("http://gw-1:8480", "http://gw-2:8480", "http://gw-3:8480")
    four = three + ("http://gw-4:8480",)
    before = {k: rendezvous_order(three, k)[0] for k in keys}
    after = {k: rendezvous_order(four, k)[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == four[3] for k in moved)  # only to the newcomer, from anyone
    assert abs(len(moved) / len(keys) - 1 / 4) < 0.02  # its 1/N share
    # a gateway leaving: exactly the keys it ranked first move, each to its next by rank
    two = (three[0], three[2])
    left = {k: rendezvous_order(two, k)[0] for k in keys}
    assert all(left[k] == before[k] for k in keys if before[k] != three[1])
    assert all(left[k] == rendezvous_order(three, k)[1] for k in keys if before[k] == three[1])


def test_families_are_the_layouts_keys_and_only_metadata_is_routed_by_the_store_wrapper() -> None:
    layout, oid = Layout("p", "alice"), "ab" * 16
    prefix = layout.volume_prefix("vol")
    assert prefix + FAMILIES["chunks"](oid) == layout.chunk("vol", oid)
    assert prefix + FAMILIES["packs"](oid) == layout.pack("vol", oid)
    assert prefix + FAMILIES["snapshots"](oid) == layout.snapshot("vol", oid)
    clock = Clock()
    store = GatewayStore(MemoryStore(), layout, [], head_ttl=1.0, clock=clock)
    assert store.route(layout.head("vol")) == ("vol", "HEAD", None)
    assert store.route(layout.snapshot("vol", oid)) == ("vol", "snapshots", oid)
    for key in (layout.chunk("vol", oid), layout.pack("vol", oid), layout.pruned("vol"),
                Layout("p", "bob").head("vol"), prefix + "snapshots/x", prefix + f"other/{oid}",
                layout.tree_pack("vol", oid)):    # v2 tree packs: random names, verified per tree, read direct
        assert store.route(key) is None, key
    asyncio.run(store.put(layout.head("vol"), b"{}"))  # our own write: read it from the store ...
    assert store.route(layout.head("vol")) is None
    clock.now += 1.0  # ... for the TTL
    assert store.route(layout.head("vol")) == ("vol", "HEAD", None)


async def test_a_miss_asks_the_pool_before_the_store(config: Config, tmp_path: Path) -> None:
    """Peer fill: the fallback gateway takes the object from its owner's cache; a peer never
    fetches for another, so a cold object still costs exactly one store GET."""
    _, snap = await commit_tree(config, tmp_path / "src", small_files=5, large_size=8 * MiB)  # 3+ chunks
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    ids = [r.id for e in snap.entries.values() for r in e.chunks if r.pack is None]
    layout = Layout(config.prefix, "alice")
    async with serve_gateway(config, tmp_path, "a", port=int(urls[0].rsplit(":", 1)[1]),
                             peers=Peers(urls, urls[0])) as a, \
            serve_gateway(config, tmp_path, "b", port=int(urls[1].rsplit(":", 1)[1]),
                          peers=Peers(urls, urls[1])) as b, aiohttp.ClientSession() as http:
        async def get(gw_url: str, object_id: str) -> bytes:
            async with http.get(f"{gw_url}/v1/alice/vol/chunks/{object_id}") as resp:
                assert resp.status == 200
                return await resp.read()

        warm, cold = ids[0], ids[1]
        assert content_id(await get(a.url, warm)) == warm  # a has it (one store GET) ...
        await a.service.settled()
        assert content_id(await get(b.url, warm)) == warm  # ... b, asked as a fallback, takes a's copy
        assert content_id(await get(b.url, cold)) == cold   # a has no copy of this one: b reads the store
        await b.service.settled()
        assert a.origin.keys[layout.chunk("vol", warm)] == 1 and b.origin.keys[layout.chunk("vol", warm)] == 0
        assert a.origin.keys[layout.chunk("vol", cold)] == 0 and b.origin.keys[layout.chunk("vol", cold)] == 1
        text = await (await http.get(f"{b.url}/metrics")).text()
        assert metric(text, "syncd_gateway_peer_fills_total") == 1
        async with http.get(f"{a.url}/v1/alice/vol/chunks/{ids[2]}", headers={"X-Syncd-Peer": "cache-only"}) as resp:
            assert resp.status == 404  # a peer's request never starts a fetch
        assert a.origin.keys[layout.chunk("vol", ids[2])] == 0
