"""Concurrent writers: N processes commit to one volume at once, on the real server.

Each writer process has its own working directory, cache and state (as separate
workers would) and commits in a loop: a file only it writes, its own ``own.txt``,
one of a few ``shared/`` files every writer rewrites, and now and then a
deletion (see ``procworker.writer_contents``). Afterwards the history must be one
line of snapshots, one per commit, seq falling by one along parent links, and
every snapshot in it, as well as every hydrate a reader made meanwhile, must
hold exactly what the documented rule says: for every
path, the version written by the latest commit (by seq) that touched it. That
is "zero lost updates": an earlier write to a shared path is superseded only by
a later commit, and stays reachable in the history.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.errors import VolumeNotFound
from syncd.format.chunking import content_id
from syncd.format.manifest import Snapshot

from .conftest import worker_config
from .procworker import config_to_json, shared_content, shared_name, writer_contents
from .treeutil import snapshot_tree

ROOT = Path(__file__).resolve().parent.parent
SHARED = 3


async def run_writers(config: Config, tmp_path: Path, writers: int, commits: int) -> list[dict[str, int | str]]:
    procs = []
    for w in range(writers):
        job = {"config": config_to_json(worker_config(config, tmp_path, f"w{w}")), "volume": "vol",
               "dir": str(tmp_path / f"w{w}" / "work"), "writer": w, "commits": commits, "shared": SHARED}
        (tmp_path / f"w{w}" / "work").mkdir(parents=True)
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.procworker", "writer", json.dumps(job), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))
    try:
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 300)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err.decode()[-3000:]
    return [json.loads(line) for out, _ in outputs for line in out.decode().splitlines()]


def expected_state(records: list[dict[str, int | str]], upto_seq: int) -> dict[str, bytes]:
    """path -> bytes every snapshot of seq ``upto_seq`` must hold, by the later-commit-wins rule."""
    state: dict[str, bytes] = {}
    for rec in sorted(records, key=lambda r: int(r["seq"])):
        if int(rec["seq"]) > upto_seq:
            break
        w, k = int(rec["writer"]), int(rec["k"])
        for path, data in writer_contents(w, k).items():
            if data is None:
                state.pop(path, None)
            else:
                state[path] = data
        state[shared_name(w, k, SHARED)] = shared_content(w, k)
    return state


async def hydrate_while(config: Config, target: Path, stop: asyncio.Event) -> list[tuple[int, dict[str, bytes]]]:
    """Hydrate the volume into ``target`` again and again until ``stop``: (seq, files) of each."""
    views: list[tuple[int, dict[str, bytes]]] = []
    async with open_engine(config) as engine:
        while not stop.is_set():
            try:
                result = await hydrate(engine, "vol", target)
            except VolumeNotFound:
                await asyncio.sleep(0.05)
                continue
            tree = await asyncio.to_thread(snapshot_tree, target)
            views.append((result.seq, {p: v[2] for p, v in tree.items() if isinstance(v[2], bytes)}))
            await asyncio.sleep(0.05)     # leave the writers most of the CPU: they should race each other
    return views


def file_ids(snap: Snapshot) -> dict[str, list[str]]:
    return {p: [c.id for c in e.chunks] for p, e in snap.entries.items() if e.kind == "file"}


async def check_concurrent_writers(config: Config, tmp_path: Path, writers: int, commits: int) -> dict[str, float]:
    started = time.monotonic()
    stop = asyncio.Event()
    reader = asyncio.ensure_future(hydrate_while(worker_config(config, tmp_path, "reader"), tmp_path / "view", stop))
    try:
        records = await run_writers(config, tmp_path, writers, commits)
    finally:
        stop.set()
        views = await reader
    elapsed = time.monotonic() - started
    assert len(records) == writers * commits
    # a reader hydrating while the writers commit always sees one whole snapshot
    for seq, view in views:
        assert view == expected_state(records, seq), f"a hydrate of seq {seq} saw a mix"
    async with open_engine(config) as engine:
        history = await engine.repo.history("vol")
        # one line: one snapshot per commit, seq falls by one along parent links
        assert [s.seq for _, s in history] == list(range(writers * commits, 0, -1))
        assert history[-1][1].parent is None
        assert all(s.parent == history[i + 1][0] for i, (_, s) in enumerate(history[:-1]))
        assert sorted(str(r["snapshot"]) for r in records) == sorted(sid for sid, _ in history)
        # every snapshot holds exactly what the later-commit-wins rule says: nothing lost
        for _, snap in history:
            want = {p: [content_id(b)] for p, b in expected_state(records, snap.seq).items()}
            assert file_ids(snap) == want, f"snapshot seq {snap.seq} lost or resurrected a write"
        final = tmp_path / "final"
        await hydrate(engine, "vol", final)
    tree = snapshot_tree(final)
    assert {p: v[2] for p, v in tree.items() if v[0] == "file"} == expected_state(records, writers * commits)
    attempts = [int(r["attempts"]) for r in records]
    return {"seconds": elapsed, "commits": len(records), "max_attempts": max(attempts),
            "mean_attempts": sum(attempts) / len(attempts), "retried_commits": sum(a > 1 for a in attempts),
            "concurrent_hydrates": len(views)}


async def test_concurrent_writers_lose_nothing(config: Config, tmp_path: Path) -> None:
    figures = await check_concurrent_writers(config, tmp_path, writers=4, commits=12)
    assert figures["retried_commits"] > 0, "the writers never raced: the test proves nothing"
    print("concurrent writers 4x12:", figures)


@pytest.mark.slow
async def test_eight_writers_fifty_commits_lose_nothing(config: Config, tmp_path: Path) -> None:
    figures = await check_concurrent_writers(config, tmp_path, writers=8, commits=50)
    assert figures["retried_commits"] > 0, "the writers never raced: the test proves nothing"
    print("concurrent writers 8x50:", figures)
