"""A commit of many small files works a step at a time, not a file at a time (issue 19).

The small files a commit reads reach the uploader a step at a time (up to READ_STEP bytes):
one task looks the step's chunks up in the chunk index (one query of its local cache),
compresses them and packs them, and the new chunks' references go into that cache in one
transaction at the end. Counted on the real server at 600 and 3,000 files: the uploader's
tasks and the chunk-index cache's queries and writes may not grow with the number of files. Then what the batching must keep: dedupe through the chunk
index (a worker that never saw the volume commits copies and uploads nothing), the
references a commit recorded are in the local cache when it returns (the next write there
reads no index object), with or without SQLite's JSON functions, and the byte budget
(tests/test_upload_budget.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import shutil
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from syncd.config import Config
from syncd.data import chunkindex
from syncd.data.upload import Uploader
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.errors import TransientStoreError
from syncd.format.chunking import content_id
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef
from syncd.store.base import MemoryStore, ObjectInfo

from .conftest import worker_config
from .treeutil import snapshot_tree


def _fill(root: Path, files: int, seed: int) -> None:
    rng = random.Random(seed)
    for n in range(files):
        leaf = root / f"d{n % 10}"
        leaf.mkdir(parents=True, exist_ok=True)
        (leaf / f"f{n}.bin").write_bytes(rng.randbytes(rng.randint(0, 1500)))


class _Calls:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n: Counter[str] = Counter()
        place, place_small, run = Uploader._place, Uploader._place_small, chunkindex._Cache._run

        async def counted_place(up: Uploader, *args: Any) -> None:
            self.n["place one chunk"] += 1
            await place(up, *args)

        async def counted_place_small(up: Uploader, chunks: Any) -> None:
            self.n["place small chunks"] += 1
            await place_small(up, chunks)

        def counted_run(cache: chunkindex._Cache, fn_name: str, *args: object) -> object:
            self.n[f"cache {fn_name}"] += 1
            return run(cache, fn_name, *args)

        monkeypatch.setattr(Uploader, "_place", counted_place)
        monkeypatch.setattr(Uploader, "_place_small", counted_place_small)
        monkeypatch.setattr(chunkindex._Cache, "_run", counted_run)


async def _first_commit(config: Config, tmp_path: Path, files: int, monkeypatch: pytest.MonkeyPatch,
                        ) -> dict[str, int]:
    src = tmp_path / f"src{files}"
    _fill(src, files, seed=files)
    calls = _Calls(monkeypatch)
    async with open_engine(dataclasses.replace(config, state_dir=tmp_path / f"state{files}")) as engine:
        result = await commit(engine, f"v{files}", src)
        assert result.files_read == files
    out = dict(calls.n)
    out.pop("cache keys", None)          # one per shard listed: up to 256 whatever the size
    return out


async def test_a_first_commit_costs_tasks_and_queries_per_step_not_per_file(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = await _first_commit(config, tmp_path, 600, monkeypatch)
    large = await _first_commit(config, tmp_path, 3000, monkeypatch)
    assert small == large, (small, large)           # 3,000 files of 0-1.5 KB are one step, as 600 are
    assert "place one chunk" not in large           # no task per chunk
    assert large["place small chunks"] == 1
    assert large.get("cache find", 0) <= 1          # a new volume's shards are empty: nothing to ask
    assert large["cache apply_many"] == 1           # the new chunks' references: one transaction


async def test_batched_small_files_still_dedupe_and_the_recorded_references_are_cached(
        config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src" / "a"
    _fill(src, 400, seed=7)
    async with open_engine(config) as engine:
        first = await commit(engine, "vol", tmp_path / "src")
        assert first.uploaded_chunks == sum(1 for p in src.rglob("*.bin") if p.stat().st_size)
        shutil.copytree(src, tmp_path / "src" / "b")       # the same bytes again, new files
        read = engine.chunk_index.objects_read if engine.chunk_index else 0
        again = await commit(engine, "vol", tmp_path / "src")
        assert again.files_read == 400 and again.uploaded_bytes == 0
        assert engine.chunk_index is not None and engine.chunk_index.objects_read == read
    copy = tmp_path / "elsewhere"
    shutil.copytree(src, copy / "c")
    async with open_engine(worker_config(config, tmp_path, "w2")) as other:   # never saw the volume
        third = await commit(other, "vol", copy)
        assert third.files_read == 400 and third.uploaded_bytes == 0
        assert third.reused_chunks == first.uploaded_chunks
        assert other.chunk_index is not None and other.chunk_index.objects_read > 0
        await hydrate(other, "vol", tmp_path / "dst")
    for name in ("a", "b", "c"):
        assert snapshot_tree(tmp_path / "dst" / name) == snapshot_tree(src)


class _NoJson:
    """A connection whose SQLite lacks the JSON functions (older builds)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if "json_each" in sql:
            raise sqlite3.OperationalError("no such table: json_each")
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self.db.executemany(sql, rows)


