"""Commit: turn a local directory's changes into a new snapshot of the volume.

1. Find the changes, as a stream, one directory at a time (commitscan.py,
   local/dirwalk.py): a walk that lstats every entry but reads the index rows
   only of directories whose digest moved, or, given the agent watcher's
   changed paths, only those paths. A file whose stat fingerprint (inode,
   size, mtime, ctime) is its row's is not looked at again; a file that
   vanished from one path and appeared at another with the same inode, size
   and mtime is a rename, also not read. Every other file is read and cut by
   content exactly as every writer cuts it (format/chunking.py: a small file
   whole, in the walk's worker thread; a large one window by window through
   data/chunkread.py) and its chunks handed to an Uploader, which PUTs only
   chunks the volume lacks (asking the volume's chunk index for chunks it
   does not know), compressed where that pays.
2. A file is stat'ed before and after it is read; if it changed meanwhile it
   is read again (up to 3 times) and otherwise left out of this commit (kept
   at its previous version), so a snapshot never claims bytes the file never
   held as a whole.
3. Our changes (per path, from what the index says this directory last
   synced to what is there now) are applied on top of the volume's latest
   snapshot's trees as they stream in (commitpass.py, trees.Builder: only the
   directories on changed paths are read and rewritten, every other subtree is
   shared by id; a directory is encoded as soon as the walk leaves it) and
   kept in a spool file. The commit point is advanced with ``If-Match``. If
   another writer got there first, the precondition fails, we re-read HEAD,
   replay the spooled changes on the new latest snapshot and try again:
   disjoint changes both survive, and on the same path ours (the later commit)
   wins while theirs stays reachable as our parent. While prune holds its
   lease in HEAD we wait; if a prune ran since we checked the objects we reuse
   (HEAD's epoch moved), they are checked again, and if one is gone the pass
   is redone, reading and uploading the files that used it.
4. Only then are the index rows written, from the spool, in batches.
5. Where this configuration can produce multipart uploads (a chunk or pack
   above ``multipart_threshold``), a successful commit aborts the volume's
   multipart uploads older than ``stale_upload_age``: the leftovers of writers
   killed mid-upload. Best-effort: a failure there is logged, not raised.

Memory is bounded by configuration, not by the volume: the largest
directory's listing, the open upload batches (commitpass.py), the byte
budget, the directories on the walk's path. The escaping-symlink check reads
only the trees that hold links.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path

from syncd.engine.commitpass import UNSTABLE_RETRIES, CommitPass, CommitResult
from syncd.engine.progress import NoProgress, Progress
from syncd.engine.trees import Builder, Built, upload_packs
from syncd.engine.volumes import Head
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, LocalIOError, NotFound, PreconditionFailed, StoreError, VolumeNotFound
from syncd.format.manifest import Changes, Entry, Snapshot, escaping_symlinks
from syncd.limits import in_thread
from syncd.local.index import SyncState
from syncd.local.spool import Spool

__all__ = ["MAX_ATTEMPTS", "UNSTABLE_RETRIES", "CommitResult", "commit", "needs_link_check", "wait_for_lease"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 30
REUSE_PASSES = 3
HEADS = 16               # objects checked at once before HEAD is advanced


async def commit(engine: Engine, volume: str, source: Path, *, message: str = "", create: bool = True,
                 progress: Progress | None = None, changed: Collection[str] | None = None) -> CommitResult:
    """``changed``: if given, the only paths that may differ from the local index (a watcher's
    hint, parents included); only they are looked at instead of walking ``source``."""
    async with engine.index.locked(volume, source):
        try:
            head = await engine.repo.head(volume)
        except VolumeNotFound:
            if not create:
                raise
            head, _ = await engine.repo.create(volume)
        if not await asyncio.to_thread(source.is_dir):
            raise LocalIOError(f"{source} is not a directory")
        state = await engine.index.state(volume, source)
        hint = None if changed is None else frozenset(changed)
        result = CommitResult(volume, head.snapshot, head.seq)
        excluded: set[str] = set()     # keys of reused objects found gone: read their files again
        for _ in range(REUSE_PASSES):
            head = await wait_for_lease(engine, head)
            result.skipped, result.files_read, result.bytes_read = [], 0, 0
            result.uploaded_chunks = result.uploaded_bytes = result.reused_chunks = 0
            spool = await in_thread(Spool, engine.index.dir)
            run: CommitPass | None = None
            try:
                run = CommitPass(engine, volume, source, result, progress or NoProgress(), excluded, spool)
                theirs = await _as_v2(engine, volume, head)
                built = await run.run(theirs, hint)
                missing = await _missing(engine, run.suspects)
                if missing:
                    log.warning("volume %r: %d reused object(s) were pruned meanwhile; uploading their "
                                "chunks again", volume, len(missing))
                    excluded |= missing
                    continue
                try:
                    head, left_out = await _advance(engine, volume, head, theirs, built, run, state, message,
                                                    result)
                except _PruneRan as ran:
                    head = ran.head
                    continue
                if not run.changes and state is not None and head.snapshot != state.snapshot:
                    break   # HEAD moved elsewhere and nothing here changed: the directory still holds
                            # state's snapshot, exactly as the index says (a hydrate then moves only
                            # what moved; claiming HEAD, not exact, made the next hydrate walk it all)
                exact = (state is None or state.exact) and not result.merged and not left_out
                await run.write_index(head.snapshot, head.seq, exact, left_out)
                break
            finally:
                if run is not None:
                    await run.settle()
                await in_thread(spool.close)
        else:
            raise CommitConflict(f"volume {volume!r}: chunks this commit reuses keep disappearing "
                                 "(prunes with a short grace period?); try again")
    await _abort_stale_uploads(engine, volume)
    return result


async def _as_v2(engine: Engine, volume: str, head: Head) -> Snapshot | None:
    """HEAD's snapshot (header only); a format-1 one is first built as trees (uploaded), so our
    changes are always replayed on a tree."""
    if head.snapshot is None:
        return None
    theirs = await engine.repo.header(volume, head.snapshot)
    if theirs.root is not None or not theirs.entries:
        return theirs
    built = await engine.repo.build(volume, None, dict(theirs.entries), {})
    await upload_packs(engine.store, engine.layout, volume, built)
    return replace(theirs, entries={}, root=built.root, stats=built.stats)


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


async def _missing(engine: Engine, keys: Collection[str]) -> set[str]:
    """The keys among ``keys`` (objects reused, not uploaded by this commit) that are gone."""
    limit = asyncio.Semaphore(HEADS)

    async def gone(key: str) -> bool:
        async with limit:
            try:
                await engine.store.head(key)
            except NotFound:
                return True
        return False

    ordered = list(keys)
    flags = await asyncio.gather(*(gone(k) for k in ordered))
    return {k for k, flag in zip(ordered, flags) if flag}


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

    Used by the lazy mount's publish (commit's streaming pass makes the same test per change,
    commitpass.py). A parent whose stats are unknown (a format-1 snapshot) may hold links, so
    replacing a directory there is checked."""
    for path, entry in changes.items():
        before = base.get(path)
        if (entry is not None and entry.kind == "symlink") or (before is not None and before.kind == "symlink"):
            return True
        if theirs is not None and (theirs.stats is None or theirs.stats.links) and (
                (entry is None and before is not None and before.kind == "dir")
                or (entry is not None and before is not None and entry.kind != before.kind)):
            return True
    return False


