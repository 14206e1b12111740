"""The reading half of a commit, in one worker thread: walk, compare, read and hash, in batches.

A commit of a million small files cannot afford an event-loop round trip,
a thread hand-off or a walk from the root per file (the profile of the old
commit: two thirds of its time). So one worker thread does, per call of
:meth:`Scan.step`, as much of this as one step's byte allowance covers:

* advance the walk (local/dirwalk.py) to the next directory holding a change;
* for each changed file of it: a rename (its inode, size and mtime are
  another row's whose path no longer holds that inode) keeps that row's
  chunks unread; a small file (below the chunker's threshold: one chunk) is opened relative
  to the directory's descriptor (``O_NOFOLLOW``), ``fstat``-ed, read with
  one ``pread``, ``fstat``-ed again and hashed, all here; one that changed
  while read is read again, up to ``UNSTABLE_RETRIES`` times, then left out
  of this commit (kept at its previous version); a large file is handed to
  the event loop, which reads it chunk by chunk (commit.py);
* for a vanished directory, the rows below it from the index, as deletions.

Each step returns :class:`Item`\\ s in walk order (every change of a directory
before the changes below it) and the bytes it read; the caller holds that
many bytes of its budget for them, so memory is bounded by the step size
and the budget, never by the directory or the volume. The walk's descriptor
stays open across steps while a directory's files are being read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.format.chunking import content_id
from syncd.format.manifest import ChunkRef
from syncd.local import dirdigest, dirfd
from syncd.local.changes import lstat_one
from syncd.local.dirwalk import Change, DirDelta, DirWalk
from syncd.local.indexrows import Fingerprint, RowReader, Tracked
from syncd.local.scan import LocalFile, from_stat

UNSTABLE_RETRIES = 3
MAX_ITEMS = 4096          # items per step: bounds a step's latency and memory when nothing is read


@dataclass(slots=True)
class Item:
    """One change, in walk order."""

    path: str
    local: LocalFile | None                    # what is there now; None: a deletion
    row: Tracked | None                        # the index row it replaces
    data: bytes | None = None                  # a small file's bytes, read here ...
    chunk: str | None = None                   # ... and their content id
    fingerprint: Fingerprint | None = None     # the stat the bytes were read under
    reuse: Tracked | None = None               # a renamed file: the row whose chunks it keeps
    large: bool = False                        # read by the event loop, chunk by chunk
    skipped: bool = False                      # changed on every read: left out of this commit
    below_drop: bool = False                   # a deletion under a vanished directory (its rows go whole)


@dataclass(slots=True)
class Step:
    items: list[Item] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)   # directories whose rows below all go
    bytes: int = 0
    done: bool = False


class Scan:
    """Thread side of a commit's reading: construct, call ``step`` repeatedly, ``close``."""

    def __init__(self, root: Path, reader: RowReader, hint: frozenset[str] | None, pack_threshold: int,
                 excluded: Callable[[ChunkRef], bool]) -> None:
        self.root, self.reader, self.pack_threshold, self.excluded = root, reader, pack_threshold, excluded
        self.walk = DirWalk(root, reader, hint)
        self._deltas: Iterator[DirDelta] = iter(self.walk)
        self._delta: DirDelta | None = None
        self._pending: deque[Change] = deque()
        self._drops: deque[str] = deque()
        self._below: Iterator[tuple[str, Tracked]] | None = None
        self._renames: dict[tuple[int, int, int], Tracked] = {}
        self.files_opened = 0

    @property
    def seed(self) -> int:
        return self.reader.seed

    def step(self, limit: int) -> Step:
        """The next items, holding at most ``limit`` bytes of file content (at least one file)."""
        out = Step()
        while len(out.items) < MAX_ITEMS:
            if self._below is not None:
                found = next(self._below, None)
                if found is None:
                    self._below = None
                else:
                    out.items.append(Item(found[0], None, found[1], below_drop=True))
                continue
            if self._pending:
                change = self._pending[0]
                loc = change.local
                if (loc is not None and loc.kind == "file" and loc.size < self.pack_threshold and out.bytes
                        and out.bytes + loc.size > limit):
                    break
                self._pending.popleft()
                item = self._item(change)
                out.items.append(item)
                out.bytes += len(item.data or b"")
                continue
            if self._drops:
                top = self._drops.popleft()
                out.drops.append(top)
                self._below = self.reader.subtree(top)
                continue
            if not self._next_delta():
                out.done = True
                break
        return out

    def close(self) -> None:
        """Close the walk (its descriptors) early; safe to call twice."""
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()

    def _next_delta(self) -> bool:
        self._delta = next(self._deltas, None)
        if self._delta is None:
            return False
        self._pending.extend(self._delta.changes)
        self._drops.extend(self._delta.drops)
        self._renames = self._rename_sources(self._delta.changes)
        return True

    def _rename_sources(self, changes: list[Change]) -> dict[tuple[int, int, int], Tracked]:
        """Rows (by inode, size, mtime) that files of this directory may have been renamed from:
        rows of other paths with the inode of a changed file, whose path no longer holds it."""
        wanted = {c.local.ino for c in changes if c.local is not None and c.local.kind == "file"
                  and (c.row is None or c.row.fingerprint is None or c.row.fingerprint[0] != c.local.ino)}
        out: dict[tuple[int, int, int], Tracked] = {}
        for path, row in self.reader.by_inode(wanted).items():
            fp = row.fingerprint
            if fp is None or row.entry.kind != "file":
                continue
            now = lstat_one(self.root, path)
            if now is None or now.ino != fp[0]:
                out[(fp[0], fp[1], fp[2])] = row
        return out

    def _item(self, change: Change) -> Item:
        loc = change.local
        item = Item(change.path, loc, change.row)
        if loc is None or loc.kind != "file":
            return item
        reuse = self._renames.get((loc.ino, loc.size, loc.mtime_ns))
        if reuse is not None and not any(self.excluded(c) for c in reuse.entry.chunks):
            item.reuse, item.fingerprint = reuse, loc.fingerprint
        elif loc.size >= self.pack_threshold:
            item.large = True
        else:
            self._read(item)
        return item

    def _read(self, item: Item) -> None:
        assert self._delta is not None
        name = dirdigest.name_of(item.path)
        for _ in range(UNSTABLE_RETRIES):
            self.files_opened += 1
            try:
                found = dirfd.read_whole(self._delta.fd, name)
            except OSError as exc:
                raise LocalIOError(f"cannot read {self.root / item.path}: {exc.strerror}") from exc
            if found is None:        # moved since it was listed: the next commit sees where
                break
            before, data, after = found
            if before.st_size >= self.pack_threshold:
                item.large = True
                return
            fingerprint = (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
            if fingerprint == (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) and \
                    len(data) == before.st_size:
                loc = item.local
                if loc is None or loc.fingerprint != fingerprint or loc.mode != before.st_mode & 0o7777:
                    item.local = from_stat(before)      # changed since the walk's lstat: what we read
                item.data, item.fingerprint = data, fingerprint
                item.chunk = content_id(data) if data else None
                return
        item.skipped = True

