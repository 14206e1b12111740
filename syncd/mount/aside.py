"""Uncommitted writes of a lazy mount are set aside by path, never wiped.

A lazy mount's writes live in its upper directory (``upper/<inode>``, data.py)
until a commit publishes them. Inode numbers mean nothing once the process is
gone, so while it runs the mount keeps a small recovery note next to the upper
directory, ``pending.json``: the volume, the snapshot it shows, and for every
upper file its path in the volume, whether everything since the last commit
is in it (``dirty``), and, for a file written only in part (copy-up keeps just
the chunks a write touched, data.py), the byte ranges the upper file holds.
The write-back loop (process.py) rewrites it (to a temporary file, then
``rename``) when the namespace or the commits moved, at most once a
``NOTE_EVERY`` seconds and never more than a tenth of the time on building it:
it costs the written files, not the volume.

When a mount starts and finds an upper directory left by an earlier process
(killed, crashed, or stopped while its last commit failed -- the volume was
deleted or renamed elsewhere, or the store was down), nothing is deleted
unseen. Each upper file goes

* to its path in the volume, below
  ``$SYNCD_STATE_DIR/mount/<owner>/.orphaned/<volume>-<UTC time>[-N]/``, if the
  note lists it as dirty (a file written only in part gets the suffix
  ``.partial``: the bytes outside its ``ranges`` are the snapshot's, not in it);
* away (deleted) if the note lists it as committed (same version, same path)
  and its mtime is older than ``clean_before_ns``, when the last successful
  commit began (and at least ``CLOCK_SLACK`` before the note, for the kernel's
  coarse file clock): a write after the note would have made it newer, so
  those bytes are exactly what the volume has;
* else to ``.unplaced/<inode>`` there (written after the last note): its bytes
  are kept, its path is not known.

``ASIDE.json`` in the set-aside directory lists every file kept with its
origin. The move is a ``rename`` within the state directory (no bytes copied),
every directory opened relative to its parent's descriptor, ``O_NOFOLLOW``;
an earlier set-aside of the same name is never replaced (``-2``, ``-3``...).
A mount sets its upper directory aside the same way as it stops, with a final
note taken after the last write (so every path is known and the mtime test is
not needed): after a successful final commit that removes everything, after a
failed one it keeps exactly the uncommitted files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from syncd.local import dirfd
from syncd.mount.data import Data
from syncd.mount.tree import Node, Tree

log = logging.getLogger(__name__)
NOTE = "pending.json"
ORPHANED = ".orphaned"
UNPLACED = ".unplaced"
PARTIAL = ".partial"
CLOCK_SLACK = 50 * 10**6         # ns: file mtimes come from a coarse clock, behind time.time_ns()
NOTE_EVERY = 1.0                 # s: the write-back loop's shortest interval between notes


def valid_ranges(node: Node, starts: list[int]) -> list[tuple[int, int]]:
    """The byte ranges of ``node``'s upper file that hold its content (the rest is the
    snapshot's, never copied up)."""
    ranges: list[tuple[int, int]] = []
    limit = min(node.lower_limit, node.size) if node.chunks else 0
    for index in sorted(node.present):
        lo, hi = starts[index], min(starts[index + 1], limit)
        if lo >= hi:
            continue
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    if limit < node.size:
        if ranges and ranges[-1][1] == limit:
            ranges[-1] = (ranges[-1][0], node.size)
        else:
            ranges.append((limit, node.size))
    return ranges


def note(tree: Tree, data: Data, volume: str, snapshot: str | None, committed_ns: int) -> dict[str, Any]:
    """The recovery note for the upper files now (no I/O: one pass over the written files);
    ``committed_ns``: when the last successful commit began."""
    files: dict[str, Any] = {}
    for ino in sorted(data.uppers):
        node = tree.inodes.get(ino)
        if node is None or not node.attached:
            files[str(ino)] = {"deleted": True}
            continue
        path = Tree.path(node)
        clean = node.committed is not None and node.committed[0] == node.version \
            and node.committed[1].path == path
        entry: dict[str, Any] = {"path": path, "dirty": not clean, "size": node.size}
        if not clean:
            ranges = valid_ranges(node, data.starts(node))
            if ranges != ([(0, node.size)] if node.size else []):
                entry["ranges"] = ranges
        files[str(ino)] = entry
    return {"volume": volume, "snapshot": snapshot, "files": files,
            "clean_before_ns": min(committed_ns, time.time_ns() - CLOCK_SLACK)}


