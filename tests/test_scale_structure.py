"""Cost follows the change and memory follows the configuration, not the volume (issue 19, item 6).

Volumes of 1,000 and 5,000 files on the real server: ``p/`` (10 directories of 100 files, where
every change happens) and ``q/`` (nothing, or 40 directories of 100 files that nothing touches),
so every directory on a changed path has the same size in both and only the rest of the volume
grows. For a 1-file change, committed and re-hydrated through the CLI's path (a walk) and the
agent's (the watcher's paths), we count the index rows read, the trees asked for (cache hits
included) and written, the files opened, the directories listed and the store requests made
(chunk index lookups included): none may differ between the two volumes. Then the memory structure: with the streaming windows shrunk to a few dozen entries,
the entries alive at once during a first commit and a cold hydrate of 500 and 2,500 files
(counted, not timed) must not grow fivefold with the volume, as they did when a commit held
every entry three times over.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import syncd.engine.commitpass as commitpass
import syncd.engine.commitscan as commitscan
import syncd.engine.hydratewalk as hydratewalk
from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.trees import Builder
from syncd.engine.wiring import Engine, open_engine
from syncd.format.manifest import Entry, TreeRef
from syncd.format.tree import TreeItem
from syncd.local import dirfd
from syncd.local import fs as localfs
from syncd.local.dirwalk import DirWalk
from syncd.local.indexrows import Tracked
from syncd.local.scan import LocalFile

from .treeutil import snapshot_tree

PER_DIR = 100


def _fill(root: Path, other_dirs: int, changed_dirs: int = 10) -> None:
    for top, dirs in (("p", changed_dirs), ("q", other_dirs)):
        (root / top).mkdir(parents=True, exist_ok=True)
        for d in range(dirs):
            (root / top / f"d{d}").mkdir()
            for f in range(PER_DIR):
                (root / top / f"d{d}" / f"f{f}.txt").write_bytes(f"{top}{d}/{f}\n".encode())


class _Counts:
    """Counters around the seams a commit and a hydrate go through."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = engine
        self.now = dict.fromkeys(("trees", "opened", "listed"), 0)
        trees = engine.repo.trees
        get_many = trees.get_many

        async def counting(volume: str, refs: list[TreeRef]) -> Any:
            self.now["trees"] += len(refs)
            return await get_many(volume, refs)

        monkeypatch.setattr(trees, "get_many", counting)
        self._count(monkeypatch, dirfd, "read_whole", "opened")          # a commit reads a small file
        self._count(monkeypatch, commitpass, "open_file", "opened")      # ... or a large one
        self._count(monkeypatch, localfs, "_write_in", "opened")         # a hydrate writes a small file
        self._count(monkeypatch, localfs, "open_tmp", "opened")          # ... or a large one
        self._count(monkeypatch, DirWalk, "_look", "listed")             # a commit looks into a directory
        self._count(monkeypatch, hydratewalk.HydrateWalk, "_list", "listed")   # ... a hydrate does

    def _count(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, counter: str) -> None:
        real = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.now[counter] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    async def measure(self, op: Callable[[], Awaitable[Any]]) -> tuple[dict[str, int], Any]:
        rows, requests = self.engine.index.rows_read, sum(self.engine.store.calls.values())
        self.now = dict.fromkeys(self.now, 0)
        result = await op()
        return {"rows": self.engine.index.rows_read - rows,
                "requests": sum(self.engine.store.calls.values()) - requests, **self.now}, result


