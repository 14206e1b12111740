"""Commit: turn a local directory's changes into a new snapshot of the volume.

1. Scan the directory and compare with the local index. A file whose stat
   fingerprint (inode, size, mtime, ctime) is unchanged keeps its chunk list
   without being read; a file that vanished from one path and appeared at
   another with the same inode, size and mtime is a rename, also not read.
   Everything else is read and cut by content (data/chunkread.py), hashed in a
   worker thread and handed to the Uploader, which PUTs only chunks the volume
   lacks (asking the volume's chunk index for chunks it does not know).
2. A file is stat'ed before and after it is read; if it changed meanwhile it
   is read again (up to 3 times) and otherwise left out of this commit (kept
   at its previous version), so a snapshot never claims bytes the file never
   held as a whole.
3. Our changes are the per-path diff from the index (what this directory last
   synced) to the scan. They are applied on top of the volume's latest
   snapshot's trees (VolumeRepo.build: only the directories on changed paths
   are read and rewritten, every other subtree is shared by id) and the
   commit point is advanced with ``If-Match``. If another
   writer got there first, the precondition fails, we re-read HEAD, re-apply
   the same changes on the new latest snapshot and try again: disjoint changes
   both survive, and on the same path ours (the later commit) wins while
   theirs stays reachable as our parent. While prune holds its lease in HEAD
   we wait; if a prune ran since we checked the objects we reuse (HEAD's
   epoch moved), they are checked again, and if one is gone the build is
   redone, reading and uploading the files that used it.
4. Where this configuration can produce multipart uploads (a chunk or pack
   above ``multipart_threshold``), a successful commit aborts the volume's
   multipart uploads older than ``stale_upload_age``: the leftovers of writers
   killed mid-upload. Best-effort: a failure there is logged, not raised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from syncd.data.chunkread import file_chunks
from syncd.data.upload import Uploader
from syncd.engine.progress import NoProgress, Progress
from syncd.engine.volumes import Head
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, LocalIOError, NotFound, PreconditionFailed, StoreError, VolumeNotFound
from syncd.format.layout import object_key
from syncd.format.manifest import Changes, ChunkRef, Entry, Snapshot, diff, escaping_symlinks, symlink_stays_inside
from syncd.local.delta import known_state, walk_changes
from syncd.local.dirfd import open_file
from syncd.local.index import Fingerprint, LocalIndex, Tracked
from syncd.local.scan import LocalFile, from_stat

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 30
REUSE_PASSES = 3
READERS = 4
UNSTABLE_RETRIES = 3


@dataclass
class CommitResult:
    volume: str
    snapshot: str | None
    seq: int
    changed: int = 0
    files_read: int = 0
    bytes_read: int = 0
    uploaded_chunks: int = 0
    uploaded_bytes: int = 0
    reused_chunks: int = 0
    merged: bool = False
    attempts: int = 0
    trees_written: int = 0
    tree_bytes: int = 0
    skipped: list[str] = field(default_factory=list)


async def commit(engine: Engine, volume: str, source: Path, *, message: str = "", create: bool = True,
                 progress: Progress | None = None, changed: Collection[str] | None = None) -> CommitResult:
    """``changed``: if given, the only paths that may differ from the local index (a watcher's
    hint); they are lstat'ed instead of walking ``source`` (local/changes.py)."""
    async with engine.index.locked(volume, source):
        try:
            head = await engine.repo.head(volume)
        except VolumeNotFound:
            if not create:
                raise
            head, _ = await engine.repo.create(volume)
        if changed is None:
            changed = await walk_changes(engine.index, volume, source)
        index, local = await known_state(engine.index, volume, source, changed)
        state = await engine.index.state(volume, source)
        exact = state is None or state.exact
        result = CommitResult(volume, head.snapshot, head.seq)
        for _ in range(REUSE_PASSES):
            head = await wait_for_lease(engine, head)
            theirs = await engine.repo.header(volume, head.snapshot) if head.snapshot else None
            final, fingerprints, recheck = await _build(engine, volume, source, index, local, theirs, result,
                                                        progress or NoProgress())
            try:
                head = await _advance(engine, volume, head, index, final, message, result, recheck)
                break
            except _PruneRan as ran:
                head = ran.head
        else:
            raise CommitConflict(f"volume {volume!r}: prunes kept running during this commit; try again")
        tracked = {p: Tracked(final[p], fingerprints.get(p)) for p in final
                   if p not in result.skipped}
        tracked.update({p: index.files[p] for p in result.skipped if p in index.files})
        rows: dict[str, Tracked | None] = {p: t for p, t in tracked.items() if index.files.get(p) != t}
        rows.update({p: None for p in index.files if p not in tracked})
        # exact: the directory is the new snapshot's tree, unless others' changes were merged in
        await engine.index.update(volume, source, head.snapshot, head.seq, rows,
                                  exact=exact and not result.merged)
    await _abort_stale_uploads(engine, volume)
    return result


