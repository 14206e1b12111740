"""The local SQLite work of a 1-file agent commit does not grow with the volume (issue 19).

The rows a commit decodes are counted elsewhere (test_scale_structure.py); a query can
still walk every row of the volume inside SQLite and hand back only the one that matches.
The planner chose exactly that for the rename lookup by inode (the primary key's ``vol``
prefix instead of ``files_ino``): 74 ms per new file at 300,000 rows, 0.5 s of the agent's
1-file commit at 1,000,000. So here every SQLite connection syncd opens counts the virtual
machine instructions it executes (a progress handler called on each: a count, not a time),
by database (the sync index, the chunk index cache, the chunk cache), and a commit of a new
file, a changed file, a file renamed and a directory removed, each given as the watcher's
paths, must cost the same number of instructions in a 1,000-file and a 5,000-file volume.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from syncd.config import Config
from syncd.data import chunkindex
from syncd.engine.commit import commit
from syncd.engine.wiring import open_engine
from syncd.format.chunking import content_id
from syncd.format.manifest import ChunkRef

from .test_scale_structure import _fill


class _Steps:
    """SQLite VM instructions executed, by database directory (index, chunkindex, the cache)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: Counter[str] = Counter()
        real = sqlite3.connect

        def connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn: sqlite3.Connection = real(database, *args, **kwargs)
            where = Path(str(database)).parent.name

            def step() -> int:
                self.steps[where] += 1
                return 0

            conn.set_progress_handler(step, 1)
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)


async def _costs(config: Config, tmp_path: Path, other_dirs: int, monkeypatch: pytest.MonkeyPatch,
                 ) -> dict[str, dict[str, int]]:
    name, a = f"sql-{other_dirs}", tmp_path / f"a{other_dirs}"
    _fill(a, other_dirs)
    counter = _Steps(monkeypatch)
    out: dict[str, dict[str, int]] = {}
    async with open_engine(dataclasses.replace(config, state_dir=tmp_path / f"state{other_dirs}")) as engine:
        await commit(engine, name, a)

        async def measure(op: str, changed: set[str], files_read: int) -> None:
            before = Counter(counter.steps)
            done = await commit(engine, name, a, changed=changed)
            assert done.changed >= 1 and done.files_read == files_read, (op, done)
            out[op] = dict(counter.steps - before)

        (a / "p" / "d4" / "new.txt").write_bytes(b"a new file: is it another's, renamed?\n")
        await measure("new file", {"p/d4/new.txt", "p/d4", "p"}, 1)
        (a / "p" / "d3" / "f7.txt").write_bytes(b"changed in place\n")
        await measure("changed file", {"p/d3/f7.txt", "p/d3", "p"}, 1)
        os.rename(a / "p" / "d5" / "f1.txt", a / "p" / "d6" / "moved.txt")
        await measure("renamed file", {"p/d5/f1.txt", "p/d5", "p/d6/moved.txt", "p/d6", "p"}, 0)
        shutil.rmtree(a / "p" / "d7")
        await measure("removed directory", {"p/d7", "p"}, 0)
    return out


async def test_sqlite_work_of_a_hinted_commit_is_the_same_at_1000_and_5000_files(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = await _costs(config, tmp_path, 0, monkeypatch)
    large = await _costs(config, tmp_path, 40, monkeypatch)
    print(small, large)
    for op in small:      # the chunk cache (diskcache) opens a connection per thread: not compared
        small[op].pop("cache", None), large[op].pop("cache", None)
    assert small["new file"]["index"] > 0 and small["new file"]["chunkindex"] > 0   # the counter sees both
    assert small == large, (small, large)


def _cache_costs(tmp_path: Path, others: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """SQLite instructions of the chunk index cache's per-shard and per-object questions, with
    ``others`` index objects of 100 references each in the cache besides the one asked about."""
    cache = chunkindex._Cache(tmp_path / f"chunkindex-{others}" / "cache.sqlite3")
    counter = _Steps(monkeypatch)

    def refs(n: int, tag: str) -> list[ChunkRef]:
        return [ChunkRef(content_id(f"{tag}/{i}".encode()), 10, content_id(tag.encode()), 10 * i) for i in range(n)]

    for k in range(others):
        cache._run("apply", "v", f"{k % 256:02x}", [], {f"v/index/{k % 256:02x}/o{k}": refs(100, f"o{k}")})
    cache._run("apply", "v", "zz", [], {"v/index/zz/mine": refs(3, "mine")})
    out = {}
    for question, args in (("keys", ("v", "zz")), ("refs_of", ("v", ["v/index/zz/mine"])),
                           ("apply", ("v", "zz", ["v/index/zz/mine"], {}))):
        before = counter.steps["chunkindex-" + str(others)]
        cache._run(question, *args)
        out[question] = counter.steps["chunkindex-" + str(others)] - before
    return out


def test_chunk_index_cache_reads_one_shard_and_one_object_at_any_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard merge asks for its objects' references and drops them: 32 scans of every
    reference of the volume when those had no index (0.18 s each at 300,000 references)."""
    small, large = _cache_costs(tmp_path, 2, monkeypatch), _cache_costs(tmp_path, 300, monkeypatch)
    assert small["refs_of"] > 0
    assert small == large, (small, large)