async def _advance(engine: Engine, volume: str, head: Head, theirs: Snapshot | None, built: Built,
                   run: CommitPass, state: SyncState | None, message: str,
                   result: CommitResult) -> tuple[Head, set[str]]:
    """Publish ``built`` (our changes on ``theirs``) and advance HEAD, replaying the spooled
    changes on whatever HEAD became meanwhile; the paths left out (escaping symlinks)."""
    result.changed = run.changes
    left_out: set[str] = set()
    checked_epoch, built_on = head.epoch, head.snapshot
    for attempt in range(1, MAX_ATTEMPTS + 1):
        result.attempts = attempt
        head = await wait_for_lease(engine, head)
        if head.epoch != checked_epoch:     # a prune ran since we checked what we reuse: again
            if await _missing(engine, run.suspects):
                raise _PruneRan(head)
            checked_epoch = head.epoch
        if head.snapshot != built_on:
            theirs = await _as_v2(engine, volume, head)
            built = await _without(engine, volume, await run.replay(theirs, left_out), left_out)
            built_on = head.snapshot
        if not run.changes and theirs is not None:     # nothing of ours: no merge, HEAD as it is
            result.snapshot, result.seq = head.snapshot, head.seq
            return head, left_out
        result.merged = result.merged or head.snapshot != (state.snapshot if state else None)
        if run.link_check:                  # links that escape only in combination
            links = await engine.repo.trees.symlinks(volume, built.root)
            escaping = [p for p in await in_thread(escaping_symlinks, links) if p not in left_out]
            for path in escaping:
                log.warning("volume %r: leaving out symlink %r: it leads out of the volume", volume, path)
                left_out.add(path)
                result.skipped.append(path)
            if escaping:
                built = await _without(engine, volume, built, escaping)
        if theirs is not None and theirs.root is not None and built.root.id == theirs.root.id:
            result.snapshot, result.seq = head.snapshot, head.seq
            return head, left_out
        result.trees_written, result.tree_bytes = built.trees_written, built.bytes
        try:
            head = await engine.repo.publish_built(head, built, message)
        except PreconditionFailed:
            await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** min(attempt, 6))))
            head = await engine.repo.head(volume)
            continue
        result.snapshot, result.seq = head.snapshot, head.seq
        return head, left_out
    raise CommitConflict(f"volume {volume!r}: the commit point moved {MAX_ATTEMPTS} times while "
                         "we tried to advance it; try again")


async def _without(engine: Engine, volume: str, built: Built, paths: Collection[str]) -> Built:
    """``built`` with ``paths`` deleted (its trees uploaded first: the new build reads them)."""
    if not paths:
        return built
    await upload_packs(engine.store, engine.layout, volume, built)
    builder = Builder(engine.repo.trees, volume, built.root, {})
    await builder.apply(dict.fromkeys(paths))
    out = await builder.finish()
    out.trees_written += built.trees_written
    out.uploaded += built.bytes
    return out