async def _abort_stale_uploads(engine: Engine, volume: str) -> None:
    config = engine.config
    if max(4 * config.chunk_size, config.pack_size, config.large_pack_size) <= config.multipart_threshold:
        return  # no object of ours is ever uploaded in parts: nothing to clean
    try:
        aborted = await engine.repo.abort_stale_uploads(volume, config.stale_upload_age)
    except StoreError as exc:
        log.warning("could not clean up stale multipart uploads of %r: %s", volume, exc)
        return
    if aborted:
        log.info("aborted %d stale multipart upload(s) of %r", aborted, volume)


async def _build(engine: Engine, volume: str, source: Path, index: LocalIndex, local: dict[str, LocalFile],
                 theirs: Snapshot | None, result: CommitResult,
                 progress: Progress) -> tuple[dict[str, Entry], dict[str, Fingerprint], Recheck]:
    """Read and upload what changed; our entries, every chunk at its stored location.

    A chunk we reuse without uploading it, that the HEAD snapshot we read does
    not reference (it comes from our local index, or the store answered
    "already exists"), may be one that prune is deleting: it is old and no
    live snapshot needs it. So such objects are checked just before HEAD is
    advanced, and if one is gone, the files using it are read and uploaded again.
    """
    head_refs = _locations(theirs.entries.values() if theirs else ())
    excluded: set[str] = set()
    for _ in range(REUSE_PASSES):
        result.skipped, result.files_read, result.bytes_read = [], 0, 0
        known = {i: r for i, r in _locations(index.entries().values(), head_refs.values()).items()
                 if i not in excluded}
        uploader = engine.uploader(volume, known)
        reader = _Reader(engine, source, uploader, result, progress, excluded)
        try:
            ours = await reader.build(index, local)
            await uploader.finish()
        except BaseException:
            await uploader.abort()
            raise
        final = {p: Entry(e.path, e.kind, e.mode, e.mtime_ns, e.size,
                          tuple(uploader.location(c.id) for c in e.chunks), e.target)
                 for p, e in ours.items()}
        changed = [e for e in diff(index.entries(), final).values() if e is not None]
        missing = await _missing_reused(engine, volume, changed, head_refs, uploader)
        if not missing:
            break
        log.warning("volume %r: %d reused chunk(s) were pruned meanwhile; uploading them again",
                    volume, len(missing))
        excluded |= missing
    else:
        raise CommitConflict(f"volume {volume!r}: chunks this commit reuses keep disappearing "
                             "(a prune with a short grace period?); try again")
    result.uploaded_chunks, result.uploaded_bytes = uploader.uploaded_chunks, uploader.uploaded_bytes
    result.reused_chunks = uploader.reused_chunks
    for path in result.skipped:  # keep what the index had for files we could not read
        if path in index.files:
            final[path] = index.files[path].entry

    async def recheck() -> bool:
        """Are the reused objects all still there? (Asked again after a prune took its lease.)"""
        return not await _missing_reused(engine, volume, changed, head_refs, uploader)

    return final, reader.fingerprints, recheck


Recheck = Callable[[], Awaitable[bool]]


async def _missing_reused(engine: Engine, volume: str, changed: list[Entry], head_refs: dict[str, ChunkRef],
                          uploader: Uploader) -> set[str]:
    """Ids of reused chunks (not in HEAD's snapshot, not uploaded by us) whose object is gone."""
    suspects: dict[str, list[str]] = {}
    for entry in changed:
        for ref in entry.chunks:
            if ref.id in head_refs or (ref.id in uploader.new and ref.id not in uploader.existed):
                continue
            suspects.setdefault(object_key(engine.layout, volume, ref), []).append(ref.id)

    async def gone(key: str) -> bool:
        try:
            await engine.store.head(key)
        except NotFound:
            return True
        return False

    keys = list(suspects)
    flags = await asyncio.gather(*(gone(k) for k in keys))
    return {i for k, flag in zip(keys, flags) if flag for i in suspects[k]}


