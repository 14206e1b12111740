"""A first hydrate makes its top directories aside and renames each whole (engine/hydrateaside.py).

Counted at the file system seam: below an aside directory every small file is created under its
own name (no temporary name, no rename); a file at the top of the target, and every file of a
later hydrate, still goes through a temporary name. Something that appears at a top directory's
name meanwhile is a late conflict, not overwritten; a hydrate that fails part-way leaves its
aside directories, and the next one removes them whole. (Kill -9 at random points:
test_crashes.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncd.config import Config
from syncd.engine import hydrateaside
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.errors import LocalConflict, TransientStoreError
from syncd.local import fs as localfs

from .checks import tmp_files
from .conftest import worker_config
from .treeutil import snapshot_tree


def _tree(src: Path) -> None:
    for d in range(3):
        for f in range(5):
            path = src / f"d{d}" / ("sub" if f % 2 else "") / f"f{f}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{d}/{f}\n".encode() * (f + 1))
    (src / "top.txt").write_bytes(b"at the top\n")
    (src / "d1" / "link").symlink_to("f0.txt")


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(path on disk, written under its own name) of every small file written."""
    seen: list[tuple[str, bool]] = []
    real = localfs.write_small_many

    def counting(root: Path, files: list[localfs.Small], owner: Any = None) -> Any:
        seen.extend((f.at, f.in_place) for f in files)
        return real(root, files, owner)

    monkeypatch.setattr(localfs, "write_small_many", counting)
    return seen


async def _volume(config: Config, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _tree(src)
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    return src


async def test_a_first_hydrate_writes_top_directories_aside_and_in_place(
        config: Config, tmp_path: Path, writes: list[tuple[str, bool]]) -> None:
    src = await _volume(config, tmp_path)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", tmp_path / "dst")
        first = list(writes)
        writes.clear()
        (src / "d2" / "f3.txt").write_bytes(b"changed\n")
        async with open_engine(config) as eng1:
            await commit(eng1, "vol", src)
        await hydrate(eng, "vol", tmp_path / "dst")
    assert snapshot_tree(tmp_path / "dst") == snapshot_tree(src) and not tmp_files(tmp_path / "dst")
    assert len(first) == 16
    for at, in_place in first:
        top = at.split("/")[0]
        if at == "top.txt":
            assert not in_place                  # the target itself is seen at once: temporary name
        else:
            assert in_place and top.startswith(".syncd-tmp-"), at
    assert writes == [("d2/f3.txt", False)]      # a later hydrate replaces atomically


async def test_something_at_a_top_directory_name_meanwhile_is_a_late_conflict(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = await _volume(config, tmp_path)
    dst = tmp_path / "dst"
    real = hydrateaside.Aside.publish

    def a_task_got_there_first(self: hydrateaside.Aside, root_fd: int, top: str) -> None:
        if top == "d1":
            (dst / "d1").mkdir()
            (dst / "d1" / "mine.txt").write_bytes(b"a task's file\n")
        real(self, root_fd, top)

    monkeypatch.setattr(hydrateaside.Aside, "publish", a_task_got_there_first)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        with pytest.raises(LocalConflict) as raised:
            await hydrate(eng, "vol", dst)
        assert raised.value.paths == ["d1"]
        assert (dst / "d1" / "mine.txt").read_bytes() == b"a task's file\n"
        assert len(tmp_files(dst)) == 1             # the aside copy of d1 stays, for the next hydrate
        monkeypatch.setattr(hydrateaside.Aside, "publish", real)
        await hydrate(eng, "vol", dst)
    assert not tmp_files(dst)
    assert snapshot_tree(dst) == {**snapshot_tree(src), "d1/mine.txt": ("file", 0o644, b"a task's file\n")}


async def test_a_failed_first_hydrate_leaves_aside_directories_the_next_one_removes(
        config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = await _volume(config, tmp_path)
    dst = tmp_path / "dst"
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        real = eng.fetcher.get_packed
        calls = {"n": 0}

        async def failing(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            raise TransientStoreError("the store went away")

        monkeypatch.setattr(eng.fetcher, "get_packed", failing)
        with pytest.raises(TransientStoreError):
            await hydrate(eng, "vol", dst)
        assert calls["n"] >= 1
        left = tmp_files(dst)
        assert left and all(p.is_dir() for p in left)
        assert not {p.name for p in dst.iterdir()} & {"d0", "d1", "d2"}   # nothing half-made in place
        monkeypatch.setattr(eng.fetcher, "get_packed", real)
        await hydrate(eng, "vol", dst)
    assert snapshot_tree(dst) == snapshot_tree(src) and not tmp_files(dst)
