"""Prune: forget old snapshots, then delete the chunks and packs nothing needs any more.

Without pruning a long-lived volume grows without bound: every commit adds
chunks and a snapshot, and nothing is ever removed. ``prune`` applies a
retention policy (keep the newest N snapshots and/or those younger than D
days) to the history chain, then deletes every chunk and pack that no kept
snapshot references. It runs while other workers commit and hydrate, without
a lock, so it follows one rule (docs/MAINTENANCE.md explains it in full):

    Nothing is deleted that is younger than the grace period
    (SYNCD_PRUNE_GRACE, one hour by default), and nothing that a snapshot
    younger than the grace period, or one superseded less than the grace
    period ago, references.

Why that is enough:

* A commit uploads its new chunks and packs *before* it writes its snapshot
  and advances HEAD. Until then they are unreferenced; the grace period keeps
  them (a commit must finish within the grace period).
* A commit's snapshot object exists before HEAD points to it; a young
  snapshot object keeps everything it references.
* A commit reuses chunks of the HEAD snapshot it read, and a hydrate reads
  the snapshot HEAD named when it started. Both may still be using a
  snapshot that was HEAD moments ago, so a snapshot superseded less than the
  grace period ago is kept whatever the retention says.
* A commit may also reuse chunks that only its local index (an old snapshot)
  or an "already exists" answer from the store vouch for. Those are the one
  case the age rules cannot cover (the chunk is old and unreferenced), so
  commit checks that such objects still exist just before it advances HEAD
  and uploads them again if prune took them (commit.py, ``_missing_reused``).

Order of work: list the volume's objects first (anything uploaded after the
listing is never a candidate), then read HEAD and walk the history, then
record the new horizon in PRUNED, delete dropped and orphaned snapshots, and
only then chunks, packs and tree packs -- so a crash part-way leaves only
garbage for the next prune, never a snapshot whose data is gone. Before
chunks and packs go, prune takes the lease in HEAD (a conditional write that
also bumps HEAD's epoch): writers wait while it holds, and a writer whose
reuse check predates it checks again. Whatever the snapshots committed up to
the lease reference is spared. Deleting stops a margin before the lease
expires; the rest waits for the next prune.

Packs that are still partly referenced are kept whole; repacking would
rewrite bytes that live snapshots point into, for little gain with packs of
a few MiB.

Last, the chunk index (format 3) is rewritten from the chunk references of
the kept snapshots (maint/reindex.py): entries for what was deleted go, and
index objects older than the grace period that were not rewritten are
deleted. The index is only a hint to writers, so this needs no lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from syncd.config import Config
from syncd.engine.volumes import Head, writer_id
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, IntegrityError, PreconditionFailed, SnapshotNotFound
from syncd.format.manifest import ChunkRef, Snapshot
from syncd.maint.reachability import (
    History,
    Listing,
    is_tree_pack,
    list_volume,
    raise_horizon,
    read_horizon,
    references,
    walk_history,
)
from syncd.maint.reindex import rebuild_index

DAY = 86400.0
LEASE_SECONDS = 300.0      # writers wait at most this long for a prune
LEASE_MARGIN = 60.0        # stop deleting this long before the lease expires (clock skew, a slow request)
LEASE_ATTEMPTS = 100
DELETE_BATCH = 1000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    """Keep the newest ``keep_snapshots`` and those created within ``keep_days``; None = no limit."""

    keep_snapshots: int | None = None
    keep_days: float | None = None
    grace: float = 3600.0

    @classmethod
    def from_config(cls, config: Config) -> Retention:
        return cls(config.keep_snapshots, config.keep_days, config.prune_grace)


@dataclass
class PruneResult:
    volume: str
    dry_run: bool
    kept_snapshots: int = 0
    deleted_snapshots: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0            # unreferenced but younger than the grace period
    horizon: int = 0
    aborted_uploads: int = 0       # multipart uploads a killed writer left behind
    index_written: int = 0         # chunk index objects written (the index rebuilt from the kept snapshots)
    index_deleted: int = 0


def retained(history: list[tuple[str, Snapshot]], policy: Retention, now: float) -> int:
    """How many of ``history`` (newest first) to keep. Always at least HEAD's snapshot.

    A snapshot is kept if the count or the age rule keeps it, or if it was
    superseded (its child created) less than ``policy.grace`` ago. Everything
    newer than a kept snapshot is kept too, so the history stays one chain.
    """
    if policy.keep_snapshots is None and policy.keep_days is None:
        return len(history)
    keep = min(1, len(history))
    for i, (_, snap) in enumerate(history):
        by_count = policy.keep_snapshots is not None and i < policy.keep_snapshots
        by_age = policy.keep_days is not None and snap.created >= now - policy.keep_days * DAY
        superseded = history[i - 1][1].created if i else now
        if by_count or by_age or superseded > now - policy.grace:
            keep = i + 1
    return keep


async def prune(engine: Engine, volume: str, policy: Retention, *, dry_run: bool = False,
                now: float | None = None) -> PruneResult:
    now = time.time() if now is None else now
    store, layout, repo = engine.store, engine.layout, engine.repo
    listing = await list_volume(store, layout, volume)
    head = await repo.head(volume)
    horizon = await read_horizon(store, layout, volume)
    history = await walk_history(repo, volume, head.snapshot, horizon)
    if history.missing is not None:
        raise IntegrityError(f"volume {volume!r}: snapshot {history.missing} of the history is missing; "
                             "prune deletes nothing until `syncd volume check` passes")
    keep = retained(history.snapshots, policy, now)
    kept = dict(history.snapshots[:keep])
    cutoff = now - policy.grace
    for sid, info in listing.snapshots.items():      # maybe a commit about to advance HEAD
        if sid not in kept and info.last_modified > cutoff:
            kept[sid] = await repo.header(volume, sid)
    result = PruneResult(volume, dry_run, kept_snapshots=len(kept), horizon=horizon)
    result.deleted_snapshots = sorted(s for s in listing.snapshots if s not in kept)
    live_refs: dict[str, ChunkRef] = {}
    dead = await _dead_objects(engine, volume, listing, kept, cutoff, result, live_refs)
    if dry_run:
        return result
    await _collect(engine, volume, policy, listing, history, keep, head, kept, dead, result)
    # the chunk index, rewritten from what the kept snapshots reference (maint/reindex.py)
    result.index_written, result.index_deleted = await rebuild_index(
        engine, volume, live_refs.values(), listing.index, cutoff)
    return result


async def _collect(engine: Engine, volume: str, policy: Retention, listing: Listing, history: History, keep: int,
                   head: Head, kept: dict[str, Snapshot], dead: list[str], result: PruneResult) -> None:
    store, layout, repo = engine.store, engine.layout, engine.repo
    if keep < len(history.snapshots):
        result.horizon = await raise_horizon(store, layout, volume, history.snapshots[keep - 1][1].seq)
    await store.delete([layout.snapshot(volume, s) for s in result.deleted_snapshots])
    repo.forget(result.deleted_snapshots)
    if not dead:                                     # nothing a writer could be reusing goes: no lease
        result.aborted_uploads = await repo.abort_stale_uploads(
            volume, max(policy.grace, engine.config.stale_upload_age))
        return
    leased = await _take_lease(engine, volume)
    try:
        late = await _referenced_since(engine, volume, leased.snapshot, head.snapshot, kept)
        doomed = [k for k in dead if k not in late]
        for start in range(0, len(doomed), DELETE_BATCH):
            if time.time() > leased.lease_expires - LEASE_MARGIN:   # past it, writers no longer wait
                log.warning("volume %r: prune lease nearly expired; %d object(s) left for the next prune",
                            volume, len(doomed) - start)
                break
            await store.delete(doomed[start:start + DELETE_BATCH])
    finally:
        await repo.release_lease(leased)
    result.aborted_uploads = await repo.abort_stale_uploads(volume, max(policy.grace, engine.config.stale_upload_age))


async def _take_lease(engine: Engine, volume: str) -> Head:
    """Write the lease into HEAD (If-Match); wait out another prune's unexpired lease."""
    holder = f"prune {writer_id()}"
    for _ in range(LEASE_ATTEMPTS):
        head = await engine.repo.head(volume)
        if head.leased():
            await asyncio.sleep(min(5.0, max(0.05, head.lease_expires - time.time())))
            continue
        try:
            return await engine.repo.take_lease(head, holder, LEASE_SECONDS)
        except PreconditionFailed:
            continue
    raise CommitConflict(f"volume {volume!r}: HEAD kept moving; prune could not take its lease")