def _locations(*groups: Iterable[Entry | ChunkRef]) -> dict[str, ChunkRef]:
    known: dict[str, ChunkRef] = {}
    for group in groups:
        for item in group:
            for ref in (item.chunks if isinstance(item, Entry) else (item,)):
                known.setdefault(ref.id, ref)
    return known


class _PruneRan(Exception):
    """A prune deleted objects this commit reuses: build again (reading those files)."""

    def __init__(self, head: Head) -> None:
        super().__init__("a prune ran during the commit")
        self.head = head


LEASE_POLL = 0.25


async def wait_for_lease(engine: Engine, head: Head) -> Head:
    """Wait while prune holds an unexpired lease in HEAD; returns a HEAD read without one."""
    delay = LEASE_POLL
    while head.leased():
        log.info("volume %r: prune holds the lease until %.0f; waiting", head.volume, head.lease_expires)
        await asyncio.sleep(min(delay, max(0.0, head.lease_expires - time.time()) + 0.01))
        delay = min(delay * 2, 5.0)
        head = await engine.repo.head(head.volume)
    return head


def needs_link_check(changes: Changes, base: Mapping[str, Entry], theirs: Snapshot | None) -> bool:
    """Can these changes make some symlink lead out of the volume through other links?

    Used by every writer that publishes (commit, the lazy mount). A parent whose stats are
    unknown (a format-1 snapshot) may hold links, so replacing a directory there is checked."""
    for path, entry in changes.items():
        before = base.get(path)
        if (entry is not None and entry.kind == "symlink") or (before is not None and before.kind == "symlink"):
            return True
        if theirs is not None and (theirs.stats is None or theirs.stats.links) and (
                (entry is None and before is not None and before.kind == "dir")
                or (entry is not None and before is not None and entry.kind != before.kind)):
            return True
    return False


async def _advance(engine: Engine, volume: str, head: Head, index: LocalIndex, ours: dict[str, Entry],
                   message: str, result: CommitResult, recheck: Recheck) -> Head:
    base = index.entries()
    changes = diff(base, ours)
    result.changed = len(changes)
    checked_epoch = head.epoch
    for attempt in range(1, MAX_ATTEMPTS + 1):
        result.attempts = attempt
        head = await wait_for_lease(engine, head)
        if head.epoch != checked_epoch:     # a prune ran since we checked what we reuse: again
            if not await recheck():
                raise _PruneRan(head)
            checked_epoch = head.epoch
        theirs = await engine.repo.header(volume, head.snapshot) if head.snapshot else None
        result.merged = result.merged or head.snapshot != index.snapshot
        if not changes and theirs is not None:
            result.snapshot, result.seq = head.snapshot, head.seq
            return head
        attempt_changes = dict(changes)
        built = await engine.repo.build(volume, theirs, attempt_changes, base)
        if needs_link_check(changes, base, theirs):
            merged = await engine.repo.trees.flat(volume, built.root)
            escaping = escaping_symlinks(merged)     # links that escape only in combination
            for path in escaping:
                log.warning("volume %r: leaving out symlink %r: it leads out of the volume", volume, path)
                attempt_changes[path] = None
                if path in ours and path not in result.skipped:
                    result.skipped.append(path)
            if escaping:
                built = await engine.repo.build(volume, theirs, attempt_changes, base)
        if theirs is not None and theirs.root is not None and built.root.id == theirs.root.id:
            result.snapshot, result.seq = head.snapshot, head.seq
            return head
        result.trees_written, result.tree_bytes = built.trees_written, built.bytes
        try:
            head = await engine.repo.publish_built(head, built, message)
        except PreconditionFailed:
            await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** min(attempt, 6))))
            head = await engine.repo.head(volume)
            continue
        result.snapshot, result.seq = head.snapshot, head.seq
        return head
    raise CommitConflict(f"volume {volume!r}: the commit point moved {MAX_ATTEMPTS} times while "
                         "we tried to advance it; try again")