def save(work: Path, doc: dict[str, Any]) -> None:
    tmp = work / f".{NOTE}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, work / NOTE)


def load(work: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((work / NOTE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("the recovery note %s is unreadable (%s): every upper file is kept, unplaced", work / NOTE, exc)
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), dict) else None


def set_aside(work: Path, volume: str) -> tuple[Path, list[str]] | None:
    """Set the upper directory of ``work`` aside (see the module docstring), then remove it and its
    note. Returns ``(where, paths kept)``, or None when nothing uncommitted was in it."""
    upper = work / "upper"
    try:
        upper_fd = os.open(upper, dirfd.CHILD_DIR)
    except FileNotFoundError:
        return None
    with dirfd.closing(upper_fd):
        doc = load(work) or {"files": {}}
        files: dict[str, Any] = doc["files"]
        clean_before = int(doc.get("clean_before_ns") or 0)
        final = bool(doc.get("final"))      # noted after the last write: cleanliness is exact
        keep: list[tuple[str, str | None, dict[str, Any]]] = []   # (upper name, path or None, note entry)
        for name in dirfd.list_names(upper_fd):
            try:
                st = os.stat(name, dir_fd=upper_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_size == 0 and st.st_blocks == 0 and name not in files):
                continue
            entry = files.get(name)
            if not isinstance(entry, dict):
                keep.append((name, None, {}))
            elif entry.get("deleted"):
                continue
            elif not entry.get("dirty") and (final or st.st_mtime_ns < clean_before):
                continue                                   # committed and untouched since
            else:
                path = entry.get("path")
                keep.append((name, path if isinstance(path, str) and _safe(path) else None, entry))
        if not keep:
            _remove(work)
            return None
        where = _make_target(work.parent / ORPHANED, volume)
        kept: list[dict[str, Any]] = []
        with dirfd.closing(os.open(where, dirfd.CHILD_DIR)) as where_fd:
            for name, path, entry in keep:
                placed = _move(upper_fd, name, where_fd, path, entry) if path is not None else None
                if placed is None:
                    placed = _move(upper_fd, name, where_fd, f"{UNPLACED}/{name}", {})
                if placed is None:
                    continue
                record = {"path": placed, "volume_path": path, "upper": f"upper/{name}"}
                if "ranges" in entry:
                    record["ranges"] = entry["ranges"]
                    record["size"] = entry.get("size")
                kept.append(record)
            info = {"volume": volume, "snapshot": doc.get("snapshot"), "set_aside_at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": kept,
                "partial": f"a file ending in {PARTIAL} was written only in part: the bytes outside its "
                           "ranges are the snapshot's (not in it)",
                "unplaced": f"{UNPLACED}/<inode>: written after the last recovery note; path unknown"}
            fd = os.open("ASIDE.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=where_fd)
            with open(fd, "w", encoding="utf-8") as f:
                json.dump(info, f, indent=1)
    _remove(work)
    return where, [k["path"] for k in kept]


def _safe(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and all(p not in ("", ".", "..") for p in parts) and parts[0] not in (UNPLACED, "ASIDE.json")


def _move(upper_fd: int, name: str, where_fd: int, path: str, entry: dict[str, Any]) -> str | None:
    """Rename ``upper/name`` to ``path`` below ``where_fd`` (directories made on the way, none
    followed); None if that place is taken or unusable."""
    if "ranges" in entry:
        path += PARTIAL
    parts = path.split("/")
    try:
        parent = dirfd.walk(where_fd, [])
        try:
            for part in parts[:-1]:
                nxt, _ = dirfd.make_dir_at(parent, part, 0o700)
                os.close(parent)
                parent = nxt
            with contextlib.suppress(FileExistsError):
                os.link(name, parts[-1], src_dir_fd=upper_fd, dst_dir_fd=parent, follow_symlinks=False)
                os.unlink(name, dir_fd=upper_fd)
                return path
        finally:
            os.close(parent)
    except OSError as exc:
        log.warning("cannot set %s aside at %s: %s", name, path, exc)
    return None


def _make_target(top: Path, volume: str) -> Path:
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    if top.is_symlink() or not top.is_dir():
        raise OSError(errno.ENOTDIR, f"{top} is not a directory")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 10_000):
        where = top / (f"{volume}-{stamp}" if n == 1 else f"{volume}-{stamp}-{n}")
        try:
            where.mkdir(mode=0o700)
            return where
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, f"no free name for {volume} in {top}")


def _remove(work: Path) -> None:
    shutil.rmtree(work / "upper", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(work / NOTE)
