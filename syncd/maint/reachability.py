"""What a volume stores and what its snapshots reference: the two sides of prune and check.

A volume's objects (layout.py) are HEAD, PRUNED, ``snapshots/<id>``,
``chunks/<xx>/<id>``, ``packs/<id>``, (format 2) ``trees/<id>`` and (format 3)
the chunk index ``index/<xx>/<id>``, which is not data: prune rewrites it
(maint/reindex.py) instead of collecting it.
:func:`list_volume` sorts one listing of the volume's prefix into those kinds,
with each object's size and age. :func:`references` turns a snapshot into the
object keys it needs, with the references that point into each (a pack is
needed whole if any of its chunks is referenced: packs are never cut). For a
v2 snapshot it walks the trees level by level and skips every tree already in
``seen``: consecutive snapshots share all but a few trees, so walking a whole
history reads each distinct tree once, not once per snapshot.

History is the chain of parent links from HEAD. Pruning deletes the oldest
part of that chain, so a walk may meet a missing parent. ``PRUNED`` records
prune's horizon: the lowest sequence number prune kept. A missing parent below
the horizon is the end of the retained history; a missing parent at or above
it is damage, which :func:`walk_history` reports instead of hiding.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from syncd.engine.volumes import VolumeRepo
from syncd.errors import ManifestError, NotFound, PreconditionFailed, SnapshotNotFound
from syncd.format.layout import Layout, object_key
from syncd.format.manifest import ChunkRef, Entry, Snapshot, TreeRef
from syncd.store.base import ObjectInfo, ObjectStore

PRUNED_FORMAT = 1
HORIZON_ATTEMPTS = 10


@dataclass
class Listing:
    snapshots: dict[str, ObjectInfo] = field(default_factory=dict)   # snapshot id -> object
    data: dict[str, ObjectInfo] = field(default_factory=dict)        # chunk or pack key -> object
    index: dict[str, ObjectInfo] = field(default_factory=dict)       # chunk index objects (format 3)
    other: list[ObjectInfo] = field(default_factory=list)            # anything unexpected


async def list_volume(store: ObjectStore, layout: Layout, volume: str) -> Listing:
    prefix = layout.volume_prefix(volume)
    out = Listing()
    async for info in store.list_objects(prefix):
        rest = info.key[len(prefix):]
        if rest.startswith("snapshots/"):
            out.snapshots[rest[len("snapshots/"):]] = info
        elif rest.startswith(("chunks/", "packs/", "trees/")):
            out.data[info.key] = info
        elif rest.startswith("index/"):
            out.index[info.key] = info
        elif rest not in ("HEAD", "PRUNED"):
            out.other.append(info)
    return out



def is_tree_pack(layout: Layout, volume: str, key: str) -> bool:
    return key.startswith(layout.volume_prefix(volume) + "trees/")


async def references(repo: VolumeRepo, volume: str, snap: Snapshot,
                     seen: set[str] | None = None) -> dict[str, list[ChunkRef]]:
    """Object key -> the references of ``snap`` that read from it.

    A tree's place in its tree pack is given as a ChunkRef (id = tree id,
    pack = tree pack id), so range checks treat it like a packed chunk; its
    bytes hash to its id only after inflating (tree.decode_tree verifies
    that while the walk reads it). Trees in ``seen`` are skipped, and every
    tree walked is added to it.
    """
    layout = repo.layout
    seen = set() if seen is None else seen
    out: dict[str, list[ChunkRef]] = defaultdict(list)

    def add_entries(entries: Iterable[Entry]) -> None:
        for entry in entries:
            for ref in entry.chunks:
                out[object_key(layout, volume, ref)].append(ref)

    if snap.root is None:
        add_entries(snap.entries.values())
        return dict(out)
    level = [snap.root] if snap.root.id not in seen else []
    seen.update(r.id for r in level)
    while level:
        trees = await repo.trees.get_many(volume, level)
        nxt: list[TreeRef] = []
        for ref in level:
            out[layout.tree_pack(volume, ref.pack)].append(ChunkRef(ref.id, ref.size, ref.pack, ref.offset))
            items = trees[ref.id]
            add_entries(i.entry for i in items)
            for item in items:
                if item.tree is not None and item.tree.id not in seen:
                    seen.add(item.tree.id)
                    nxt.append(item.tree)
        level = nxt
    return dict(out)


async def read_horizon(store: ObjectStore, layout: Layout, volume: str) -> int:
    """Prune's horizon: snapshots with a lower seq may have been deleted (0: none were)."""
    return (await _horizon(store, layout, volume))[0]


async def _horizon(store: ObjectStore, layout: Layout, volume: str) -> tuple[int, str | None]:
    try:
        blob = await store.get(layout.pruned(volume))
    except NotFound:
        return 0, None
    try:
        doc = json.loads(blob.data)
        seq = doc["horizon"] if doc.get("format") == PRUNED_FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"PRUNED of {volume!r} is not valid JSON") from exc
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ManifestError(f"PRUNED of {volume!r} has an invalid horizon")
    return seq, blob.etag


async def raise_horizon(store: ObjectStore, layout: Layout, volume: str, seq: int) -> int:
    """Record that snapshots below ``seq`` may go; the horizon never moves back.

    Written conditionally (like HEAD), so two prunes at once cannot lower it.
    """
    for _ in range(HORIZON_ATTEMPTS):
        current, etag = await _horizon(store, layout, volume)
        if current >= seq:
            return current
        doc = json.dumps({"format": PRUNED_FORMAT, "horizon": seq, "updated": time.time()}).encode()
        try:
            await store.put(layout.pruned(volume), doc, if_none_match=etag is None, if_match=etag)
            return seq
        except PreconditionFailed:
            continue
    raise PreconditionFailed(f"PRUNED of {volume!r} keeps changing; is another prune running?")


@dataclass
class History:
    snapshots: list[tuple[str, Snapshot]]    # newest first
    missing: str | None = None               # a parent that should exist and does not


async def walk_history(repo: VolumeRepo, volume: str, head_snapshot: str | None, horizon: int) -> History:
    """Follow parent links from HEAD to the start of history or the pruned horizon.

    Decoding errors (a corrupt or hostile snapshot) propagate as ManifestError.
    """
    out = History([])
    current = head_snapshot
    while current is not None:
        try:
            snap = await repo.header(volume, current)
        except SnapshotNotFound:
            below_horizon = bool(out.snapshots) and out.snapshots[-1][1].seq - 1 < horizon
            if not below_horizon:
                out.missing = current
            return out
        out.snapshots.append((current, snap))
        current = snap.parent
    return out
