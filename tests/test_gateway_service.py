"""The gateway's HTTP surface and cache, against a real SeaweedFS: single-flight, auth, Range, corruption."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.auth import Decision, Tokens
from gateway.flight import Flight
from gateway.service import ObjectRef
from syncd.config import Config
from syncd.errors import ConfigError, TransientStoreError
from syncd.format.chunking import content_id
from syncd.format.manifest import ChunkRef, Snapshot
from syncd.store.base import BlobStream, ObjectStore, open_stream

from .gatewayutil import commit_tree, metric, serve_gateway

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
ALICE = {"Authorization": "Bearer tok-alice"}


def big_chunks(snap: Snapshot) -> list[ChunkRef]:
    return [r for e in snap.entries.values() for r in e.chunks if r.pack is None]


def packed(snap: Snapshot) -> list[ChunkRef]:
    return [r for e in snap.entries.values() for r in e.chunks if r.pack is not None]


async def test_concurrent_misses_cause_one_origin_get(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=20)
    ref = big_chunks(snap)[0]
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw, aiohttp.ClientSession() as http:
        async def get() -> bytes:
            async with http.get(f"{gw.url}/v1/alice/vol/chunks/{ref.id}", headers=ALICE) as resp:
                assert resp.status == 200
                return await resp.read()

        bodies = await asyncio.gather(*(get() for _ in range(12)))
        assert all(content_id(b) == ref.id for b in bodies)
        key = gw.service.key(ObjectRef("alice", "vol", "chunks", ref.id))
        assert gw.origin.keys[key] == 1
        assert gw.origin.bytes_in == ref.size
        # a later request is a cache hit: still one GET
        assert content_id(await get()) == ref.id
        assert gw.origin.keys[key] == 1
        metrics = await (await http.get(f"{gw.url}/metrics")).text()
        assert metric(metrics, "syncd_gateway_cache_misses_total", kind="chunks") == 1
        # the other twelve joined the fetch in flight or, if it had finished, hit the cache
        assert (metric(metrics, "syncd_gateway_singleflight_joins_total", kind="chunks")
                + metric(metrics, "syncd_gateway_cache_hits_total", kind="chunks")) == 12
        assert metric(metrics, "syncd_gateway_origin_bytes_total") == ref.size
        assert metric(metrics, "syncd_gateway_served_bytes_total", kind="chunks") == 13 * ref.size


class GatedStore:
    """Streams from ``inner`` but holds the last piece back until ``gate`` is set; may flip a bit."""

    def __init__(self, inner: ObjectStore, corrupt: bool = False) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.corrupt = corrupt

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    @contextlib.asynccontextmanager
    async def get_stream(self, key: str, start: int | None = None,
                         end: int | None = None) -> AsyncIterator[BlobStream]:
        async with open_stream(self.inner, key, start, end) as stream:
            yield BlobStream(stream.size, stream.etag, self._gated(stream))

    async def _gated(self, stream: BlobStream) -> AsyncIterator[bytes]:
        got = 0
        async for piece in stream.pieces:
            got += len(piece)
            if got == stream.size:
                await self.gate.wait()
                if self.corrupt:
                    piece = piece[:-1] + bytes([piece[-1] ^ 1])
            yield piece


async def test_followers_stream_before_the_object_is_complete(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=20)
    ref = max(big_chunks(snap), key=lambda r: r.size)          # chunks are cut by content: the largest
    async with serve_gateway(config, tmp_path) as gw:
        gated = GatedStore(gw.service.store)
        gw.service.store = gated  # type: ignore[assignment]
        obj = ObjectRef("alice", "vol", "chunks", ref.id)
        leader, follower = await gw.service.open(obj), await gw.service.open(obj)
        assert isinstance(follower, Flight) and follower is leader
        assert await asyncio.wait_for(follower.length(), 5) == ref.size
        # the follower gets the first bytes while the store has not finished sending
        first = await asyncio.wait_for(anext(aiter(follower.read(0, ref.size))), 5)
        assert 0 < len(first) < ref.size and not follower.verified
        # ... but the end of a range is held back until the whole object is verified
        tail = asyncio.ensure_future(_collect(follower, ref.size - 10, ref.size))
        await asyncio.sleep(0.05)
        assert not tail.done()
        gated.gate.set()
        assert await asyncio.wait_for(tail, 5) == (await _collect(leader, 0, ref.size))[-10:]
        assert content_id(await _collect(leader, 0, ref.size)) == ref.id
        leader.close()
        follower.close()


async def test_bad_bytes_from_the_store_never_complete_a_response(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=2)
    ref = big_chunks(snap)[0]
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        gated = GatedStore(gw.service.store, corrupt=True)
        gated.gate.set()
        gw.service.store = gated  # type: ignore[assignment]
        url = f"{gw.url}/v1/alice/vol/chunks/{ref.id}"
        for _ in range(2):  # the bad copy was not cached either
            with pytest.raises(aiohttp.ClientPayloadError):
                async with http.get(url) as resp:
                    assert resp.status == 200  # headers went out before the last byte arrived
                    await resp.read()
            await gw.service.settled()
        assert list((tmp_path / "gw" / "cache").rglob("*.val")) == []
        gw.service.store = gated.inner  # type: ignore[assignment]
        async with http.get(url) as resp:
            assert content_id(await resp.read()) == ref.id


class CutOffStore(GatedStore):
    """Breaks the first body off after its first piece, as a dropped connection would."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.gate.set()
        self.cuts = 0
        self.first = 0      # bytes the cut-off body delivered before it broke

    async def _gated(self, stream: BlobStream) -> AsyncIterator[bytes]:
        async for piece in stream.pieces:
            yield piece
            if self.cuts == 0:
                self.cuts += 1
                self.first = len(piece)
                raise TransientStoreError("connection reset mid-body")


