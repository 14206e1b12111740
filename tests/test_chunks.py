"""Upload only what changed (issue 21): content-defined chunks, compression, the chunk index.

Everything runs on the real SeaweedFS and counts what a user pays for: the bytes of
the chunk and pack objects an edit adds to the bucket (listed from the server, not
taken from our own result), chunks reused, requests. Also the hostile side: a
decompression bomb, hostile chunk index objects, a stale index after prune, an old
format-2 volume read and upgraded, concurrent writers of the same new chunks.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard

from syncd.config import Config, KiB, MiB
from syncd.engine import edit
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.transfer import put
from syncd.engine.wiring import Engine, open_engine
from syncd.errors import IntegrityError, ManifestError
from syncd.format import tree, treewire
from syncd.format.chunkindex import encode_index
from syncd.format.chunking import content_id
from syncd.format.manifest import ChunkRef
from syncd.maint.check import check
from syncd.maint.prune import Retention, prune
from syncd.maint.reindex import index_snapshot
from syncd.store.base import put_immutable

from .checks import local_ids
from .conftest import worker_config
from .treeutil import snapshot_tree


@pytest.fixture
def cdc(config: Config) -> Config:
    """The production layout: 512 KiB average chunks, 1 MiB pack threshold, 32 MiB large packs."""
    return config.replace(chunk_size=512 * KiB, pack_threshold=1 * MiB, large_pack_size=32 * MiB,
                          max_inflight_bytes=64 * MiB)


async def data_objects(eng: Engine, volume: str) -> dict[str, int]:
    """Chunk and pack objects of the volume, as the server lists them: key -> size."""
    prefix = eng.layout.volume_prefix(volume)
    return {o.key: o.size async for o in eng.store.list_objects(prefix)
            if o.key.startswith((prefix + "chunks/", prefix + "packs/"))}


async def added_bytes(eng: Engine, volume: str, before: dict[str, int]) -> int:
    return sum(size for key, size in (await data_objects(eng, volume)).items() if key not in before)


def json_lines(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    return b"".join(json.dumps({"id": i, "user": f"user{rnd.randrange(5000)}", "score": rnd.random(),
                                "tags": rnd.sample(["a", "b", "c", "d", "e"], 2)}).encode() + b"\n"
                    for i in range(n))


async def test_edits_upload_about_one_chunk_and_reuse_the_rest(cdc: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # fixed bytes, so the same cut points every run: with random ones the overwrite's new chunks
    # passed the bound below about one time in a thousand (a cut chain can take long to resync)
    rng = random.Random(3)
    body = bytearray(rng.randbytes(24 * MiB))
    path = src / "big.bin"
    path.write_bytes(body)
    biggest = 4 * cdc.chunk_size                          # the largest chunk FastCDC cuts
    async with open_engine(cdc) as eng:
        first = await commit(eng, "vol", src)
        assert first.uploaded_bytes >= len(body) and first.reused_chunks == 0
        seen = {r.id for r in (await eng.repo.latest("vol"))[1].entries["big.bin"].chunks}  # type: ignore[union-attr]

        async def edit_and_commit() -> tuple[int, int]:
            before = await data_objects(eng, "vol")
            result = await commit(eng, "vol", src)
            added = await added_bytes(eng, "vol", before)
            refs = (await eng.repo.snapshot("vol", result.snapshot or "")).entries["big.bin"].chunks
            assert added == sum(r.stored_size for r in refs if r.id not in seen)   # the new chunks, only
            seen.update(r.id for r in refs)
            return added, result.reused_chunks

        body[10 * MiB:11 * MiB] = rng.randbytes(MiB)       # overwrite 1 MiB in place
        path.write_bytes(body)
        added, reused = await edit_and_commit()
        assert MiB <= added <= MiB + 2 * biggest and reused > 20
        body[12 * MiB:12 * MiB] = b"x"                     # insert one byte: later cuts shift back in sync
        path.write_bytes(body)
        added, reused = await edit_and_commit()
        assert 0 < added <= 2 * biggest and reused > 20
        body += rng.randbytes(MiB)                         # append 1 MiB
        path.write_bytes(body)
        added, reused = await edit_and_commit()
        assert MiB <= added <= MiB + biggest and reused > 20
    async with open_engine(worker_config(cdc, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
    assert (tmp_path / "dst" / "big.bin").read_bytes() == bytes(body)


async def test_compressible_chunks_are_stored_compressed_and_random_ones_plain(cdc: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    text = json_lines(60_000)                              # ~6 MiB of JSON lines
    noise = os.urandom(6 * MiB)
    (src / "rows.jsonl").write_bytes(text)
    (src / "noise.bin").write_bytes(noise)
    (src / "small.json").write_bytes(text[:200_000])       # a small file: packed, compressed too
    async with open_engine(cdc) as eng:
        await commit(eng, "vol", src)
        stored = sum((await data_objects(eng, "vol")).values())
        snap = await eng.repo.snapshot("vol", (await eng.repo.head("vol")).snapshot or "")
        rows, random_refs = snap.entries["rows.jsonl"].chunks, snap.entries["noise.bin"].chunks
        assert all(r.stored and r.pack for r in rows) and not any(r.stored for r in random_refs)
        assert snap.entries["small.json"].chunks[0].stored
        packed_text = sum(r.stored for r in rows)
        assert packed_text < 0.4 * len(text)
        assert stored <= len(noise) + packed_text + 200_000    # random bytes cost their size, not more
        report = await check(eng, "vol", read_data=True)
        assert report.ok, report.report()
    async with open_engine(worker_config(cdc, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
        assert eng.counter.calls["get"] <= 6                 # packs of consecutive chunks: one GET per run
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(src)


async def test_a_copy_inside_the_volume_uploads_no_chunk_data_by_any_path(cdc: Config, tmp_path: Path) -> None:
    src = tmp_path / "src" / "data"
    src.mkdir(parents=True)
    for i in range(4):
        (src / f"part{i}.bin").write_bytes(os.urandom(3 * MiB + i))
    (src / "rows.jsonl").write_bytes(json_lines(20_000))
    (src / "tiny.txt").write_bytes(b"hello\n")
    async with open_engine(cdc) as eng:
        await commit(eng, "vol", tmp_path / "src")
    # put (a commit with a fresh local index), from a worker that never saw the volume
    async with open_engine(worker_config(cdc, tmp_path, "w2")) as eng:
        before = await data_objects(eng, "vol")
        result = await put(eng, "vol", src, "copy/by-put")
        assert await added_bytes(eng, "vol", before) == 0 and result.uploaded_bytes == 0
        assert result.reused_chunks == sum(len(ids) for ids in local_ids(src, cdc).values())
    # the edit path (syncd put_file, fsspec): a file streamed in, bytes the volume holds
    async with open_engine(worker_config(cdc, tmp_path, "w3")) as eng:
        before = await data_objects(eng, "vol")
        batch = edit.Batch(eng, "vol")
        for name in ("part0.bin", "rows.jsonl", "tiny.txt"):
            writer = batch.writer(f"copy/by-edit/{name}")
            data = (src / name).read_bytes()
            for at in range(0, len(data), 100_000):
                await writer.write(data[at:at + 100_000])
            await writer.close()
        batch.copy("data", "copy/by-cp")                  # cp shares entries: no chunk moves at all
        await batch.publish()
        assert await added_bytes(eng, "vol", before) == 0
        await hydrate(eng, "vol", tmp_path / "dst")
    for copy in ("by-put", "by-cp"):
        assert snapshot_tree(tmp_path / "dst" / "copy" / copy) == snapshot_tree(src)
    assert (tmp_path / "dst" / "copy" / "by-edit" / "rows.jsonl").read_bytes() == (src / "rows.jsonl").read_bytes()


async def test_the_chunk_index_costs_follow_the_change(cdc: Config, tmp_path: Path) -> None:
    """A one-file commit lists the shards of its new chunks only and reads no index object it
    read before; the index objects of a shard are merged once they crowd."""
    src = tmp_path / "src"
    src.mkdir()
    async with open_engine(cdc) as eng:
        for i in range(20):
            (src / f"f{i}.bin").write_bytes(os.urandom(2 * MiB))
            await commit(eng, "vol", src)
        eng.counter.reset()
        (src / "last.bin").write_bytes(os.urandom(300 * KiB))    # one small file: one new chunk
        await commit(eng, "vol", src)
        assert eng.counter.calls["list"] <= 2
        prefix = eng.layout.volume_prefix("vol") + "index/"
        per_shard: dict[str, int] = {}
        async for o in eng.store.list_objects(prefix):
            shard = o.key[len(prefix):].split("/")[0]
            per_shard[shard] = per_shard.get(shard, 0) + 1
        assert per_shard and max(per_shard.values()) < 16


async def test_a_decompression_bomb_is_refused_within_the_format_bounds(cdc: Config, tmp_path: Path) -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 * MiB))      # ~8 KiB stored
    honest_size = 1 * MiB
    ref_id = content_id(bytes(honest_size))
    async with open_engine(cdc) as eng:
        pack = content_id(bomb)
        await put_immutable(eng.store, eng.layout.pack("vol", pack), bomb)
        lying = ChunkRef(ref_id, honest_size, pack, 0, len(bomb))         # claims 1 MiB plain
        with pytest.raises(IntegrityError):
            await eng.fetcher.get("vol", lying)
        with pytest.raises(ManifestError):                               # over the 16 MiB bound: not a reference
            treewire.decode_items(treewire.encode_items([treewire.TreeItem(
                edit.Entry("f", "file", 0o644, 0, 256 * MiB, (ChunkRef(ref_id, 256 * MiB, pack, 0, len(bomb)),)))]),
                "tree")
        with pytest.raises(ManifestError):                               # compressed refs only in format-3 trees
            data = treewire.encode_items([treewire.TreeItem(edit.Entry(
                "f", "file", 0o644, 0, honest_size, (lying,)))]).replace(b'"format":3', b'"format":2')
            treewire.decode_items(data, "tree")


async def test_hostile_chunk_index_entries_are_never_trusted(cdc: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3 * MiB)
    async with open_engine(cdc) as eng:
        await eng.repo.create("vol")
        chunks = [cid for _, cid in _cut(eng, data)]
        decoy = os.urandom(64 * KiB)
        decoy_pack = content_id(decoy)
        await put_immutable(eng.store, eng.layout.pack("vol", decoy_pack), decoy)
        for cid in chunks:      # entries claiming our chunks: missing object, past its end, wrong size
            shard = cid[:2]
            lies = [ChunkRef(cid, 512 * KiB, "f" * 32, 0), ChunkRef(cid, 512 * KiB, decoy_pack, 32 * KiB)]
            for object_id, stored, _ in encode_index(lies[:1]) + encode_index(lies[1:]):
                await put_immutable(eng.store, eng.layout.index_object("vol", shard, object_id), stored)
            await eng.store.put(eng.layout.index_object("vol", shard, content_id(b"junk")), b"junk")
        (src / "f.bin").write_bytes(data)
        result = await commit(eng, "vol", src)
        assert result.uploaded_bytes >= len(data) and result.reused_chunks == 0
        report = await check(eng, "vol", read_data=True)
        assert any("chunk index object" in p for p in report.problems)    # the junk object is named
    async with open_engine(worker_config(cdc, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
    assert (tmp_path / "dst" / "f.bin").read_bytes() == data


def _cut(eng: Engine, data: bytes) -> list[tuple[bytes, str]]:
    from syncd.data.chunkread import StreamCutter
    cutter = StreamCutter(eng.chunker)
    return cutter.feed(data) + cutter.finish()


async def test_prune_rewrites_the_index_and_a_stale_entry_is_uploaded_again(cdc: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    old = json_lines(30_000, seed=7)
    async with open_engine(cdc) as eng:
        (src / "rows.jsonl").write_bytes(old)
        await commit(eng, "vol", src)
        (src / "rows.jsonl").write_bytes(json_lines(30_000, seed=8))
        await commit(eng, "vol", src)
        pruned = await prune(eng, "vol", Retention(keep_snapshots=1, grace=0))
        assert pruned.deleted_objects > 0 and pruned.index_written > 0 and pruned.index_deleted > 0
        report = await check(eng, "vol")
        assert report.ok and report.index_stale == 0, report.report()
    # a worker whose local index cache still names the deleted packs: it sees them gone, uploads
    async with open_engine(cdc.replace(state_dir=tmp_path / "other-state")) as eng:
        (src / "again.jsonl").write_bytes(old)
        result = await commit(eng, "vol", src)
        assert result.uploaded_bytes > 0
        report = await check(eng, "vol", read_data=True)
        assert report.ok, report.report()
        await hydrate(eng, "vol", tmp_path / "dst")
    assert (tmp_path / "dst" / "again.jsonl").read_bytes() == old


async def test_concurrent_writers_of_the_same_new_chunks_both_land(cdc: Config, tmp_path: Path) -> None:
    shared = json_lines(40_000, seed=3) + os.urandom(2 * MiB)
    srcs = []
    for name in ("a", "b"):
        src = tmp_path / name
        src.mkdir()
        (src / f"{name}.bin").write_bytes(shared)
        srcs.append(src)

    async def one(name: str, src: Path) -> None:
        async with open_engine(worker_config(cdc, tmp_path, name)) as eng:
            await commit(eng, "vol", src)

    async with open_engine(cdc) as eng:
        await eng.repo.create("vol")
    await asyncio.gather(one("a", srcs[0]), one("b", srcs[1]))
    async with open_engine(worker_config(cdc, tmp_path, "reader")) as eng:
        report = await check(eng, "vol", read_data=True)
        assert report.ok, report.report()
        await hydrate(eng, "vol", tmp_path / "dst")
    assert (tmp_path / "dst" / "a.bin").read_bytes() == shared == (tmp_path / "dst" / "b.bin").read_bytes()


async def test_a_format_2_volume_is_read_then_upgraded_and_indexed(cdc: Config, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import syncd.engine.volumes as volumes_mod
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(20 * MiB + 3))
    (src / "rows.jsonl").write_bytes(json_lines(10_000))
    (src / "small").mkdir()
    for i in range(10):
        (src / "small" / f"s{i}.bin").write_bytes(os.urandom(200_000 + i))   # one chunk each, in any format
    v2 = cdc.replace(chunk_size=4 * MiB, pack_threshold=1 * MiB)
    with monkeypatch.context() as m:        # a writer of format 2: v2 trees/snapshot/HEAD, no compression, no index
        m.setattr(treewire, "WRITE_FORMAT", 2)
        m.setattr(tree, "FORMAT_WRITE", 2)
        m.setattr(volumes_mod, "HEAD_FORMAT", 2)
        m.setattr("syncd.data.upload.compress", lambda data: None)
        async with open_engine(v2) as eng:
            eng.chunk_index = None
            await commit(eng, "vol", src)
            head = await eng.repo.head("vol")
            assert head.format == 2 and (await eng.repo.header("vol", head.snapshot or "")).format == 2
            stored = await eng.store.get(eng.layout.snapshot("vol", head.snapshot or ""))
            assert b'"format":2' in stored.data
    async with open_engine(worker_config(cdc, tmp_path, "w2")) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")                       # read as it is
        assert snapshot_tree(tmp_path / "dst") == snapshot_tree(src)
        head, upgraded = await eng.repo.upgrade("vol")
        assert upgraded and head.format == 3 and (await eng.repo.header("vol", head.snapshot or "")).format == 3
        assert await index_snapshot(eng, "vol", head.snapshot or "") > 0
        again, upgraded = await eng.repo.upgrade("vol")
        assert not upgraded and again.snapshot == head.snapshot
        before = await data_objects(eng, "vol")
        copied = await put(eng, "vol", src / "small", "copy/small")       # found through the new index
        assert await added_bytes(eng, "vol", before) == 0
        assert (copied.reused_chunks, copied.uploaded_chunks) == (10, 0)
        # (a large version-2 file was cut elsewhere than a version-3 writer cuts it: its copy is new chunks)
        report = await check(eng, "vol", read_data=True)
        assert report.ok, report.report()


def test_trees_and_the_index_stay_bounded_on_hostile_bytes() -> None:
    from syncd.format.chunkindex import decode_index
    cid = "ab" + "0" * 30
    for stored in (zlib.compress(b"{}"), b"", zstandard.ZstdCompressor(write_content_size=False).compress(b"{}"),
                   zstandard.ZstdCompressor().compress(b'{"chunks":[["' + b"cd" + b"0" * 30 + b'",5]],"format":3}')):
        with pytest.raises(ManifestError):
            decode_index(stored, content_id(stored), "ab")
    [(object_id, stored, _)] = encode_index([ChunkRef(cid, 5)])
    assert decode_index(stored, object_id, "ab") == [ChunkRef(cid, 5)]
    with pytest.raises(ManifestError):
        decode_index(stored, "0" * 32, "ab")                              # not its content id


async def test_compressed_chunks_through_a_gateway_are_verified_whole(cdc: Config, tmp_path: Path) -> None:
    """A compressed chunk lives only in a pack, named by the hash of its stored bytes: the gateway
    verifies the whole pack before serving any of it, the worker inflates and verifies each chunk."""
    from .gatewayutil import serve_gateway, through
    src = tmp_path / "src"
    src.mkdir()
    (src / "rows.jsonl").write_bytes(json_lines(30_000))
    (src / "small.json").write_bytes(json_lines(500, seed=2))
    async with open_engine(cdc) as eng:
        await commit(eng, "vol", src)
        snap = await eng.repo.snapshot("vol", (await eng.repo.head("vol")).snapshot or "")
        assert all(c.stored for e in snap.entries.values() for c in e.chunks)
    async with serve_gateway(cdc, tmp_path) as gw:
        async with open_engine(through(worker_config(cdc, tmp_path, "w1"), gw.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "dst")
            assert eng.counter.calls["get"] == 0                     # everything came through the gateway
        assert snapshot_tree(tmp_path / "dst") == snapshot_tree(src)
        async with open_engine(cdc) as eng:                           # damage one pack in the store
            ref = snap.entries["small.json"].chunks[0]
            key = eng.layout.pack("vol", ref.pack or "")
            data = bytearray((await eng.store.get(key)).data)
            data[ref.offset + ref.stored // 2] ^= 0xFF
            await eng.store.put(key, bytes(data))
        async with open_engine(through(worker_config(cdc, tmp_path, "w2"), gw.url)) as eng:
            await hydrate(eng, "vol", tmp_path / "dst2")              # the gateway's verified copy still serves
        assert snapshot_tree(tmp_path / "dst2") == snapshot_tree(src)
    async with serve_gateway(cdc, tmp_path, name="fresh") as gw:      # a cold gateway meets the damaged pack
        async with open_engine(through(worker_config(cdc, tmp_path, "w3"), gw.url)) as eng:
            with pytest.raises(IntegrityError):
                await hydrate(eng, "vol", tmp_path / "dst3")
    assert not (tmp_path / "dst3" / "small.json").exists()


async def test_mount_commits_upload_about_one_chunk_per_edit(cdc: Config, tmp_path: Path, mounts: list[Any]) -> None:
    """The lazy mount keeps untouched lower chunks unread and cuts the dirty range by content;
    a file rewritten through a temporary name (as editors and pyarrow do) dedupes against the
    chunks of the file it replaces."""
    from .mountutil import MountProcess, fuse_missing
    if fuse_missing():
        pytest.skip(fuse_missing() or "")
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(4)                  # fixed bytes: the same cut points every run
    body = bytearray(rng.randbytes(12 * MiB))
    (src / "big.bin").write_bytes(body)
    biggest = 4 * cdc.chunk_size
    async with open_engine(cdc) as eng:
        await commit(eng, "vol", src)
    m = MountProcess(worker_config(cdc, tmp_path, "w2"), "vol", tmp_path / "mnt")
    mounts.append(m)
    m.start()
    patch = rng.randbytes(MiB)
    with open(m.path / "big.bin", "r+b") as f:                     # overwrite 1 MiB in place
        f.seek(5 * MiB)
        f.write(patch)
    body[5 * MiB:6 * MiB] = patch
    reply = m.call("commit", message="overwrite")
    assert MiB <= reply["uploaded_bytes"] <= MiB + 2 * biggest, reply
    body[8 * MiB:8 * MiB] = b"y"                                    # insert a byte: a new file renamed over
    (m.path / "big.tmp").write_bytes(bytes(body))
    os.replace(m.path / "big.tmp", m.path / "big.bin")
    reply = m.call("commit", message="insert")
    assert 0 < reply["uploaded_bytes"] <= 2 * biggest, reply
    assert m.stop() == 0
    async with open_engine(worker_config(cdc, tmp_path, "w3")) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
    assert (tmp_path / "dst" / "big.bin").read_bytes() == bytes(body)