async def _one_change(config: Config, tmp_path: Path, other_dirs: int, monkeypatch: pytest.MonkeyPatch,
                      ) -> dict[str, Any]:
    name = f"scale-{other_dirs}"
    a, b = tmp_path / f"a{other_dirs}", tmp_path / f"b{other_dirs}"
    _fill(a, other_dirs)
    async with open_engine(dataclasses.replace(config, state_dir=tmp_path / f"state{other_dirs}")) as engine:
        counts = _Counts(engine, monkeypatch)
        await commit(engine, name, a)
        await hydrate(engine, name, b)
        out: dict[str, Any] = {}

        (a / "p" / "d3" / "f7.txt").write_bytes(b"changed by the CLI\n")
        out["cli commit"], done = await counts.measure(lambda: commit(engine, name, a))
        assert done.files_read == 1 and done.changed >= 1
        out["cli commit"]["written"] = done.trees_written

        (a / "p" / "d4" / "f8.txt").write_bytes(b"changed, the agent knows\n")
        out["agent commit"], done = await counts.measure(
            lambda: commit(engine, name, a, changed={"p/d4/f8.txt", "p/d4", "p"}))
        assert done.files_read == 1
        out["agent commit"]["written"] = done.trees_written

        out["cli hydrate"], hydrated = await counts.measure(lambda: hydrate(engine, name, b))
        assert hydrated.files_written == 2 and hydrated.deleted == 0
        assert snapshot_tree(a) == snapshot_tree(b)

        (a / "p" / "d5" / "new.txt").write_bytes(b"new\n")
        os.remove(a / "p" / "d6" / "f1.txt")
        await commit(engine, name, a)
        out["agent hydrate"], hydrated = await counts.measure(lambda: hydrate(engine, name, b, changed=set()))
        assert hydrated.files_written == 1 and hydrated.deleted == 1
        assert snapshot_tree(a) == snapshot_tree(b)
        return out


