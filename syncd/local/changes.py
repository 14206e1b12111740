"""Looking at chosen paths of a directory the way a walk would, at the cost of those paths.

``lstat_one(root, path)`` is what a scan would record at ``path`` (reached
through directory descriptors, never following a link below ``root``);
``scan_below(root, top)`` is a scan of the subtree ``top``.

``differing(root, rows, paths)`` says which of ``paths`` differ from their
index rows (``rows`` holds the rows of those paths and of the subtrees of any
that vanished): the watcher's "is there anything to commit?", the same test as
a full-walk ``signature`` restricted to the touched paths. (A commit given the
touched paths looks at them with dirwalk.py's HINT mode.)

All of it blocks: run it in a worker thread.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.local import dirfd
from syncd.local.index import Tracked, unchanged
from syncd.local.scan import TMP_PREFIX, LocalFile, from_stat, scan_sync


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
