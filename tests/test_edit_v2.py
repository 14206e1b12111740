"""Server-side reads and edits on format v2 cost the depth of a path, not the size of the volume.

Counts, not timings, on the real store: in a volume of 2,000 files in 40
directories, listing or stat'ing ``dir7`` through ``syncd ls``, the SDK's
``Volume.listdir`` and fsspec ``info``/``ls`` fetches the root tree and
``dir7``'s tree and no other; a one-file ``put_file`` or ``rm`` reads and
writes those two trees (one tree pack PUT); ``syncd diff`` of that change
reads only the trees on the changed path. Trees fetched from the store are
counted where they are decoded (trees._decode_run), so a coalesced ranged GET
of many trees is not mistaken for one tree.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from syncd import Volume
from syncd.cli import files as cli_files
from syncd.cli.core import main
from syncd.config import Config
from syncd.engine import edit, trees
from syncd.engine.commit import commit
from syncd.engine.wiring import Engine, open_engine
from syncd.sdk.direct import direct
from syncd.sdk.fsspec import SyncdFileSystem

from .conftest import worker_config

DIRS, FILES = 40, 50          # 2,000 files, depth 1 below the root


class TreeCount:
    """Trees fetched from the store (not from a cache), by decoding."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        real = trees._decode_run

        def counting(data: bytes, start: int, run: list[Any]) -> Any:
            self.n += len(run)
            return real(data, start, run)
        monkeypatch.setattr(trees, "_decode_run", counting)

    def take(self) -> int:
        n, self.n = self.n, 0
        return n




async def _seed(config: Config, tmp_path: Path) -> None:
    """The volume, committed by another worker (so no cache here holds its trees)."""
    src = tmp_path / "src"
    for d in range(DIRS):
        (src / f"dir{d}").mkdir(parents=True)
        for f in range(FILES):
            (src / f"dir{d}" / f"f{f}.txt").write_bytes(f"{d}/{f}\n".encode())
    async with open_engine(worker_config(config, tmp_path, "seed")) as eng:
        done = await commit(eng, "vol", src)
        assert done.trees_written == 1 + DIRS


def _cold(eng: Engine) -> None:
    eng.repo.trees.forget()
    eng.counter.reset()


async def test_engine_reads_and_one_file_edits_touch_depth_trees(config: Config, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    await _seed(config, tmp_path)
    count = TreeCount(monkeypatch)
    async with open_engine(config, use_cache=False) as eng:
        listed = await edit.listdir(eng, "vol", "dir7")
        assert len(listed) == FILES and listed[0].path == "dir7/f0.txt"
        assert count.take() == 2                                     # the root and dir7
        assert (await edit.stat(eng, "vol", "dir7/f3.txt")).size == len(b"7/3\n")
        assert count.take() == 0                                     # the same path: cached

        _cold(eng)
        done = await edit.write_file(eng, "vol", "dir7/new.txt", _pieces(b"new\n"))
        assert count.take() == 2 and done.changed == 1
        assert done.trees_written == 2                               # root and dir7, one tree pack
        assert eng.counter.calls["put"] == 5             # small-file pack, its index object, tree pack, snapshot, HEAD
        eng.counter.reset()
        again = await edit.write_file(eng, "vol", "dir7/new.txt", _pieces(b"new\n"))
        assert again.changed == 1 and eng.counter.calls["put"] == 3  # same bytes: no pack uploaded again

        _cold(eng)
        count.take()
        removed = await edit.edit(eng, "vol", lambda b: b.remove("dir3/f1.txt"))
        assert count.take() == 2 and removed.trees_written == 2
        assert eng.counter.calls["put"] == 3                         # tree pack, snapshot, HEAD

        unchanged = await edit.edit(eng, "vol", lambda b: b.mkdir("dir3"))   # exists: no snapshot
        assert unchanged.changed == 0 and unchanged.seq == removed.seq

        _cold(eng)
        moved = await edit.edit(eng, "vol", lambda b: b.move("dir5", "moved/dir5"))
        assert count.take() == 2                                     # the root and dir5: nothing else
        assert moved.changed == 3 + 2 * FILES                        # moved/, moved/dir5{,/*} new, dir5{,/*} gone
        assert moved.trees_written == 3                              # root, moved/, moved/dir5/
        everything = await edit.listdir(eng, "vol", recursive=True)
        assert len([e for e in everything if e.kind == "file"]) == DIRS * FILES
        assert (await edit.listdir(eng, "vol", "moved/dir5"))[0].path == "moved/dir5/f0.txt"

        assert count.take() == DIRS - 1          # recursive: every dir but the three trees the mv just wrote
        _cold(eng)
        from syncd.engine.diff import snapshot_diff
        _, _, changes = await snapshot_diff(eng, "vol", again.snapshot, removed.snapshot)
        assert [(c.status, c.path) for c in changes] == [("removed", "dir3/f1.txt")]
        assert count.take() == 4                                     # root and dir3 of each side

        from syncd.engine.restore import restore
        back = await restore(eng, "vol", removed.snapshot or "", "dir5")   # from before the mv
        assert back.changed == 1 + FILES
        assert len(await edit.listdir(eng, "vol", "dir5")) == len(await edit.listdir(eng, "vol", "moved/dir5"))


def test_cli_sdk_and_fsspec_read_the_trees_on_the_path(no_agent_env: Config, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    import asyncio
    asyncio.run(_seed(no_agent_env, tmp_path))
    count = TreeCount(monkeypatch)
    real_open = cli_files.open_engine

    @contextlib.asynccontextmanager
    async def spying(*args: Any, **kwargs: Any) -> AsyncIterator[Engine]:
        async with real_open(*args, **kwargs) as eng:
            yield eng
    monkeypatch.setattr(cli_files, "open_engine", spying)
    assert main(["ls", "vol", "dir7", "--json"]) == 0
    out = json.loads(capsysbinary.readouterr()[0].decode().strip().splitlines()[-1])
    assert len(out["entries"]) == FILES
    assert count.take() == 2                                         # syncd ls: the root and dir7

    shared = direct(Config.from_env())
    v = Volume("vol")
    assert len(v.listdir("dir7")) == FILES
    assert count.take() == 2                                         # Volume.listdir: the same two

    fs = SyncdFileSystem(runner=shared)
    assert fs.info("vol/dir9/f4.txt")["size"] == len(b"9/4\n")
    assert count.take() == 1                                         # fsspec info: dir9 (the root is cached)
    assert len(fs.ls("vol/dir9", detail=False)) == FILES
    assert count.take() == 0                                         # the same path, cached

    done = v.put_file(b"hello\n", "dir9/hello.txt")
    assert done.trees_written == 2
    assert v.remove_file("dir9/hello.txt").trees_written == 2


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    yield data
