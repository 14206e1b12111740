"""A vanished volume's local copy: what was never committed is set aside, never deleted.

When a mounted volume disappears from the bucket (``syncd volume rm`` or
``syncd volume rename`` elsewhere), the agent must drop its local copy, so that a
new volume of the same name cannot inherit the old one's files. But the copy
may hold writes that never reached any snapshot: a task wrote after the last
write-back, or while the rename ran. Those are the user's only copy.

So the copy is first renamed, in one step, to
``$SYNCD_ROOT/.orphaned/<name>-<UTC time>/`` (same filesystem: atomic, no
bytes copied; a name no volume can have, since volume names start with a
letter or digit). Then every path the local index shows unchanged since syncd
last wrote or committed it is removed: those bytes are in the bucket (in the
renamed volume) or were deleted on purpose. What stays is exactly what was
never committed: new files, modified files, symlinks and directories syncd did
not make. If nothing stays, the directory goes too; otherwise the agent logs a
warning naming it, and the user commits it anywhere with ``syncd put``.

The walk and the removals go through directory descriptors (scan.py,
localfs.remove_at), as everywhere the agent touches a directory tasks share:
no symlink planted in the copy is followed.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.local import dirfd
from syncd.local import fs as localfs
from syncd.local.index import LocalIndex, unchanged
from syncd.local.scan import scan_sync

ORPHANED = ".orphaned"


def orphan_dir(root: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = root / ORPHANED / f"{name}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def set_aside(root: Path, name: str, index: LocalIndex) -> tuple[Path, list[str]] | None:
    """Move ``root/name`` aside and drop what the index shows committed.

    Returns ``(where, kept paths)`` when uncommitted paths remain, None when nothing did
    (or there was no local copy)."""
    source = root / name
    if not source.is_dir() or source.is_symlink():
        return None
    dest = orphan_dir(root, name)
    try:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(source, dest)
    except OSError as exc:
        raise localfs.local_error(source, exc, "move aside") from exc
    leftovers: list[str] = []
    local = scan_sync(dest, leftovers)
    for path in leftovers:                        # our own temp files of an interrupted hydrate
        localfs.remove_at(dest, path, True)
    committed = [p for p, loc in local.items()
                 if loc.kind != "dir" and p in index.files and unchanged(index.files[p], loc)]
    for path in committed:
        localfs.remove_at(dest, path)
    tracked_dirs = sorted((p for p, loc in local.items() if loc.kind == "dir" and p in index.files),
                          key=lambda p: p.count("/"), reverse=True)
    for path in tracked_dirs:
        _rmdir_if_empty(dest, path)
    gone = set(committed)
    kept = sorted(p for p, loc in local.items()
                  if p not in gone and (loc.kind != "dir" or p not in index.files))
    if not kept:
        shutil.rmtree(dest, ignore_errors=True)
        return None
    return dest, kept


def _rmdir_if_empty(root: Path, rel: str) -> None:
    try:
        fd, last = dirfd.open_parent_fd(root, rel)
    except OSError:
        return
    try:
        os.rmdir(last, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            raise LocalIOError(f"cannot remove {root / rel}: {exc.strerror}") from exc
    finally:
        os.close(fd)
