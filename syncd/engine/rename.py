"""Renaming a volume: its latest content moves to a new name, then the old one is deleted.

Every object of a volume lives under ``<owner>/<name>/`` and every snapshot
records its volume's name (VolumeRepo refuses a snapshot filed under another
volume), and snapshots are named by the hash of their bytes. A rename in place
is therefore impossible, and carrying the history over would mean rewriting
every snapshot under a new id. So a rename is defined as:

1. create ``new`` (``If-None-Match``: fails if that name is taken, and two
   renames to one name cannot both win);
2. copy each object the old volume's latest snapshot references -- chunks and
   whole packs, re-hashed against their ids on the way -- to ``new``'s prefix;
3. publish one snapshot on ``new`` with the same entries (the same chunk
   locations are valid, since the objects were copied whole), message
   ``rename from <old> (seq N, snapshot X)``;
4. take the lease in the old HEAD (prune's, volumes.py) with ``If-Match`` on
   the HEAD that was copied; if that fails, a writer committed meanwhile:
   repeat 2-3 for the newer snapshot. Once the lease is held, every writer
   waits for it (commit.wait_for_lease), so no commit can land between the
   copy and the delete and be lost with the old volume; then delete the old
   volume, and the waiting writers find it gone (VolumeNotFound: the agent
   sets their local writes aside, agent/orphans.py). With ``keep_old`` (a copy
   of the volume) there is no lease: the copy holds the state as of the last
   round, and the old volume keeps what came after.

The history stays with the old volume until it is deleted; ``syncd volume log
new`` starts at the rename.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from syncd.engine.volumes import Head
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, ConfigError, IntegrityError, PreconditionFailed
from syncd.format.chunking import content_id
from syncd.format.layout import validate_name
from syncd.format.manifest import Entry
from syncd.store.base import put_immutable

COPIERS = 8
RENAME_LEASE = 300.0   # seconds writers of the old volume wait for the delete (if the rename dies)
MAX_ROUNDS = 5


@dataclass
class RenameResult:
    volume: str
    renamed_to: str
    snapshot: str | None
    seq: int
    objects_copied: int
    old_deleted: bool


async def _copy_object(engine: Engine, old_key: str, new_key: str, object_id: str, gate: asyncio.Semaphore) -> None:
    async with gate:
        blob = await engine.store.get(old_key)
        if await asyncio.to_thread(content_id, blob.data) != object_id:
            raise IntegrityError(f"{old_key} does not match its content id; not copied")
        await put_immutable(engine.store, new_key, blob.data)


@dataclass(frozen=True)
class _Latest:
    head: Head
    snapshot: str | None
    entries: dict[str, Entry]


async def _latest(engine: Engine, volume: str) -> _Latest:
    """Every entry of the latest snapshot: a rename copies the whole volume, so it reads all of it."""
    head, snap = await engine.repo.latest(volume)
    return _Latest(head, head.snapshot, dict(snap.entries) if snap else {})


async def rename(engine: Engine, old: str, new: str, keep_old: bool = False) -> RenameResult:
    validate_name(new)
    if new == old:
        raise ConfigError(f"volume {old!r} already has that name")
    layout = engine.layout
    t = await _latest(engine, old)
    try:
        head, _ = await engine.repo.create(new, exist_ok=False)
    except PreconditionFailed as exc:
        raise ConfigError(f"cannot rename {old!r} to {new!r}: a volume {new!r} already exists") from exc
    copied: set[str] = set()
    gate = asyncio.Semaphore(COPIERS)
    for _ in range(MAX_ROUNDS):
        jobs = []
        for entry in t.entries.values():
            for ref in entry.chunks:
                object_id = ref.pack or ref.id
                if object_id in copied:
                    continue
                copied.add(object_id)
                keys = ((layout.pack(old, object_id), layout.pack(new, object_id)) if ref.pack
                        else (layout.chunk(old, object_id), layout.chunk(new, object_id)))
                jobs.append(_copy_object(engine, *keys, object_id, gate))
        await asyncio.gather(*jobs)
        if t.snapshot is not None:
            head = await engine.repo.publish(head, t.entries, f"rename from {old} (seq {t.head.seq}, "
                                                              f"snapshot {t.snapshot})")
        if not keep_old:
            try:   # writers wait while the lease is held, so none can land before the delete
                await engine.repo.take_lease(t.head, f"rename to {new}", RENAME_LEASE)
                break
            except PreconditionFailed:
                pass
        latest = await _latest(engine, old)
        if latest.head.etag == t.head.etag:
            break
        t = latest
    else:
        raise CommitConflict(f"volume {old!r} kept changing during the rename; stop its writers and try again "
                             f"({new!r} holds the state as of seq {t.head.seq})")
    if not keep_old:
        await engine.repo.delete(old)
    return RenameResult(old, new, head.snapshot, head.seq, len(copied), not keep_old)
