"""Writing a volume's chunk index from what its snapshots reference (prune, upgrade).

Writers append to the chunk index as they upload (data/chunkindex.py); this
rewrites it whole from the chunk references of the snapshots given, so that
entries for objects prune deleted go, and a volume written before format 3
(whose chunks no writer recorded) gets an index. One object per shard (more
if a shard exceeds ``chunkindex.MAX_ENTRIES``), written with the usual
conditional PUT: an unchanged shard is the same object, already there. Then
the index objects listed before, not rewritten and older than ``cutoff`` (the
prune grace period: a younger one may describe a commit in flight), are
deleted; a writer that listed one of them only loses a hint.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from syncd.engine.wiring import Engine
from syncd.format.chunkindex import encode_index
from syncd.format.layout import shard_of
from syncd.format.manifest import ChunkRef
from syncd.maint.reachability import is_tree_pack, references
from syncd.store.base import ObjectInfo, put_immutable


async def rebuild_index(engine: Engine, volume: str, refs: Iterable[ChunkRef],
                        old: dict[str, ObjectInfo], cutoff: float | None) -> tuple[int, int]:
    """Index ``refs`` (chunk references, any order); delete ``old`` index objects older than
    ``cutoff`` (None: delete nothing). Returns (objects written, objects deleted)."""
    shards: dict[str, dict[str, ChunkRef]] = defaultdict(dict)
    for ref in refs:
        shards[shard_of(ref.id)].setdefault(ref.id, ref)
    written: set[str] = set()
    for shard, found in sorted(shards.items()):
        for object_id, data, _ in encode_index(found.values()):
            key = engine.layout.index_object(volume, shard, object_id)
            await put_immutable(engine.store, key, data)
            written.add(key)
    doomed = [k for k, info in old.items() if k not in written and cutoff is not None
              and info.last_modified <= cutoff]
    if doomed:
        await engine.store.delete(doomed)
    return len(written), len(doomed)


async def index_snapshot(engine: Engine, volume: str, snapshot_id: str) -> int:
    """Record every chunk ``snapshot_id`` references in the chunk index (``syncd volume upgrade``:
    a volume written before format 3 has none). Returns the index objects written."""
    snap = await engine.repo.header(volume, snapshot_id)
    found = await references(engine.repo, volume, snap)
    refs = [r for key, rs in found.items() if not is_tree_pack(engine.layout, volume, key) for r in rs]
    written, _ = await rebuild_index(engine, volume, refs, {}, None)
    return written