@pytest.mark.parametrize("json_functions", [True, False])
def test_the_chunk_index_cache_takes_a_record_in_json_statements_or_row_by_row(
        tmp_path: Path, json_functions: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkindex, "JSON_ROWS", 64)          # several statements of one transaction
    cache = chunkindex._Cache(tmp_path / "cache.sqlite3")
    refs = [ChunkRef(content_id(b"%d" % i), 100 + i, content_id(b"pack"), 100 * i, 50 if i % 2 else 0)
            for i in range(300)] + [ChunkRef(content_id(b"own"), 7)]
    odd_key = 'p"re\\fix/alice/v/index/00/' + content_id(b"x")      # a key prefix is any text
    db = cache._connect()
    try:
        chunkindex._Cache._db_apply_many(db if json_functions else _NoJson(db),    # type: ignore[arg-type]
                                         "v", [("00", [], {odd_key: refs[:200]}), ("01", [], {"k/1": refs[200:]})])
        found = chunkindex._Cache._db_find(db, "v", [r.id for r in refs])
        assert found == {r.id: [r] for r in refs}
        assert dict(db.execute("SELECT id, key FROM refs WHERE volume='v'").fetchall()) == \
            {**{r.id: odd_key for r in refs[:200]}, **{r.id: "k/1" for r in refs[200:]}}
        assert chunkindex._Cache._db_keys(db, "v", "00") == {odd_key}
    finally:
        db.close()


async def test_rows_of_paths_a_commit_leaves_out_are_not_written_and_the_rest_are(
        config: Config, tmp_path: Path) -> None:
    """A symlink that leads out of the volume only through others is left out after the pass
    (commit.py), so the spooled batch is written without it: the rows of every other path,
    and digests that agree with them (the next commit reads nothing again)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}.txt").write_bytes(b"%d\n" % i)
    os.symlink("..", src / "d" / "e")          # the root: fine alone
    os.symlink("d/e", src / "a")               # the root: fine alone
    os.symlink("a/..", src / "x")              # out of the volume, through both
    async with open_engine(config) as engine:
        first = await commit(engine, "vol", src)
        assert first.skipped == ["x"] and first.files_read == 5
        rows = await engine.index.rows("vol", src, ["a", "d/e", "d/f0.txt", "x"])
        assert set(rows) == {"a", "d/e", "d/f0.txt"}
        again = await commit(engine, "vol", src)
        assert again.skipped == ["x"] and again.files_read == 0
        await hydrate(engine, "vol", tmp_path / "dst")
    assert not os.path.lexists(tmp_path / "dst" / "x")
    assert sorted(p.name for p in (tmp_path / "dst" / "d").iterdir()) == ["e"] + [f"f{i}.txt" for i in range(5)]


class _ShardDown(MemoryStore):
    """Listing one chunk-index shard fails (after a moment, so other listings are under way)."""

    def __init__(self, shard: str) -> None:
        super().__init__()
        self.shard = shard

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        await asyncio.sleep(0.01 if prefix.endswith(f"/{self.shard}/") else 0.05)
        if prefix.endswith(f"/{self.shard}/"):
            raise TransientStoreError(f"LIST {prefix}: down")
        async for info in super().list_objects(prefix):
            yield info


async def test_a_shard_that_cannot_be_listed_costs_a_batch_its_lookups_not_the_other_shards(tmp_path: Path) -> None:
    """One batch's lookups list many shards at once: one failing means that batch uploads, as
    find() does, and must not cancel the listings of the others, which later batches share."""
    ids = [content_id(b"%d" % i) for i in range(64)]
    down = ids[0][:2]
    index = chunkindex.ChunkIndex(_ShardDown(down), Layout("p", "alice"), tmp_path, "scope")
    session = index.session("vol")
    assert await session.find_many([(i, 1) for i in ids]) == {}          # down: looked up nowhere
    others = [i for i in ids if not i.startswith(down)]
    assert await session.find_many([(i, 1) for i in others]) == {}       # listed once, nothing there
    assert session.lists == len({i[:2] for i in ids})