async def test_a_one_file_change_costs_the_same_at_1000_and_5000_files(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = await _one_change(config, tmp_path, 0, monkeypatch)
    large = await _one_change(config, tmp_path, 40, monkeypatch)
    print(small)
    listed = small["cli commit"].pop("listed"), large["cli commit"].pop("listed")
    assert listed == (13, 53)     # the CLI must walk: it lstats every directory (and reads no more rows)
    for op in small:              # a GET may cover more of a larger volume's tree and chunk packs
        requests = small[op].pop("requests"), large[op].pop("requests")
        assert requests[1] <= requests[0] <= 10, (op, requests)
    assert small == large, (small, large)
    for op in ("agent commit", "agent hydrate", "cli hydrate"):
        assert small[op]["rows"] <= 5, (op, small)          # the changed paths' rows, nothing around them
    assert small["cli commit"]["rows"] <= PER_DIR + 1       # the children of the one directory that moved
    assert small["cli commit"]["opened"] == small["agent commit"]["opened"] == 1
    assert small["cli hydrate"]["opened"] == 2 and small["agent hydrate"]["opened"] == 1
    assert small["agent commit"]["written"] == 3            # the root, p and p/d4
    assert small["agent commit"]["listed"] <= 3 and small["agent hydrate"]["listed"] <= 4
    assert small["agent commit"]["trees"] == 3              # the trees on the changed path
    for op in ("cli hydrate", "agent hydrate"):
        assert small[op]["trees"] <= 14, (op, small)        # on the changed paths, in the new and old snapshot


async def _cold(config: Config, tmp_path: Path, other_dirs: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    name = f"cold-{other_dirs}"
    a = tmp_path / f"src{other_dirs}"
    _fill(a, other_dirs)
    async with open_engine(dataclasses.replace(config, state_dir=tmp_path / f"w{other_dirs}")) as engine:
        await commit(engine, name, a)
    reader = dataclasses.replace(config, state_dir=tmp_path / f"r{other_dirs}", cache_dir=tmp_path / f"c{other_dirs}")
    async with open_engine(reader) as engine:
        counts = _Counts(engine, monkeypatch)
        calls = {"apply": 0}
        apply = hydratewalk.HydrateWalk._apply

        def counted(self: hydratewalk.HydrateWalk, looked: Any) -> Any:
            calls["apply"] += 1
            return apply(self, looked)

        monkeypatch.setattr(hydratewalk.HydrateWalk, "_apply", counted)
        out, done = await counts.measure(lambda: hydrate(engine, name, tmp_path / f"dst{other_dirs}"))
    assert done.files_written == PER_DIR * (10 + other_dirs)
    assert snapshot_tree(a) == snapshot_tree(tmp_path / f"dst{other_dirs}")
    return {**out, **calls}


async def test_a_cold_hydrate_looks_into_no_directory_it_made(config: Config, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A first hydrate (nothing in the index for the target) lists the target only: a directory it
    made a moment ago is empty and has no rows, so it is planned without a listing or a row read,
    and a directory holding only files costs no worker-thread call (_apply) at all."""
    small = await _cold(config, tmp_path, 0, monkeypatch)
    large = await _cold(config, tmp_path, 40, monkeypatch)
    for counts in (small, large):
        assert counts["listed"] == 1 and counts["rows"] == 0      # the target, listed by the first pass
    assert (small["apply"], large["apply"]) == (2, 3)             # the root and p (and q) make directories
    assert (small["opened"], large["opened"]) == (10 * PER_DIR, 50 * PER_DIR)   # each file written once


# ---------------------------------------------------------------- memory follows the configuration

_KINDS = (Entry, LocalFile, Tracked, TreeItem)


class _Alive:
    """The most entries (Entry, LocalFile, Tracked, TreeItem) alive at once, sampled as the work goes."""

    def __init__(self) -> None:
        self.peak = 0
        self.calls = 0

    def sample(self, every: int = 1) -> None:
        self.calls += 1
        if self.calls % every == 0:
            self.peak = max(self.peak, sum(isinstance(o, _KINDS) for o in gc.get_objects()))


def _shrink(monkeypatch: pytest.MonkeyPatch, alive: _Alive) -> None:
    """Streaming windows of a few dozen entries, so their bounds show at a few thousand files."""
    for module, name, value in ((commitpass, "BATCH_FILES", 64), (commitpass, "SEALED", 1),
                                (commitpass, "RECENT", 64), (commitpass, "READ_STEP", 16 << 10),
                                (commitpass, "INDEX_BATCH", 64), (commitscan, "MAX_ITEMS", 64),
                                (hydratewalk, "WINDOW_FILES", 64), (hydratewalk, "ROW_BATCH", 64),
                                (hydratewalk, "MTIME_BATCH", 16)):
        monkeypatch.setattr(module, name, value)
    feed, do = Builder.feed, hydratewalk.HydrateWalk._do

    async def sampled_feed(self: Builder, path: str, entry: Entry | None) -> None:
        alive.sample(every=97)
        await feed(self, path, entry)

    async def sampled_do(self: hydratewalk.HydrateWalk, looked: Any) -> None:
        alive.sample()
        await do(self, looked)

    monkeypatch.setattr(Builder, "feed", sampled_feed)
    monkeypatch.setattr(hydratewalk.HydrateWalk, "_do", sampled_do)


async def _peaks(config: Config, tmp_path: Path, other_dirs: int) -> tuple[int, int]:
    a = tmp_path / f"src{other_dirs}"
    _fill(a, other_dirs, changed_dirs=5)
    gc.collect()
    commit_side, hydrate_side = _Alive(), _Alive()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _shrink(monkeypatch, commit_side)
        async with open_engine(dataclasses.replace(config, state_dir=tmp_path / f"w{other_dirs}")) as engine:
            monkeypatch.setattr(engine.repo.trees, "_limit", 256)
            await commit(engine, f"mem-{other_dirs}", a)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _shrink(monkeypatch, hydrate_side)
        reader = dataclasses.replace(config, state_dir=tmp_path / f"r{other_dirs}",
                                     cache_dir=tmp_path / f"c{other_dirs}")
        async with open_engine(reader) as engine:
            monkeypatch.setattr(engine.repo.trees, "_limit", 256)
            await hydrate(engine, f"mem-{other_dirs}", tmp_path / f"dst{other_dirs}")
    assert snapshot_tree(a) == snapshot_tree(tmp_path / f"dst{other_dirs}")
    return commit_side.peak, hydrate_side.peak


async def test_entries_held_at_once_do_not_grow_with_the_volume(config: Config, tmp_path: Path) -> None:
    small = await _peaks(config, tmp_path, 0)          # 500 files
    large = await _peaks(config, tmp_path, 20)         # 2,500
    print("entries alive at once (commit, hydrate):", small, large)
    for s, big in zip(small, large):
        assert big <= 1.3 * s + 200, (small, large)     # 5x the files; holding them all would be 5x
