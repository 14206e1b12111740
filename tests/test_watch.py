"""Change detection against the local index: signatures, inotify, the polling fallback (no server)."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

from syncd.format.manifest import Entry
from syncd.local.dirwalk import DirWalk
from syncd.local.index import IndexStore, LocalIndex, Tracked
from syncd.local.scan import LocalFile, scan_sync
from syncd.local.watch import InotifyWatch, PollWatch, Watcher, WatchSettings, open_watcher, signature


def _file(ino: int, size: int, mtime: int, mode: int = 0o644) -> LocalFile:
    return LocalFile("file", mode, size, mtime, ino, mtime)


def test_signature_is_zero_only_when_the_tree_matches_the_index() -> None:
    a = _file(1, 10, 100)
    index = LocalIndex("s", 1, {"a": Tracked(Entry("a", "file", 0o644, 100, 10), a.fingerprint),
                                "d": Tracked(Entry("d", "dir", 0o755), None)})
    clean = {"a": a, "d": LocalFile("dir", 0o755, 0, 5, 2, 5)}
    assert signature(index, clean) == 0
    grown = {**clean, "a": _file(1, 11, 101)}
    added = {**clean, "b": _file(3, 1, 1)}
    chmod = {**clean, "a": _file(1, 10, 100, 0o600)}
    removed = {"d": clean["d"]}
    sigs = {signature(index, t) for t in (grown, added, chmod, removed)}
    assert 0 not in sigs and len(sigs) == 4            # each difference is seen, and told apart
    assert signature(index, grown) == signature(index, dict(grown))   # stable while nothing changes


# ---------------------------------------------------------------- inotify (a real kernel, no server)

def _index_of(root: Path) -> LocalIndex:
    """What a commit or hydrate of ``root`` would have recorded."""
    return LocalIndex("s", 1, {
        p: Tracked(Entry(p, f.kind, f.mode, f.mtime_ns, f.size, target=f.target),
                   f.fingerprint if f.kind == "file" else None)
        for p, f in scan_sync(root).items()})


async def _started(tmp_path: Path, settings: WatchSettings) -> tuple[IndexStore, Path, Watcher]:
    root = tmp_path / "vol"
    for d in ("a/b", "c"):
        (root / d).mkdir(parents=True)
    for i in range(30):
        (root / ("a/b", "c", "a")[i % 3] / f"f{i}").write_text(f"{i}\n")
    (root / "link").symlink_to("a/f2")
    store = IndexStore(tmp_path / "state", "b|p|o")
    await store.save("v", root, _index_of(root))
    return store, root, await open_watcher(store, "v", root, settings)


SEED = 5
FAST = WatchSettings(poll=0.05, debounce=0.05, max_delay=1.0)


async def test_inotify_names_every_change_without_walking(tmp_path: Path) -> None:
    store, root, watch = await _started(tmp_path, FAST)
    try:
        assert isinstance(watch, InotifyWatch) and watch.scans == 1 and not watch.pending
        rng = random.Random(SEED)
        for step in range(3):
            for _ in range(12):
                _random_change(rng, root, step)
            hint = await asyncio.wait_for(watch.next_due(FAST), 10)
            assert hint is not None and watch.pending
            # the hint is complete: a commit that looks only at it finds every change a walk finds
            walked = await asyncio.to_thread(_changes, store, root, None)
            assert walked and await asyncio.to_thread(_changes, store, root, hint) == walked
            await store.save("v", root, _index_of(root))      # as the commit would
            watch.committed()
        assert watch.scans == 1                               # the only full walk was the start
        assert watch.describe()["events"] > 0
    finally:
        watch.close()


def _changes(store: IndexStore, root: Path, hint: frozenset[str] | None) -> dict[str, tuple[object, ...] | None]:
    """What a commit's walk (dirwalk.py) sees changed, with the hint or without (a full walk)."""
    with store.reader("v", root) as reader:
        return {c.path: None if c.local is None else _comparable({c.path: c.local})[c.path]
                for delta in DirWalk(root, reader, hint) for c in delta.changes}


def _comparable(local: dict[str, LocalFile]) -> dict[str, tuple[object, ...]]:
    """What a commit uses of a walk: all of a file's stat, a dir's or link's kind, mode and target."""
    return {p: (f.kind, f.mode, f.target) if f.kind != "file" else (f.kind, f.mode, f.mtime_ns, f.fingerprint)
            for p, f in local.items()}


def _random_change(rng: random.Random, root: Path, step: int) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    dirs = sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())
    op = rng.choice(["write", "append", "delete", "chmod", "mkdir", "rename_dir", "move_out", "rename"])
    tag = f"{step}-{rng.randrange(10**6)}"
    if op == "write" or not files:
        (rng.choice(dirs) if dirs else root).joinpath(f"new{tag}").write_text(tag)
    elif op == "append":
        with open(rng.choice(files), "a") as f:
            f.write(tag)
    elif op == "delete":
        rng.choice(files).unlink()
    elif op == "chmod":
        rng.choice(files).chmod(0o600)
    elif op == "rename":
        src = rng.choice(files)
        src.rename(src.with_name(f"moved{tag}"))
    elif op == "mkdir":
        d = root / f"n{tag}" / "inner"
        d.mkdir(parents=True)
        (d / "x").write_text(tag)
    elif op == "rename_dir" and dirs:
        src = rng.choice(dirs)
        src.rename(root / f"r{tag}")
    elif op == "move_out" and dirs:
        shutil.move(str(rng.choice(dirs)), str(root.parent / f"out{tag}"))


async def test_a_clean_touch_is_not_pending_and_a_hydrates_writes_are_recognised(tmp_path: Path) -> None:
    store, root, watch = await _started(tmp_path, FAST)
    try:
        (root / "c" / "f1").write_text("2\n")                # a write the index then records,
        await store.save("v", root, _index_of(root))          # as a hydrate does for its own writes
        waiter = asyncio.ensure_future(watch.next_due(FAST))
        await asyncio.sleep(0.5)
        assert not waiter.done() and not watch.pending        # checked against the index: clean
        (root / "c" / "f4").write_text("mine\n")
        assert await asyncio.wait_for(waiter, 10) == frozenset({"c/f4", "c"})
    finally:
        watch.close()


async def test_an_overflow_means_one_full_rescan_and_a_walking_commit(tmp_path: Path) -> None:
    import asyncinotify

    _, root, watch = await _started(tmp_path, FAST)
    try:
        assert isinstance(watch, InotifyWatch)
        (root / "a" / "f0").write_text("changed\n")
        watch._handle(SimpleNamespace(mask=asyncinotify.Mask.Q_OVERFLOW, watch=None, name=None))
        assert await asyncio.wait_for(watch.next_due(FAST), 10) is None     # None: the commit walks
        assert watch.scans == 2 and watch.describe()["overflows"] == 1
    finally:
        watch.close()


async def test_polling_is_the_fallback_when_watches_run_out_or_when_asked(tmp_path: Path) -> None:
    _, root, limited = await _started(tmp_path, WatchSettings(0.05, 0.05, 1.0, max_watches=2))
    assert isinstance(limited, PollWatch)                     # 4 directories, 2 watches allowed
    asked = await open_watcher(IndexStore(tmp_path / "state", "b|p|o"), "v", root,
                               WatchSettings(0.05, 0.05, 1.0, mode="poll"))
    assert isinstance(asked, PollWatch)
    (root / "c" / "polled").write_text("x")
    assert await asyncio.wait_for(asked.next_due(FAST), 10) is None and asked.scans >= 1
