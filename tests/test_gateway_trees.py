"""Format v2 trees through the gateway (gateway/trees.py), on a real SeaweedFS.

A fleet reads each tree from the store once; a worker reads no tree from the
store; a corrupt cache entry is refetched, never served; a gateway that
returns wrong trees is skipped; hostile requests get 4xx and cannot make a
correct request fail. Counts, not timings.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from syncd.config import Config
from syncd.data.gatewayclient import TREES_PER_REQUEST, frame, unframe
from syncd.data.gatewaystore import GatewayStore
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine, open_engine
from syncd.format.chunking import content_id, verify
from syncd.format.layout import Layout
from syncd.format.manifest import TreeRef
from syncd.store.base import MemoryStore

from .conftest import worker_config
from .gatewayutil import commit_tree, metric, serve_app, serve_gateway, through
from .treeutil import snapshot_tree


def tree_gets(counts: dict[str, int]) -> int:
    return sum(n for key, n in counts.items() if "/trees/" in key)


async def all_refs(eng: Engine, sid: str) -> list[TreeRef]:
    """Every tree reference of a snapshot, root first (read straight from the store)."""
    root = (await eng.repo.header("vol", sid)).root
    assert root is not None
    refs, level = [root], [root]
    while level:
        items = await eng.repo.trees.get_many("vol", level)
        level = [i.tree for ref in level for i in items[ref.id] if i.tree is not None]
        refs += level
    return refs


async def test_a_fleet_reads_each_tree_from_the_store_once(config: Config, tmp_path: Path) -> None:
    sid, _ = await commit_tree(config, tmp_path / "src", small_files=60)
    async with open_engine(worker_config(config, tmp_path, "direct")) as eng:  # for comparison
        await hydrate(eng, "vol", tmp_path / "direct" / "dst")
        direct_tree_gets = tree_gets(eng.counter.keys)
        trees = len(await all_refs(eng, sid))
    # one ranged GET per level (10 directories in 3 levels), one more for the links check's
    # reads of the directories that hold links, before the walk (hydratewalk.py)
    assert direct_tree_gets <= 4 and trees == 10

    async with serve_gateway(config, tmp_path) as gw:
        async def worker(name: str) -> dict[str, int]:
            async with open_engine(through(worker_config(config, tmp_path, name), gw.url)) as eng:
                await hydrate(eng, "vol", tmp_path / name / "dst")
                return dict(eng.counter.keys)

        reads = await asyncio.gather(*(worker(f"w{i}") for i in range(4)))  # at once: single flight
        assert reads == [{}] * 4                     # no worker read anything from the store
        assert tree_gets(gw.origin.keys) == direct_tree_gets   # the gateway read each span once
        text = gw.service.metrics.render().decode()
        assert metric(text, "syncd_gateway_cache_misses_total", kind="trees") == trees
        assert await worker("late") == {}            # a later worker: every tree a cache hit
        assert tree_gets(gw.origin.keys) == direct_tree_gets
        text = gw.service.metrics.render().decode()
        assert metric(text, "syncd_gateway_cache_hits_total", kind="trees") >= trees
    for name in ("w0", "w3", "late"):
        assert snapshot_tree(tmp_path / name / "dst") == snapshot_tree(tmp_path / "src")


async def test_a_corrupt_cached_tree_is_refetched_never_served(config: Config, tmp_path: Path) -> None:
    await commit_tree(config, tmp_path / "src", small_files=20)
    async with serve_gateway(config, tmp_path) as gw:
        async with open_engine(through(worker_config(config, tmp_path, "a"), gw.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "a" / "dst")
        disk = gw.service.cache._cache
        keys = [k for k in disk.iterkeys() if ":trees:" in k]
        assert len(keys) == 10
        for key in keys:                            # flip one byte of every cached tree
            data = bytearray(disk[key])
            data[len(data) // 2] ^= 0x01
            disk[key] = bytes(data)
        before = tree_gets(gw.origin.keys)          # a cold gateway's reads: a span per level
        assert before <= 4
        async with open_engine(through(worker_config(config, tmp_path, "b"), gw.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "b" / "dst")
            assert not eng.counter.keys and eng.pooled is not None and eng.pooled.rejected == 0
        text = gw.service.metrics.render().decode()
        assert metric(text, "syncd_gateway_cache_corrupt_total") == 10
        assert tree_gets(gw.origin.keys) == 2 * before  # refetched, as a cold gateway read them
    assert snapshot_tree(tmp_path / "b" / "dst") == snapshot_tree(tmp_path / "src")


async def test_a_gateway_serving_wrong_trees_is_skipped(config: Config, tmp_path: Path) -> None:
    """A gateway whose tree answers are well-framed but wrong: the worker rejects them and reads the
    trees from the store itself; the hydrate is correct."""
    await commit_tree(config, tmp_path / "src", small_files=20)

    async def lying(request: web.Request) -> web.Response:
        doc = await request.json()
        return web.Response(body=frame([b'{"entries":[],"format":2}'] * len(doc["trees"])))

    async def absent(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_post("/v1/{owner}/{volume}/trees/{pack}", lying)
    app.router.add_route("*", "/{tail:.*}", absent)
    async with serve_app(app) as url, open_engine(through(worker_config(config, tmp_path, "w"), url)) as eng:
        await hydrate(eng, "vol", tmp_path / "w" / "dst")
        assert eng.pooled is not None and eng.pooled.rejected == tree_gets(eng.counter.keys) <= 4
    assert snapshot_tree(tmp_path / "w" / "dst") == snapshot_tree(tmp_path / "src")


async def test_tree_requests_are_checked_and_a_wrong_one_fails_alone(config: Config, tmp_path: Path) -> None:
    sid, _ = await commit_tree(config, tmp_path / "src", small_files=20)
    async with open_engine(config) as eng:
        refs = await all_refs(eng, sid)
    root = refs[0]
    async with serve_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/v1/alice/vol/trees/{root.pack}"

        async def post(body: object, at: str = url) -> tuple[int, bytes]:
            data = io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
            async with http.post(at, data=data, headers={"Content-Type": "application/json"}) as resp:
                return resp.status, await resp.read()

        wrong = [root.id, root.offset + 1, root.size]   # the root tree, named one byte off
        (bad, _), (good, body) = await asyncio.gather(post({"trees": [wrong]}),
                                                      post({"trees": [[root.id, root.offset, root.size]]}))
        assert (bad, good) == (502, 200)              # the wrong reference fails alone
        canonical, = unframe(body, 1)
        assert verify(root.id, canonical)
        same = [r for r in refs if r.pack == root.pack]
        status, body = await post({"trees": [[r.id, r.offset, r.size] for r in same]})
        assert status == 200 and all(verify(r.id, t) for r, t in zip(same, unframe(body, len(same)), strict=True))

        assert (await post(b"not json"))[0] == 400
        assert (await post({"trees": []}))[0] == 400
        assert (await post({"trees": [[root.id, -1, 5]]}))[0] == 400
        assert (await post({"trees": [[root.id, 0, 5]] * 4097}))[0] == 400
        assert (await post({"trees": [["x" * 32, 0, 5]]}))[0] == 400
        assert (await post({"trees": [[root.id, 0, 300 << 20]]}))[0] == 400      # above the format's bound
        gets = gw.origin.calls["get"]
        far = [["ab" * 16, 0, 10], ["cd" * 16, 40 << 20, 10]]                  # a span above 32 MiB
        assert (await post({"trees": far}))[0] == 400 and gw.origin.calls["get"] == gets
        assert (await post({"trees": [[root.id, 0, 5]], "extra": 1}))[0] == 400
        assert (await post(b"[" + b" " * (2 << 20) + b"]"))[0] == 413
        assert (await post({"trees": [[root.id, 0, 5]]}, f"{gw.url}/v1/alice/vol/trees/{'Z' * 32}"))[0] == 400
        # trees are cached by id (the pack only says where a miss reads): an unknown pack is 404 ...
        assert (await post({"trees": [["ab" * 16, 0, 5]]}, f"{gw.url}/v1/alice/vol/trees/{'0' * 32}"))[0] == 404
        assert (await post({"trees": [[root.id, 0, 5]]}, f"{gw.url}/v1/alice/.hidden/trees/{root.pack}"))[0] == 400
        # ... and per owner: bob cannot be served alice's tree by naming it
        assert (await post({"trees": [[root.id, root.offset, root.size]]},
                           f"{gw.url}/v1/bob/vol/trees/{root.pack}"))[0] == 404


async def test_tree_requests_need_the_owners_token(config: Config, tmp_path: Path) -> None:
    sid, _ = await commit_tree(config, tmp_path / "src", small_files=5)
    async with open_engine(config) as eng:
        root = (await all_refs(eng, sid))[0]
    body = {"trees": [[root.id, root.offset, root.size]]}
    async with serve_gateway(config, tmp_path, tokens={"t-alice": "alice", "t-bob": "bob"}) as gw, \
            aiohttp.ClientSession() as http:
        url = f"{gw.url}/v1/alice/vol/trees/{root.pack}"
        statuses = []
        for token in (None, "t-bob", "t-alice"):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.post(url, json=body, headers=headers) as resp:
                statuses.append(resp.status)
        assert statuses == [401, 403, 200]
        assert tree_gets(gw.origin.keys) == 1  # refused requests read nothing


async def test_a_wide_level_is_asked_for_in_requests_the_gateway_accepts() -> None:
    """More references than one request may name: several requests, all verified (pure logic)."""
    trees = {content_id(b"%d" % i): b"%d" % i for i in range(5000)}
    refs = [TreeRef(i, "ab" * 16, n * 10, 10) for n, i in enumerate(trees)]

    class Source:
        name = "fake"
        sizes: list[int] = []

        def weight(self, key: str) -> int:
            return 1

        async def fetch_trees(self, volume: str, pack: str, asked: Sequence[TreeRef]) -> list[bytes] | None:
            self.sizes.append(len(asked))
            return [trees[r.id] for r in asked]

    source = Source()
    pool = GatewayStore(MemoryStore(), Layout("p", "alice"), [source])  # type: ignore[list-item]
    assert await pool.fetch_trees("vol", "ab" * 16, refs) == trees
    assert source.sizes == [TREES_PER_REQUEST, 5000 - TREES_PER_REQUEST]