class _Reader:
    """Builds our entries: reuses unchanged and renamed files, reads the rest."""

    def __init__(self, engine: Engine, root: Path, uploader: Uploader, result: CommitResult,
                 progress: Progress, excluded: set[str]) -> None:
        self.engine, self.root, self.uploader, self.result, self.progress = engine, root, uploader, result, progress
        self.excluded = excluded  # chunk ids that must not be reused: read those files again
        self.fingerprints: dict[str, tuple[int, int, int, int]] = {}
        self._readers = asyncio.Semaphore(READERS)

    async def build(self, index: LocalIndex, local: dict[str, LocalFile]) -> dict[str, Entry]:
        ours: dict[str, Entry] = {}
        renamed = {(t.fingerprint[0], t.fingerprint[1], t.fingerprint[2]): t
                   for p, t in index.files.items()
                   if t.fingerprint and t.entry.kind == "file"
                   and (p not in local or local[p].ino != t.fingerprint[0])}
        to_read: list[tuple[str, LocalFile]] = []
        for path, loc in local.items():
            if loc.kind == "dir":
                ours[path] = Entry(path, "dir", loc.mode, loc.mtime_ns)
            elif loc.kind == "symlink":
                if symlink_stays_inside(path, loc.target or ""):
                    ours[path] = Entry(path, "symlink", loc.mode, loc.mtime_ns, target=loc.target)
                else:
                    self.result.skipped.append(path)
            else:
                reuse = self._reusable(index.files.get(path), loc, renamed)
                if reuse is not None and not any(c.id in self.excluded for c in reuse.entry.chunks):
                    ours[path] = Entry(path, "file", loc.mode, loc.mtime_ns, loc.size, reuse.entry.chunks)
                    self.fingerprints[path] = loc.fingerprint
                else:
                    to_read.append((path, loc))
        self.progress.start(sum(loc.size for _, loc in to_read), "commit")
        entries = await asyncio.gather(*(self._read_file(path) for path, _ in to_read))
        for (path, _), entry in zip(to_read, entries):
            if entry is not None:
                ours[path] = entry
        return ours

    @staticmethod
    def _reusable(tracked: Tracked | None, loc: LocalFile,
                  renamed: dict[tuple[int, int, int], Tracked]) -> Tracked | None:
        if tracked is not None and tracked.entry.kind == "file" and tracked.fingerprint == loc.fingerprint:
            return tracked
        return renamed.get((loc.ino, loc.size, loc.mtime_ns))

    async def _read_file(self, path: str) -> Entry | None:
        async with self._readers:
            for _ in range(UNSTABLE_RETRIES):
                entry = await self._read_once(path)
                if entry is not None:
                    return entry
            self.result.skipped.append(path)
            return None

    async def _read_once(self, path: str) -> Entry | None:
        """One read of ``path``; None if it changed while we read it."""
        full = self.root / path
        try:   # every component O_NOFOLLOW from the root's descriptor; None: it moved since the scan
            fd = await asyncio.to_thread(open_file, self.root, path)
        except OSError as exc:
            raise LocalIOError(f"cannot read {full}: {exc.strerror}") from exc
        if fd is None:
            return None
        try:
            before = from_stat(await asyncio.to_thread(os.fstat, fd))
            small = self.engine.chunker.whole(before.size)
            refs = []   # cut by content (data/chunkread.py); a file that shrank meanwhile is read again
            async for data, chunk_id, held in file_chunks(fd, before.size, self.engine.chunker, self.engine.budget):
                await self.uploader.add(chunk_id, data, held, small, group=path)
                refs.append(ChunkRef(chunk_id, len(data)))
                self.progress.advance(len(data))
            if sum(r.size for r in refs) != before.size:
                return None
            after = from_stat(await asyncio.to_thread(os.fstat, fd))
        finally:
            self.uploader.end_group(path)
            os.close(fd)
        if after.fingerprint != before.fingerprint:
            return None
        self.result.files_read += 1
        self.result.bytes_read += before.size
        self.fingerprints[path] = before.fingerprint
        return Entry(path, "file", before.mode, before.mtime_ns, before.size, tuple(refs))

