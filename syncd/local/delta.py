"""The local side of a commit or hydrate at the cost of the change, not of the directory.

Two questions, each answered reading only the index rows on changed paths:

``walk_changes(store, volume, root)`` -- what changed since the index was
written, for callers that must walk (the CLI). The walk lstats every entry,
as any walk must, but keeps nothing of a directory whose digest
(dirdigest.py) equals the one in the index: only the directories that
disagree keep their listing, and only their children's rows are read
(``IndexStore.children``). A changed path is a child whose row is missing,
whose row no longer matches (``unchanged``, or a directory's mode), or whose
row names something the directory no longer holds. Everything inside a new
directory is new (it has no digest), and the walk goes on below every
directory, so a change at any depth is found.

``known_state(store, volume, root, changed)`` -- the part of the index and of
the directory that a commit or hydrate needs, given the changed paths (from
the walk, or from the agent's watcher, which needs no walk): the rows of
those paths and of their ancestors, plus every row below a path that was a
directory and no longer is one; the local side is ``overlay`` (changes.py)
of those rows. Every path outside it is, by construction, what its row says.

The walk reaches every directory through its parent's descriptor with
``O_NOFOLLOW`` (dirfd.py), like scan.py, whose per-entry look it shares,
and holds one descriptor per level; it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.local import dirdigest, dirfd
from syncd.local.changes import lstat_one, overlay
from syncd.local.index import IndexStore, LocalIndex, Tracked, unchanged
from syncd.local.scan import TMP_PREFIX, LocalFile, _entry, _list

Listing = dict[str, LocalFile]


def _term(seed: int, name: str, loc: LocalFile) -> int:
    fingerprint = loc.fingerprint if loc.kind == "file" else None
    return dirdigest.child_hash(seed, name, loc.kind, loc.mode, fingerprint, loc.target, loc.mtime_ns)


def _look(fd: int, rel: str, root: Path, seed: int, digests: dict[str, int], dirty: dict[str, Listing],
          leftovers: list[str] | None) -> list[str]:
    """List one directory, keep its listing if its digest disagrees; its subdirectories' names."""
    listing: Listing = {}
    subdirs: list[str] = []
    total = 0
    for name in _list(fd, root / rel):
        path = f"{rel}/{name}" if rel else name
        if name.startswith(TMP_PREFIX):
            if leftovers is not None:
                leftovers.append(path)
            continue
        found = _entry(fd, name, root, path)
        if found is None:
            continue
        loc, child = found
        if child is not None:
            os.close(child)
            subdirs.append(name)
        listing[name] = loc
        total += _term(seed, name, loc)
    if total % dirdigest.MOD != digests.get(rel, 0):
        dirty[rel] = listing
    return subdirs


def walk_dirty(root: Path, seed: int, digests: dict[str, int],
               leftovers: list[str] | None = None) -> dict[str, Listing]:
    """The listing of every directory below ``root`` whose digest is not the index's."""
    dirty: dict[str, Listing] = {}
    try:
        root_fd = dirfd.open_root(root)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise LocalIOError(f"cannot read directory {root}: {exc.strerror}") from exc
    stack: list[tuple[int, str, list[str]]] = []
    try:
        stack.append((root_fd, "", _look(root_fd, "", root, seed, digests, dirty, leftovers)))
        while stack:
            fd, rel, pending = stack[-1]
            if not pending:
                os.close(fd)
                stack.pop()
                continue
            name = pending.pop()
            path = f"{rel}/{name}" if rel else name
            try:
                child = os.open(name, dirfd.CHILD_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in dirfd.MOVED:
                    continue    # swapped or gone since it was listed: its parent's digest tells
                raise LocalIOError(f"cannot read {root / path}: {exc.strerror}") from exc
            try:
                subdirs = _look(child, path, root, seed, digests, dirty, leftovers)
            except BaseException:
                os.close(child)
                raise
            stack.append((child, path, subdirs))
    except BaseException:
        for fd, _, _ in stack:
            os.close(fd)
        raise
    return dirty


async def walk_changes(store: IndexStore, volume: str, root: Path,
                       leftovers: list[str] | None = None) -> dict[str, LocalFile | None]:
    """Every path that may differ from its index row, with what the walk saw there (None: gone)."""
    if not await asyncio.to_thread(root.is_dir):
        raise LocalIOError(f"{root} is not a directory")
    seed, digests = await store.digests(volume, root)
    dirty = await asyncio.to_thread(walk_dirty, root, seed, digests, leftovers)
    rows = await store.children(volume, root, list(dirty))
    changed: dict[str, LocalFile | None] = {}
    for rel, listing in dirty.items():
        for name, loc in listing.items():
            path = f"{rel}/{name}" if rel else name
            tracked = rows.get(path)
            if tracked is None or not unchanged(tracked, loc) or moved_dir(tracked, loc):
                changed[path] = loc
    changed.update({p: None for p in rows if dirdigest.name_of(p) not in dirty[dirdigest.parent_of(p)]})
    for path in ancestors(changed):     # their mtimes moved: recorded too
        parent, name = dirdigest.parent_of(path), dirdigest.name_of(path)
        if path in dirty and parent in dirty:
            changed[path] = dirty[parent].get(name)
        elif path in dirty:
            changed[path] = lstat_one(root, path)
    return changed


def moved_dir(tracked: Tracked, loc: LocalFile) -> bool:
    """A directory whose mode or mtime is not its row's (both count in its parent's digest)."""
    return loc.kind == "dir" and (tracked.entry.mode != loc.mode or tracked.entry.mtime_ns != loc.mtime_ns)


def ancestors(paths: Collection[str]) -> set[str]:
    out: set[str] = set()
    for path in paths:
        parent = dirdigest.parent_of(path)
        while parent and parent not in out:
            out.add(parent)
            parent = dirdigest.parent_of(parent)
    return out


async def known_state(store: IndexStore, volume: str, root: Path,
                      changed: Collection[str]) -> tuple[LocalIndex, dict[str, LocalFile]]:
    """(the index rows, the local entries) of ``changed`` and what they imply; nothing else."""
    state = await store.state(volume, root)
    changed = set(changed)
    rows: dict[str, Tracked] = await store.rows(volume, root, changed | ancestors(changed)) if state else {}
    tracked_dirs = [p for p in changed if p in rows and rows[p].entry.kind == "dir"]
    now = await asyncio.to_thread(lambda: {p: lstat_one(root, p) for p in tracked_dirs})
    gone = [p for p, loc in now.items() if loc is None or loc.kind != "dir"]
    if gone:
        rows.update(await store.rows(volume, root, (), gone))
    index = LocalIndex(state.snapshot, state.seq, rows) if state else LocalIndex()
    return index, await overlay(root, index, changed)
