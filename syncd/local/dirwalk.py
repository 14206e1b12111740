"""A directory's changes since its index rows were written, one directory at a time.

A commit must see every change and must not hold the volume to do it. So the
walk is a generator, run in one worker thread, that yields one
:class:`DirDelta` per directory holding a change: the children that differ
from their rows (name order), and the subtrees that vanished. It holds the
directory's descriptor open while the caller looks at the delta (the caller
reads the changed files relative to it, in the same thread), one descriptor
per level of the walk and the listing of one directory: memory follows the
largest directory, never the volume.

Three ways to look at a directory:

* ``FULL`` -- list it and lstat every entry (through its descriptor, like
  scan.py), sum the digest terms (dirdigest.py) and compare with the index's
  digest: only a directory that disagrees has its children's rows read and
  compared. Every subdirectory is looked at the same way.
* ``NEW`` -- a directory the index has no directory row for: everything in it
  is new, nothing is read from the index.
* ``HINT`` -- the agent's watcher names the paths that may have changed
  (their parents included): only those names are looked at, only their rows
  read, and only directories on their paths are entered. A hinted name that
  is now a directory the index did not know is walked ``NEW``.

Order. Every change of a directory comes before any change below it, and a
directory's subtree is finished before the next sibling is entered, so a
consumer can finish a directory (encode its tree) as soon as the walk has
left it (engine/trees.py). A vanished directory is named in ``drops``: the
caller reads its rows from the index (they are all deletions).

Every directory is reached from its parent's descriptor with ``O_NOFOLLOW``
(dirfd.py); what moved while we looked (``MOVED``) is left to the next walk,
as scan.py does. Temporary files of hydrates (``.syncd-tmp-*``) are never
changes; a caller that passes ``leftovers`` gets their paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.local import dirdigest, dirfd
from syncd.local.indexrows import RowReader, Tracked
from syncd.local.scan import TMP_PREFIX, LocalFile, _entry, _list

FULL, NEW, HINT = "full", "new", "hint"


@dataclass(slots=True)
class Change:
    path: str
    local: LocalFile | None       # what is there now; None: gone
    row: Tracked | None           # its index row, if it has one


@dataclass(slots=True)
class DirDelta:
    path: str                     # the directory ('' = the root)
    fd: int                       # open until the walk resumes
    changes: list[Change] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)   # directories whose rows below all go


def joined(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def differs(row: Tracked | None, loc: LocalFile) -> bool:
    """Is ``loc`` not what its row says (a directory's mode and mtime included)?"""
    if row is None:
        return True
    e = row.entry
    if loc.kind != e.kind:
        return True
    if e.kind == "file":
        return row.fingerprint is None or loc.fingerprint != row.fingerprint
    if e.kind == "symlink":
        return loc.target != e.target
    return e.mode != loc.mode or e.mtime_ns != loc.mtime_ns


def term(seed: int, name: str, loc: LocalFile) -> int:
    fingerprint = loc.fingerprint if loc.kind == "file" else None
    return dirdigest.child_hash(seed, name, loc.kind, loc.mode, fingerprint, loc.target, loc.mtime_ns)


def hint_tree(paths: Collection[str]) -> dict[str, set[str]]:
    """Directory -> the names in it that were hinted, every ancestor included."""
    tree: dict[str, set[str]] = {}
    for path in paths:
        while path:
            parent, name = dirdigest.parent_of(path), dirdigest.name_of(path)
            names = tree.setdefault(parent, set())
            if name in names:
                break
            names.add(name)
            path = parent
    return tree


class DirWalk:
    """``iter(DirWalk(...))``: the DirDeltas of ``root`` (FULL walk, or HINT with ``hint``)."""

    def __init__(self, root: Path, reader: RowReader, hint: Collection[str] | None = None,
                 leftovers: list[str] | None = None, on_dir: Callable[[str, int], bool] | None = None) -> None:
        """``on_dir(path, fd)``: told of every directory entered, before it is listed (the
        watcher adds its watch there); False: leave it alone (it moved)."""
        self.root, self.reader, self.leftovers, self.on_dir = root, reader, leftovers, on_dir
        self.hinted = hint_tree(hint) if hint is not None else None
        self.hinted_dirs: Collection[str] = self.hinted if self.hinted is not None else ()
        self.dirs_listed = 0
        self._digests: dict[str, int] = {}   # of the subdirectories still to enter (asked per parent)

    def __iter__(self) -> Iterator[DirDelta]:
        try:
            root_fd = dirfd.open_root(self.root)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise LocalIOError(f"cannot read directory {self.root}: {exc.strerror}") from exc
        stack: list[tuple[int, str, list[tuple[str, str]]]] = []
        try:
            first = yield from self._visit(root_fd, "", FULL if self.hinted is None else HINT)
            stack.append((root_fd, "", first))
            while stack:
                fd, rel, pending = stack[-1]
                if not pending:
                    os.close(fd)
                    stack.pop()
                    continue
                name, mode = pending.pop()
                path = joined(rel, name)
                try:
                    child = os.open(name, dirfd.CHILD_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in dirfd.MOVED:
                        continue    # swapped or gone since it was listed: the next walk sees it
                    raise LocalIOError(f"cannot read {self.root / path}: {exc.strerror}") from exc
                try:
                    below = yield from self._visit(child, path, mode)
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, path, below))
        except BaseException:
            for fd, _, _ in stack:
                os.close(fd)
            if not stack:
                os.close(root_fd)
            raise

    def _visit(self, fd: int, rel: str, mode: str) -> Generator[DirDelta, None, list[tuple[str, str]]]:
        """Yield the delta of one directory (if any); return its subdirectories to enter,
        as (name, mode) in reverse name order (the walk pops from the end)."""
        if self.on_dir is not None and not self.on_dir(rel, fd):
            return []
        if mode == HINT:
            assert self.hinted is not None
            listing = self._look(fd, rel, sorted(self.hinted.get(rel, ())))
            dirty, rows = True, self.reader.rows([joined(rel, n) for n in listing.names])
        else:
            listing = self._look(fd, rel, None, summed=mode == FULL)
            dirty = mode == NEW or listing.total % dirdigest.MOD != (
                self._digests.pop(rel) if rel in self._digests else self.reader.digest(rel))
            rows = self.reader.children(rel) if dirty and mode == FULL else {}
        delta = DirDelta(rel, fd)
        below: list[tuple[str, str]] = []
        for name in listing.names:
            path = joined(rel, name)
            loc, row = listing.found.get(name), rows.get(path)
            if loc is None:
                if row is not None:
                    self._gone(delta, path, row)
                continue
            if dirty and differs(row, loc):
                delta.changes.append(Change(path, loc, row))
                if row is not None and row.entry.kind == "dir" and loc.kind != "dir":
                    delta.drops.append(path)
            if loc.kind == "dir":
                if mode == NEW or (dirty and (row is None or row.entry.kind != "dir")):
                    below.append((name, NEW))          # (rows were read: it has no directory row)
                elif mode == FULL or path in self.hinted_dirs:
                    below.append((name, mode))
        if mode == FULL and rows:                     # rows of children no longer listed
            seen = set(listing.names)
            for path, row in rows.items():
                if dirdigest.name_of(path) not in seen:
                    self._gone(delta, path, row)
        if delta.changes:
            yield delta
        full = [joined(rel, name) for name, m in below if m == FULL]
        if full:
            self._digests.update(self.reader.digests(full))
        below.reverse()
        return below

    @staticmethod
    def _gone(delta: DirDelta, path: str, row: Tracked) -> None:
        delta.changes.append(Change(path, None, row))
        if row.entry.kind == "dir":
            delta.drops.append(path)

    def _look(self, fd: int, rel: str, names: list[str] | None, summed: bool = False) -> _Listing:
        """lstat ``names`` in ``fd`` (None: every entry); with ``summed``, their digest sum (a
        ``NEW`` directory has no digest to compare with: nothing is summed)."""
        self.dirs_listed += 1
        out = _Listing()
        every = names is None
        for name in sorted(_list(fd, self.root / rel)) if names is None else names:
            path = joined(rel, name)
            if name.startswith(TMP_PREFIX):
                if self.leftovers is not None and every:
                    self.leftovers.append(path)
                continue
            out.names.append(name)
            found = _entry(fd, name, self.root, path)
            if found is None:
                continue
            loc, child = found
            if child is not None:
                os.close(child)
            out.found[name] = loc
            if summed:
                out.total += term(self.reader.seed, name, loc)
        return out


@dataclass(slots=True)
class _Listing:
    names: list[str] = field(default_factory=list)          # looked at, in order
    found: dict[str, LocalFile] = field(default_factory=dict)
    total: int = 0
