"""The lazy mount on format v2: what mounting, listing and committing read, counted.

A 2,000-file volume in 40 directories (4 x 10, 50 files each) is mounted by a
second worker (its own cache, so every tree it needs is a GET). Mounting reads
the snapshot header and no tree; ``stat`` of one file reads the trees on its
path (one GET per level); ``find`` reads each tree once, a directory's
subtrees in one GET. A commit from the mount writes the trees
on the changed paths, lists no directory the kernel did not ask for, and an
eager hydrate elsewhere sees exactly what a plain directory doing the same
operations holds. A format-1 volume still mounts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine, open_engine

from .conftest import worker_config
from .faultproxy import FaultProxy, Rule
from .gatewayutil import gateway_process, metric, through
from .mountutil import MountProcess, fuse_missing
from .test_mount import tree_of
from .test_v2 import write_v1
from .treeutil import make_wide

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")

TOP, MID, LEAF = 4, 10, 50           # 2,000 files in 40 leaf directories, depth 3
TREES = 1 + TOP + TOP * MID


def tree_gets(m: MountProcess) -> int:
    return sum(n for key, n in m.call("status")["store"]["keys"].items() if "/trees/" in key)


def start(mounts: list[MountProcess], config: Config, volume: str, path: Path) -> MountProcess:
    m = MountProcess(config, volume, path)
    mounts.append(m)
    return m.start()


async def test_mounting_reads_the_trees_the_kernel_asks_for(engine: Engine, config: Config, tmp_path: Path,
                                                             mounts: list[MountProcess]) -> None:
    source = tmp_path / "source"
    make_wide(source, TOP, MID, LEAF)
    await commit(engine, "wide", source)
    m = start(mounts, worker_config(config, tmp_path, "w2"), "wide", tmp_path / "mnt")
    assert tree_gets(m) == 0                       # the header only
    st = os.stat(m.path / "a2" / "b7" / "f33.txt")
    assert st.st_size == len(b"2/7/33\n")
    assert tree_gets(m) == 3                       # root, a*, a2/b*: one GET per level, not per size
    listed = subprocess.run(["find", str(m.path)], check=True, capture_output=True, text=True).stdout.split()
    assert len(listed) == 1 + TOP + TOP * MID + TOP * MID * LEAF
    status = m.call("status")
    # 45 directories listed, their trees read in 6 GETs: root, then one per level below each
    # directory with subdirectories (listing.py reads a directory's subtrees together)
    assert status["dirs_listed"] == TREES and tree_gets(m) == 1 + 1 + TOP
    subprocess.run(["find", str(m.path)], check=True, capture_output=True)
    assert tree_gets(m) == 1 + 1 + TOP and m.data_gets() == 0
    assert (m.path / "a3" / "b9" / "f49.txt").read_bytes() == b"3/9/49\n"
    assert m.stop() == 0


async def test_commit_from_the_mount_touches_the_changed_paths_only(engine: Engine, config: Config,
                                                                     tmp_path: Path,
                                                                     mounts: list[MountProcess]) -> None:
    source = tmp_path / "source"
    make_wide(source, TOP, MID, LEAF)
    await commit(engine, "wide", source)
    w2 = worker_config(config, tmp_path, "w2")
    m = start(mounts, w2, "wide", tmp_path / "mnt")
    for root in (source, m.path):
        (root / "a1" / "b2" / "f3.txt").write_text("changed\n")           # a write in a listed dir
        (root / "a0" / "b5").rename(root / "a0" / "moved")               # an unlisted dir renamed
        (root / "a3" / "b0" / "f0.txt").unlink()
        (root / "a3" / "new").mkdir()
        (root / "a3" / "new" / "x").write_bytes(b"x" * 100)
    before = tree_gets(m)
    reply = m.call("commit", message="from the mount")
    status = m.call("status")
    # listed: root, a0, a0/b5 (the rename moves its entries), a1, a1/b2, a3, a3/b0; nothing else
    assert status["dirs_listed"] == 7, status
    assert tree_gets(m) == before                  # a0/b5 (listed to move its entries) came with a0; HEAD's are cached
    # one pack of small files, one chunk index object per shard its 2 new chunks fall in, a tree pack,
    # the snapshot, HEAD
    assert 5 <= status["store"]["calls"]["put"] <= 6
    assert reply["changed"] == 1 + (LEAF + 1) * 2 + 3, reply   # f3; b5 and its 50 gone, moved; f0, new, new/x
    out = tmp_path / "eager"
    await hydrate(engine, "wide", out)
    assert tree_of(out) == tree_of(source)
    # and back: an eager commit shows up after reload, re-listing only what was listed
    (out / "a1" / "b2" / "from-eager.txt").write_text("hello\n")
    await commit(engine, "wide", out)
    before = tree_gets(m)
    m.call("reload")
    # the 8 directories listed so far are listed again; only the trees the eager commit wrote are read
    assert m.call("status")["dirs_listed"] == 8
    assert tree_gets(m) - before == 3              # root, a1, a1/b2
    assert (m.path / "a1" / "b2" / "from-eager.txt").read_text() == "hello\n"
    assert tree_of(m.path) == tree_of(out)
    assert m.stop() == 0


async def test_a_format_1_volume_still_mounts_and_commits(config: Config, tmp_path: Path,
                                                          mounts: list[MountProcess]) -> None:
    source = tmp_path / "source"
    (source / "data").mkdir(parents=True)
    (source / "data" / "a.txt").write_text("a\n")
    (source / "top.txt").write_text("top\n")
    async with open_engine(config) as eng:
        await write_v1(eng, "old", source)
    m = start(mounts, worker_config(config, tmp_path, "w2"), "old", tmp_path / "mnt")
    assert tree_of(m.path) == tree_of(source)
    (m.path / "data" / "b.txt").write_text("b\n")
    (source / "data" / "b.txt").write_text("b\n")
    m.call("commit")
    async with open_engine(config) as eng:
        head = await eng.repo.head("old")
        assert (await eng.repo.header("old", head.snapshot or "")).format == 3
        await hydrate(eng, "old", tmp_path / "out")
    assert tree_of(tmp_path / "out") == tree_of(source)
    assert m.stop() == 0


async def test_a_commit_from_the_mount_waits_for_prunes_lease(engine: Engine, config: Config, tmp_path: Path,
                                                             mounts: list[MountProcess]) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "x.txt").write_text("x")
    await commit(engine, "vol", source)
    m = start(mounts, config, "vol", tmp_path / "mnt")
    leased = await engine.repo.take_lease(await engine.repo.head("vol"), "test", 30.0)
    (m.path / "y.txt").write_text("y")
    replies: list[dict[str, object]] = []
    worker = threading.Thread(target=lambda: replies.append(m.call("commit")))
    worker.start()
    worker.join(1.0)
    assert worker.is_alive() and (await engine.repo.head("vol")).lease == "test"   # waiting, not advancing
    await engine.repo.release_lease(leased)
    worker.join(30)
    head = await engine.repo.head("vol")
    assert replies and replies[0]["seq"] == 2 and head.seq == 2 and head.epoch == 1
    out = tmp_path / "out"
    await hydrate(engine, "vol", out)
    assert (out / "y.txt").read_text() == "y"
    assert m.stop() == 0




async def test_a_failed_commit_loses_no_deletion_or_rename(engine: Engine, config: Config, tmp_path: Path,
                                                           proxy: FaultProxy,
                                                           mounts: list[MountProcess]) -> None:
    """The base of a commit is what the walk took from the listing; a failed commit gives it back."""
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    for name in ("f1", "f2", "f3"):
        (source / "d" / name).write_text(name)
    await commit(engine, "vol", source)
    faulty = config.replace(s3_endpoint=proxy.endpoint, retries=1, retry_base_delay=0.01)
    m = MountProcess(faulty, "vol", tmp_path / "mnt")   # the proxy runs on this loop: the mount
    mounts.append(m)                                    # is driven from a thread
    await asyncio.to_thread(m.start)

    def change(root: Path) -> None:
        (root / "d" / "f1").unlink()
        (root / "d" / "f2").rename(root / "d" / "g2")

    change(source)
    proxy.rules = [Rule("slowdown", "PUT", "/snapshots/")]
    await asyncio.to_thread(change, m.path)
    with pytest.raises(Exception, match="SlowDown|503|[Ss]tore"):
        await asyncio.to_thread(m.call, "commit")
    proxy.rules = []
    await asyncio.to_thread(m.call, "commit")
    out = tmp_path / "out"
    await hydrate(engine, "vol", out)
    assert tree_of(out) == tree_of(source)
    assert await asyncio.to_thread(m.stop) == 0


async def test_a_mount_through_a_gateway_reads_nothing_from_the_store(engine: Engine, config: Config,
                                                                       tmp_path: Path,
                                                                       mounts: list[MountProcess]) -> None:
    """Issue 14: every read a lazy mount makes (HEAD, snapshot, trees, packs) comes through the pool."""
    source = tmp_path / "source"
    make_wide(source, TOP, MID, LEAF)
    await commit(engine, "wide", source)
    with gateway_process(config, tmp_path) as (_, url):
        m = start(mounts, through(worker_config(config, tmp_path, "w2"), url), "wide", tmp_path / "mnt")
        assert await asyncio.to_thread(tree_of, m.path) == tree_of(source)  # every tree and file, read
        status = m.call("status")
        assert status["dirs_listed"] == TREES and status["store"]["keys"] == {}
        with urllib.request.urlopen(f"{url}/metrics") as resp:
            text = resp.read().decode()
        assert metric(text, "syncd_gateway_cache_misses_total", kind="trees") == TREES
        assert m.stop() == 0


async def test_names_and_link_targets_that_are_not_utf8_list_through_the_mount(
        engine: Engine, config: Config, tmp_path: Path, mounts: list[MountProcess]) -> None:
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name\n")
    os.symlink(b"caf\xe9.txt", os.fsencode(source / "dir" / "link"))      # a target that is not UTF-8
    await commit(engine, "bytes", source)
    m = start(mounts, worker_config(config, tmp_path, "w2"), "bytes", tmp_path / "mnt")
    listed = subprocess.run(["ls", "-1", os.fsencode(m.path / "dir")], capture_output=True, timeout=60)
    assert listed.returncode == 0 and sorted(listed.stdout.split()) == [b"caf\xe9.txt", b"link"]
    link = os.fsencode(m.path / "dir" / "link")
    assert os.readlink(link) == b"caf\xe9.txt" and os.lstat(link).st_size == len(b"caf\xe9.txt")
    assert (m.path / "dir" / "link").read_bytes() == b"latin-1 name\n"
    assert m.stop() == 0
