"""Format v2 on the real store: what a change costs is counted, v1 volumes read and upgraded.

Counts, not timings: objects written and bytes uploaded for a one-file change
in a 5,000-file tree, tree GETs of a re-hydrate and of listing one directory,
and the merge of two disjoint concurrent commits.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.trees import Builder, upload_packs
from syncd.engine.wiring import Engine, open_engine
from syncd.errors import ManifestError
from syncd.format import manifest, tree
from syncd.format.manifest import Entry, Snapshot
from syncd.maint.check import check
from syncd.maint.prune import Retention, prune
from syncd.store.base import put_immutable

from .conftest import worker_config
from .treeutil import make_tree, make_wide, snapshot_tree

TOP, MID, LEAF = 10, 10, 50          # 5,000 files, depth 3


def tree_gets(eng: Engine) -> int:
    return sum(n for k, n in eng.counter.keys.items() if "/trees/" in k)


async def test_one_file_change_in_5000_files_costs_depth_not_size(config: Config, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_wide(src, TOP, MID, LEAF)
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(config) as eng:
        first = await commit(eng, "vol", src)
        assert first.trees_written == 1 + TOP + TOP * MID
    async with open_engine(w2) as eng2:
        await hydrate(eng2, "vol", dst)

    (src / "a3" / "b7" / "f9.txt").write_bytes(b"changed\n")
    async with open_engine(config) as eng:
        eng.counter.reset()
        res = await commit(eng, "vol", src)
        # one small-file pack, its chunk index object, one tree pack (root, a3, a3/b7), the snapshot, HEAD
        assert res.trees_written == 3 and res.files_read == 1
        assert eng.counter.calls["put"] == 5
        assert eng.counter.bytes_out < 16_000, eng.counter.bytes_out
        # the commit read the trees on the path only (the writer's own trees are cached)
        assert tree_gets(eng) <= 3
        _, snap = await eng.repo.latest("vol")
        assert snap is not None and snap.stats is not None and snap.stats.files == TOP * MID * LEAF

    async with open_engine(w2) as eng2:
        eng2.counter.reset()
        again = await hydrate(eng2, "vol", dst)
        assert again.files_written == 1
        assert tree_gets(eng2) == 3        # one ranged GET per changed level, the rest from the cache
    assert (dst / "a3" / "b7" / "f9.txt").read_bytes() == b"changed\n"

    async with open_engine(config, use_cache=False) as cold:   # list one directory, nothing cached
        cold.counter.reset()
        head = await cold.repo.head("vol")
        assert head.snapshot is not None
        listed = await cold.repo.list_dir("vol", head.snapshot, "a5/b2")
        assert listed is not None and len(listed) == LEAF and listed[0].path == "a5/b2/f0.txt"
        assert tree_gets(cold) == 3
        entry = await cold.repo.lookup("vol", head.snapshot, "a3/b7/f9.txt")
        assert entry is not None and entry.size == len(b"changed\n")
        assert await cold.repo.lookup("vol", head.snapshot, "a3/nope") is None
        assert await cold.repo.list_dir("vol", head.snapshot, "a3/b7/f9.txt") is None


async def test_disjoint_concurrent_commits_merge_and_share_subtrees(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=30)
    w1, w2 = worker_config(config, tmp_path, "w1"), worker_config(config, tmp_path, "w2")
    async with open_engine(config) as eng:
        base = await commit(eng, "vol", src)
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    async with open_engine(w1) as e1, open_engine(w2) as e2:
        await hydrate(e1, "vol", d1)
        await hydrate(e2, "vol", d2)
        (d1 / "data" / "d1" / "f1.txt").write_text("from one\n")
        (d2 / "data" / "d2" / "f2.txt").write_text("from two\n")
        (d2 / "new-dir").mkdir()
        (d2 / "new-dir" / "x").write_text("x")
        one = await commit(e1, "vol", d1)
        two = await commit(e2, "vol", d2)          # based on `base`: merges onto `one`
        assert two.merged and one.seq == base.seq + 1 and two.seq == base.seq + 2
        assert two.trees_written == 4              # root, data, data/d2, new-dir: not data/d1
        _, snap = await e2.repo.latest("vol")
        old = await e2.repo.header("vol", base.snapshot or "")
        latest = await e2.repo.header("vol", two.snapshot or "")
        assert latest.parent == one.snapshot
    assert snap is not None
    assert snap.entries["new-dir/x"].size == 1
    out = tmp_path / "out"
    async with open_engine(config) as eng:
        await hydrate(eng, "vol", out)
    assert (out / "data" / "d1" / "f1.txt").read_text() == "from one\n"
    assert (out / "data" / "d2" / "f2.txt").read_text() == "from two\n"
    assert (out / "models" / "big.bin").read_bytes() == (src / "models" / "big.bin").read_bytes()
    # untouched subtrees are the same tree objects in every snapshot
    async with open_engine(config) as eng:
        assert old.root is not None and latest.root is not None
        a = {i.name: i.tree for i in await eng.repo.trees.get("vol", old.root) if i.tree}
        b = {i.name: i.tree for i in await eng.repo.trees.get("vol", latest.root) if i.tree}
        assert a["models"] == b["models"] and a["data"] != b["data"]


async def write_v1(eng: Engine, volume: str, src: Path) -> str:
    """Make ``volume`` a format-1 volume holding ``src``: a v1 snapshot, a v1 HEAD, no trees."""
    res = await commit(eng, volume, src)
    v2 = await eng.repo.snapshot(volume, res.snapshot or "")
    sid, data = manifest.encode(Snapshot(volume, eng.layout.owner, 1, None, time.time(), "v1", v2.entries))
    await put_immutable(eng.store, eng.layout.snapshot(volume, sid), data)
    head = await eng.repo.head(volume)
    doc = {"format": 1, "volume": volume, "snapshot": sid, "seq": 1, "created": 1.0, "updated": 1.0}
    await eng.store.put(eng.layout.head(volume), json.dumps(doc).encode(), if_match=head.etag)
    prefix = eng.layout.volume_prefix(volume)
    await eng.store.delete([o.key async for o in eng.store.list_objects(prefix)
                            if o.key.startswith(prefix + "trees/") or o.key.endswith(res.snapshot or "-")])
    return sid


async def test_v1_volume_is_read_then_moves_to_v2_on_commit_or_upgrade(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=20)
    nonutf8 = os.fsdecode(b"caf\xe9.txt")
    (src / nonutf8).write_bytes(b"latin-1 name")
    async with open_engine(config) as eng:
        v1 = await write_v1(eng, "old", src)
        await write_v1(eng, "old2", src)
    w2 = worker_config(config, tmp_path, "w2")
    dst = tmp_path / "dst"
    async with open_engine(w2) as eng:
        snap = await eng.repo.header("old", v1)
        assert snap.format == 1 and snap.root is None
        await hydrate(eng, "old", dst)
        assert snapshot_tree(dst) == snapshot_tree(src)
        listed = await eng.repo.list_dir("old", v1, "data")
        assert listed is not None and {e.path for e in listed} >= {"data/d0", "data/up"}

        (dst / "data" / "d0" / "f0.txt").write_text("edited\n")
        res = await commit(eng, "old", dst)             # the next commit writes v3
        head = await eng.repo.head("old")
        raw = json.loads((await eng.store.get(eng.layout.head("old"))).data)
        assert raw["format"] == 3 and head.snapshot == res.snapshot
        new = await eng.repo.header("old", res.snapshot or "")
        assert new.format == 3 and new.parent == v1 and new.seq == 2
        assert [s.format for _, s in await eng.repo.history("old")] == [3, 1]
        assert (await check(eng, "old", read_data=True)).ok
        pruned = await prune(eng, "old", Retention(grace=0.0))
        assert pruned.deleted_objects == 0                 # v1 and v2 references both count

        up, upgraded = await eng.repo.upgrade("old2")
        assert upgraded and (await eng.repo.header("old2", up.snapshot or "")).format == 3
        assert (await eng.repo.upgrade("old2"))[1] is False
    out, out2 = tmp_path / "out", tmp_path / "out2"
    async with open_engine(config) as eng:
        await hydrate(eng, "old", out)
        await hydrate(eng, "old2", out2)
    assert snapshot_tree(out) == snapshot_tree(dst)
    assert snapshot_tree(out2) == snapshot_tree(src)
    assert (out2 / nonutf8).read_bytes() == b"latin-1 name"


async def test_hostile_v2_symlinks_escaping_through_other_links_write_nothing(
        config: Config, tmp_path: Path) -> None:
    """``a/l1 -> ..`` and ``a/l2 -> l1/..`` each look inside; together they leave the volume."""
    async with open_engine(config) as eng:
        head, _ = await eng.repo.create("vol")
        builder = Builder(eng.repo.trees, "vol", None, {})
        await builder.apply({"a": Entry("a", "dir", 0o755, 0),
                             "a/l1": Entry("a/l1", "symlink", 0o777, 0, target=".."),
                             "a/l2": Entry("a/l2", "symlink", 0o777, 0, target="l1/.."),
                             "a/file": Entry("a/file", "file", 0o644, 0)})
        built = await builder.finish()        # the builder writes what it is given: we are the hostile writer
        await upload_packs(eng.store, eng.layout, "vol", built)
        snap = Snapshot("vol", "alice", 1, None, 0.0, "evil", {}, "", 2, built.root, built.stats)
        sid, data = tree.encode_snapshot(snap)
        await put_immutable(eng.store, eng.layout.snapshot("vol", sid), data)
        await eng.repo.advance(head, sid, 1)
    target = tmp_path / "dst"
    async with open_engine(worker_config(config, tmp_path, "w2")) as eng:
        with pytest.raises(ManifestError, match="symlink"):
            await hydrate(eng, "vol", target)
    assert not any(target.iterdir())
