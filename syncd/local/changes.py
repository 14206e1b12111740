"""What a walk would find, computed from the index plus a list of changed paths.

Change notification (watch.py) tells us which paths were touched; everything
else is, by construction, what the local index says. Two helpers turn that
into the two answers callers need, each at a cost proportional to the touched
paths, not to the directory:

``overlay(root, index, changed)`` is what ``scan(root)`` would return: the
index's rows rendered as LocalFiles, with each changed path lstat'ed again. A
changed path that is gone (or is now something a scan skips) takes its whole
subtree with it; a changed path that is now a directory the index did not have
as one (created, or moved in) is walked, since nothing was watching inside it.
A commit given this instead of a scan reads exactly the files whose fingerprint
moved, as it would after a walk. The parents of changed paths must be in
``changed`` too (their mtime moved); the watcher adds them.

``differing(root, rows, paths)`` says which of ``paths`` differ from their
index rows (``rows`` holds the rows of those paths and of the subtrees of any
that vanished): the watcher's "is there anything to commit?", the same test as
a full-walk ``signature`` restricted to the touched paths.

Both run in a worker thread (lstat blocks).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.local import dirfd
from syncd.local.index import LocalIndex, Tracked, unchanged
from syncd.local.scan import TMP_PREFIX, LocalFile, from_stat, scan_sync


def as_local(tracked: Tracked) -> LocalFile:
    """The LocalFile a scan returns for a path that is still what the index says."""
    e, fp = tracked.entry, tracked.fingerprint
    if e.kind == "file" and fp is not None:
        return LocalFile("file", e.mode, fp[1], fp[2], fp[0], fp[3])
    return LocalFile(e.kind, e.mode, 0, e.mtime_ns, 0, 0, e.target)


def lstat_one(root: Path, path: str) -> LocalFile | None:
    """What a scan would record at ``path``; None if it would record nothing.

    Reached through directory descriptors (dirfd.py), never by following a
    link below ``root``: a path whose parent is no longer a real directory is
    as absent as it is to a scan."""
    if any(part.startswith(TMP_PREFIX) for part in path.split("/")):
        return None
    try:
        parent, name = dirfd.open_parent_fd(root, path)
    except OSError as exc:
        if exc.errno in dirfd.MOVED:
            return None
        raise LocalIOError(f"cannot read {root / path}: {exc.strerror}") from exc
    with dirfd.closing(parent):
        try:
            st = os.lstat(name, dir_fd=parent)
            target = os.readlink(name, dir_fd=parent) if stat.S_ISLNK(st.st_mode) else None
        except OSError as exc:
            if exc.errno in dirfd.MOVED:
                return None
            raise LocalIOError(f"cannot read {root / path}: {exc.strerror}") from exc
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return None
    return from_stat(st, target)


def scan_below(root: Path, top: str) -> dict[str, LocalFile]:
    """``scan_sync`` of the directory ``top`` below ``root``, opened without following links."""
    parent, name = dirfd.open_parent_fd(root, top)
    with dirfd.closing(parent):
        child = os.open(name, dirfd.CHILD_DIR, dir_fd=parent)
    with dirfd.closing(child):
        return scan_sync(Path(f"/proc/self/fd/{child}"))   # the very directory we opened


def _under(path: str, tops: Collection[str]) -> bool:
    """Is ``path`` strictly below one of ``tops``? O(depth): its ancestors are looked up in ``tops``
    (a set), never each of ``tops`` scanned (that was quadratic in a first commit, where every
    path is changed and every file lands in ``gone``)."""
    cut = path.rfind("/")
    while cut > 0:
        path = path[:cut]
        if path in tops:
            return True
        cut = path.rfind("/")
    return False


def overlay_sync(root: Path, index: LocalIndex, changed: Collection[str]) -> dict[str, LocalFile]:
    local = {p: as_local(t) for p, t in index.files.items()}
    gone: set[str] = set()
    walk: list[str] = []
    for path in sorted(changed, key=len):
        if _under(path, gone):
            continue
        loc = lstat_one(root, path)
        if loc is None:
            local.pop(path, None)
            gone.add(path)
            continue
        old = index.files.get(path)
        local[path] = loc
        if loc.kind != "dir":
            gone.add(path)          # a file where a directory was: the old subtree is gone
        elif old is None or old.entry.kind != "dir":
            walk.append(path)
    if gone:
        local = {p: f for p, f in local.items() if not _under(p, gone)}
    for top in walk:
        if _under(top, gone):
            continue
        try:
            found = scan_below(root, top)
        except (OSError, LocalIOError):
            continue                # vanished or swapped while we looked: the next event tells
        local.update({f"{top}/{p}": f for p, f in found.items()})
    return local


async def overlay(root: Path, index: LocalIndex, changed: Collection[str]) -> dict[str, LocalFile]:
    return await asyncio.to_thread(overlay_sync, root, index, set(changed))


def differing_sync(root: Path, rows: Mapping[str, Tracked], paths: Collection[str]) -> set[str]:
    """The paths among ``paths`` whose local state differs from their index row."""
    out: set[str] = set()
    for path in paths:
        loc = lstat_one(root, path)
        tracked = rows.get(path)
        if loc is None:
            if tracked is not None or any(p.startswith(path + "/") for p in rows):
                out.add(path)
        elif tracked is None or not unchanged(tracked, loc) or tracked.entry.mode != loc.mode:
            out.add(path)
    return out
