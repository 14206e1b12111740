"""Cost follows the change: a 1-file commit or re-hydrate reads the same rows, trees and files
whatever the volume's size (issue 19, item 6).

Volumes of 1,000 and 5,000 files (10 and 50 directories of 100 files) on the real server; for
one changed file we count the index rows decoded, the trees asked for (cache hits included) and
written, and the files opened; the counts at 5,000 files must equal those at 1,000.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import syncd.engine.commit as commit_module
from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine, open_engine
from syncd.format.manifest import TreeRef

from .treeutil import snapshot_tree

PER_DIR = 100


def _fill(root: Path, dirs: int) -> None:
    for d in range(dirs):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(PER_DIR):
            (root / f"d{d}" / f"f{f}.txt").write_bytes(f"{d}/{f}\n".encode())


class _Counts:
    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine, self.trees, self.opened = engine, 0, 0
        trees = engine.repo.trees
        get_many = trees.get_many

        async def counting(volume: str, refs: list[TreeRef]) -> Any:
            self.trees += len(refs)
            return await get_many(volume, refs)

        monkeypatch.setattr(trees, "get_many", counting)
        opener = commit_module.open_file

        def open_file(root: Path, rel: str) -> int | None:
            self.opened += 1
            return opener(root, rel)

        monkeypatch.setattr(commit_module, "open_file", open_file)

    async def measure(self, op: Callable[[], Awaitable[Any]]) -> tuple[dict[str, int], Any]:
        rows, self.trees, self.opened = self.engine.index.rows_read, 0, 0
        result = await op()
        return {"rows": self.engine.index.rows_read - rows, "trees": self.trees, "opened": self.opened}, result


async def _one_change(config: Config, tmp_path: Path, dirs: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    name = f"scale-{dirs}"
    a, b = tmp_path / f"a{dirs}", tmp_path / f"b{dirs}"
    _fill(a, dirs)
    async with open_engine(dataclasses.replace(config, state_dir=tmp_path / f"state{dirs}")) as engine:
        counts = _Counts(engine, monkeypatch)
        await commit(engine, name, a)
        await hydrate(engine, name, b)
        out: dict[str, Any] = {}

        (a / "d3" / "f7.txt").write_bytes(b"changed by the CLI\n")
        out["cli commit"], done = await counts.measure(lambda: commit(engine, name, a))
        assert done.files_read == 1 and done.changed >= 1
        out["cli commit"]["written"] = done.trees_written

        (a / "d4" / "f8.txt").write_bytes(b"changed, the agent knows\n")
        out["agent commit"], done = await counts.measure(
            lambda: commit(engine, name, a, changed={"d4/f8.txt", "d4"}))
        assert done.files_read == 1
        out["agent commit"]["written"] = done.trees_written

        out["cli hydrate"], hydrated = await counts.measure(lambda: hydrate(engine, name, b))
        assert hydrated.files_written == 2 and hydrated.deleted == 0
        assert snapshot_tree(a) == snapshot_tree(b)

        (a / "d5" / "new.txt").write_bytes(b"new\n")
        os.remove(a / "d6" / "f1.txt")
        await commit(engine, name, a)
        out["agent hydrate"], hydrated = await counts.measure(lambda: hydrate(engine, name, b, changed=set()))
        assert hydrated.files_written == 1 and hydrated.deleted == 1
        assert snapshot_tree(a) == snapshot_tree(b)
        return out


async def test_a_one_file_change_costs_the_same_at_1000_and_5000_files(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = await _one_change(config, tmp_path, 10, monkeypatch)
    large = await _one_change(config, tmp_path, 50, monkeypatch)
    print(small)
    assert small == large, (small, large)
    for op in ("agent commit", "agent hydrate"):
        assert small[op]["rows"] <= 4, small         # the file, its directory (and a removed one's)
    assert small["cli commit"]["rows"] <= PER_DIR + 3  # the children of the one directory that moved, its path
    assert small["cli commit"]["opened"] == small["agent commit"]["opened"] == 1
    assert small["agent commit"]["written"] == 2      # the root and d4