async def _dead_objects(engine: Engine, volume: str, listing: Listing, kept: dict[str, Snapshot], cutoff: float,
                        result: PruneResult, live_refs: dict[str, ChunkRef]) -> list[str]:
    """Chunks, packs and tree packs no kept snapshot references, older than the cutoff;
    ``live_refs`` receives every chunk reference of the kept snapshots (for the chunk index)."""
    live: set[str] = set()
    seen: set[str] = set()
    for snap in kept.values():
        found = await references(engine.repo, volume, snap, seen)
        live.update(found)
        for key, refs in found.items():
            if not is_tree_pack(engine.layout, volume, key):
                for ref in refs:
                    live_refs.setdefault(ref.id, ref)
    dead = []
    for key, info in listing.data.items():
        if key in live:
            continue
        if info.last_modified > cutoff:
            result.kept_young += 1
            continue
        dead.append(key)
        result.deleted_bytes += info.size
    result.deleted_objects = len(dead)
    return dead


async def _referenced_since(engine: Engine, volume: str, current: str | None, old_head: str | None,
                            kept: dict[str, Snapshot]) -> set[str]:
    """Objects referenced by snapshots that became HEAD while prune was deciding.

    ``current`` is the snapshot HEAD named when prune took its lease. No
    writer advances HEAD while the lease holds, and one whose HEAD read is
    older than the lease re-checks what it reuses (commit.py), so these
    objects plus the kept ones are everything a live snapshot can need:
    docs/FORMAT.md, section 9.
    """
    out: set[str] = set()
    seen: set[str] = set()
    while current is not None and current != old_head and current not in kept:
        try:
            snap = await engine.repo.header(volume, current)
        except SnapshotNotFound:
            break
        out.update(await references(engine.repo, volume, snap, seen))
        current = snap.parent
    return out