async def test_a_body_cut_off_by_the_store_is_resumed(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=2)
    ref = big_chunks(snap)[0]
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        origin = gw.origin
        cut = gw.service.store = CutOffStore(origin)  # type: ignore[assignment]
        async with http.get(f"{gw.url}/v1/alice/vol/chunks/{ref.id}") as resp:
            assert content_id(await resp.read()) == ref.id
        # the cut-off GET and one ranged GET for the rest; none when it broke after the last byte
        # (a chunk cut by content can arrive in one piece: a range from its end would be a 416)
        assert origin.calls["get"] == (1 if cut.first == ref.size else 2)
        assert origin.bytes_in == ref.size  # nothing was read twice


async def _collect(body: Flight, start: int, end: int) -> bytes:
    return b"".join([bytes(p) async for p in body.read(start, end)])


async def test_auth_names_and_not_found(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=2)
    ref = big_chunks(snap)[0]
    path = f"/v1/alice/vol/chunks/{ref.id}"
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw, aiohttp.ClientSession() as http:
        async def status(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> int:
            async with http.request(method, gw.url + url, headers=headers) as resp:
                await resp.read()
                return resp.status

        assert await status(path) == 401
        assert await status(path, {"Authorization": "Bearer nope"}) == 401
        assert await status(path, {"Authorization": "Basic tok-alice"}) == 401
        assert await status(path, {"Authorization": "Bearer tok-bob"}) == 403
        assert await status("/v1/alice/vol/warm", {"Authorization": "Bearer tok-bob"}, "POST") == 403
        assert await status(path, ALICE) == 200
        assert await status("/healthz") == 200 and await status("/metrics") == 200
        # names and ids are validated before any key is built
        assert await status(f"/v1/alice/..%2F..%2Fbob%2Fvol/chunks/{ref.id}", ALICE) in (400, 404)
        assert await status(f"/v1/alice/.hidden/chunks/{ref.id}", ALICE) == 400
        assert await status(f"/v1/alice/vol/chunks/{ref.id.upper()}", ALICE) == 400
        assert await status("/v1/alice/vol/chunks/HEAD", ALICE) == 400
        assert await status("/v1/alice/vol/HEADS/" + ref.id, ALICE) == 404  # no such key family
        # a valid id the volume does not hold, or another volume of the owner
        assert await status(f"/v1/alice/vol/chunks/{'0' * 32}", ALICE) == 404
        assert await status(f"/v1/alice/other/chunks/{'1' * 32}", ALICE) == 404
        assert gw.origin.calls["get"] == 3  # the 200 and the two 404s; refused requests cost nothing


async def test_range_etag_and_head(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=20)
    ref = big_chunks(snap)[0]
    small = packed(snap)[3]
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/v1/alice/vol/chunks/{ref.id}"
        async with http.get(url) as resp:
            whole = await resp.read()
            assert resp.headers["ETag"] == f'"{ref.id}"'
            assert "immutable" in resp.headers["Cache-Control"]
            assert resp.headers["Accept-Ranges"] == "bytes"
        size = ref.size
        for header, first, last in (("bytes=10-19", 10, 19), ("bytes=-7", size - 7, size - 1),
                                    (f"bytes={size - 5}-", size - 5, size - 1), ("bytes=0-", 0, size - 1),
                                    (f"bytes=100-{size * 2}", 100, size - 1)):
            async with http.get(url, headers={"Range": header}) as resp:
                assert resp.status == 206, header
                assert await resp.read() == whole[first:last + 1], header
                assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        for bad in (f"bytes={ref.size}-", "bytes=9-3", "items=0-1"):
            async with http.get(url, headers={"Range": bad}) as resp:
                assert resp.status == 416, bad
                assert resp.headers["Content-Range"] == f"bytes */{ref.size}"
        async with http.get(url, headers={"If-None-Match": f'"{ref.id}"'}) as resp:
            assert resp.status == 304
        async with http.head(url) as resp:
            assert resp.status == 200 and resp.content_length == ref.size
        # a small file is a range of its pack; the gateway fetched and verified the whole pack
        pack_url = f"{gw.url}/v1/alice/vol/packs/{small.pack}"
        span = f"bytes={small.offset}-{small.offset + small.size - 1}"
        async with http.get(pack_url, headers={"Range": span}) as resp:
            assert resp.status == 206
            assert content_id(await resp.read()) == small.id
        assert gw.origin.calls["get"] == 2  # one chunk, one pack


async def test_corrupt_cache_entry_is_evicted_and_refetched(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=2)
    ref = big_chunks(snap)[0]
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/v1/alice/vol/chunks/{ref.id}"
        async with http.get(url) as resp:
            assert content_id(await resp.read()) == ref.id
        await gw.service.settled()
        files = list((tmp_path / "gw" / "cache").rglob("*.val"))
        assert len(files) == 1  # diskcache keeps large values as files
        data = bytearray(files[0].read_bytes())
        data[1000] ^= 0xFF
        files[0].write_bytes(bytes(data))
        async with http.get(url) as resp:
            assert resp.status == 200
            assert content_id(await resp.read()) == ref.id
        assert gw.origin.calls["get"] == 2  # detected, evicted, fetched again
        metrics = await (await http.get(f"{gw.url}/metrics")).text()
        assert metric(metrics, "syncd_gateway_cache_corrupt_total") == 1
        async with http.get(url) as resp:  # the refetched copy is good: a hit
            assert content_id(await resp.read()) == ref.id
        assert gw.origin.calls["get"] == 2


async def test_warm_endpoint_prefetches_a_snapshot(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=20)
    objects = len(big_chunks(snap)) + len({r.pack for r in packed(snap)})
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw, aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/v1/alice/vol/warm", headers=ALICE) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["snapshot"] and answer["objects"] == objects == answer["fetched"]
        assert answer["failed"] == []
        gets = gw.origin.calls["get"]
        async with http.post(f"{gw.url}/v1/alice/vol/warm", headers=ALICE) as resp:
            again = await resp.json()
        assert again["cached"] == objects and again["fetched"] == 0
        assert gw.origin.calls["get"] == gets + 1  # only HEAD; snapshot objects all cached
        async with http.post(f"{gw.url}/v1/alice/vol/warm", headers=ALICE, json={"chunks": ["x"]}) as resp:
            assert resp.status == 400
        async with http.post(f"{gw.url}/v1/alice/nope/warm", headers=ALICE) as resp:
            assert resp.status == 404


def test_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# team tokens\ntok-1 alice\n\ntok-2   bob  # ci\n")
    tokens = Tokens.load(path)
    assert tokens.decide("Bearer tok-1", "alice") is Decision.ALLOW
    assert tokens.decide("bearer tok-2", "bob") is Decision.ALLOW
    assert tokens.decide("Bearer tok-2", "alice") is Decision.FORBIDDEN
    assert tokens.decide("Bearer tok-3", "alice") is Decision.UNAUTHENTICATED
    assert tokens.decide(None, "alice") is Decision.UNAUTHENTICATED
    for bad in ("tok-1\n", "tok-1 alice extra\n", "tok-1 ../bob\n", "# nothing\n"):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            Tokens.load(path)


async def test_requests_beyond_the_limit_wait_briefly_then_get_503(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory is bounded by requests in flight; a worker seeing 503 reads elsewhere."""
    from aiohttp.test_utils import TestClient, TestServer

    import gateway.app as gateway_app
    from gateway.service import GatewayService
    from syncd.engine.wiring import open_engine

    monkeypatch.setattr(gateway_app, "QUEUE_WAIT", 0.2)
    async with open_engine(config.replace(gateways=()), use_cache=False) as engine:
        service = GatewayService(engine.store, config.prefix, tmp_path / "gwcache", 64 * 1024 * 1024)
        app = gateway_app.create_app(service, Tokens(None), max_requests=1)
        url = f"/v1/{config.owner}/vol/chunks/{'ab' * 16}"
        try:
            async with TestClient(TestServer(app)) as client:
                await app[gateway_app.SLOTS].acquire()  # one request is in flight
                busy = await client.get(url)
                assert busy.status == 503
                assert (await client.get("/healthz")).status == 200  # health is never shed
                app[gateway_app.SLOTS].release()
                assert (await client.get(url)).status == 404  # served again: no such chunk
        finally:
            await service.close()
