"""Check: verify a volume end to end, like ``restic check``.

1. HEAD decodes and names a snapshot (or none, for an empty volume).
2. Every snapshot of the history decodes and validates (its id is re-hashed,
   its entries pass the hostile-input checks of manifest.decode), back to the
   start of history or to prune's horizon; a parent missing above the horizon
   is a problem.
   For v2 snapshots every tree is read and verified, each distinct tree
   once however many snapshots share it.
3. Every chunk, pack and tree pack those snapshots reference exists, a chunk object has
   exactly the referenced size and every range into a pack lies inside it.
4. With ``read_data`` every referenced byte is downloaded and re-hashed
   against its chunk id (one GET per object; a pack is read once for all its
   chunks).
5. Every chunk index object (format 3) decodes and validates; its entries
   that name an object no longer there are counted (``index_stale``), not
   problems: the index is a hint, and prune rewrites it.
6. Objects nothing in the history references (old snapshots, orphans of
   interrupted commits, chunks waiting for prune) are reported, not counted
   as problems: a concurrent commit may be about to reference them.

Reads go to the store directly, never through the chunk cache: the point is
to check what the bucket holds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from syncd.engine.volumes import VolumeRepo
from syncd.engine.wiring import Engine
from syncd.errors import IntegrityError, InvalidName, ManifestError, StoreError, SyncdError
from syncd.format.chunkindex import decode_index
from syncd.format.chunking import verify
from syncd.format.compress import decompress
from syncd.format.layout import object_key
from syncd.format.manifest import ChunkRef
from syncd.maint.reachability import Listing, is_tree_pack, list_volume, read_horizon, references, walk_history

READERS = 8


@dataclass
class CheckResult:
    volume: str
    head: str | None = None
    seq: int = 0
    snapshots: int = 0
    objects: int = 0
    bytes_verified: int = 0
    unreferenced: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    index_objects: int = 0          # chunk index objects read and validated
    index_stale: int = 0            # their entries naming an object that is gone (prune rewrites them)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"volume {self.volume!r}: HEAD {self.head} (seq {self.seq}), {self.snapshots} snapshot(s), "
                 f"{self.objects} object(s) referenced, {self.bytes_verified} byte(s) verified, "
                 f"{len(self.unreferenced)} unreferenced object(s), {self.index_objects} chunk index "
                 f"object(s) ({self.index_stale} stale entries)"]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


async def check(engine: Engine, volume: str, *, read_data: bool = False) -> CheckResult:
    result = CheckResult(volume)
    listing = await list_volume(engine.store, engine.layout, volume)
    repo = VolumeRepo(engine.store, engine.layout)       # no cached snapshots: read the bucket
    try:
        head = await repo.head(volume)
        horizon = await read_horizon(engine.store, engine.layout, volume)
        history = await walk_history(repo, volume, head.snapshot, horizon)
    except ManifestError as exc:
        result.problems.append(f"volume {volume!r}: {exc}")
        return result
    result.head, result.seq, result.snapshots = head.snapshot, head.seq, len(history.snapshots)
    if history.missing is not None:
        result.problems.append(f"volume {volume!r}: snapshot {history.missing} is missing "
                               f"(referenced as a parent, above the pruned horizon {horizon})")
    needed: dict[str, dict[str, ChunkRef]] = {}
    seen: set[str] = set()
    try:
        for _, snap in history.snapshots:
            for key, refs in (await references(repo, volume, snap, seen)).items():
                needed.setdefault(key, {}).update((r.id, r) for r in refs)
    except ManifestError as exc:      # a tree missing, damaged or hostile
        result.problems.append(f"volume {volume!r}: {exc}")
    result.objects = len(needed)
    _check_presence(result, listing, needed)
    if read_data:
        await _read_data(engine, result, listing, needed)
    await _check_index(engine, result, listing)
    in_history = {sid for sid, _ in history.snapshots}
    result.unreferenced = sorted([engine.layout.snapshot(volume, s) for s in listing.snapshots
                                  if s not in in_history]
                                 + [k for k in listing.data if k not in needed]
                                 + [o.key for o in listing.other])
    return result


async def _check_index(engine: Engine, result: CheckResult, listing: Listing) -> None:
    """Every chunk index object decodes and validates; entries naming missing objects are counted."""
    for key in sorted(listing.index):
        shard, object_id = key.split("/")[-2:]
        try:
            refs = decode_index((await engine.store.get(key)).data, object_id, shard)
        except (ManifestError, StoreError, InvalidName) as exc:
            result.problems.append(f"volume {result.volume!r}: chunk index object {key}: {exc}")
            continue
        result.index_objects += 1
        for ref in refs:
            info = listing.data.get(object_key(engine.layout, result.volume, ref))
            if info is None or ref.end > info.size:
                result.index_stale += 1


def _check_presence(result: CheckResult, listing: Listing, needed: dict[str, dict[str, ChunkRef]]) -> None:
    for key, refs in sorted(needed.items()):
        info = listing.data.get(key)
        if info is None:
            result.problems.append(f"volume {result.volume!r}: {key} is missing "
                                   f"({len(refs)} chunk(s) reference it)")
            continue
        for ref in refs.values():
            end = ref.end
            if (ref.pack is None and info.size != ref.size) or end > info.size:
                result.problems.append(f"volume {result.volume!r}: {key} holds {info.size} bytes, "
                                       f"but chunk {ref.id} needs bytes {ref.offset}..{end}")


def _verified(ref: ChunkRef, stored: memoryview) -> bool:
    """Do a chunk's stored bytes (inflated, if compressed) hash to its id?"""
    if not ref.stored:
        return verify(ref.id, stored)
    try:
        return verify(ref.id, decompress(stored, ref.size, f"chunk {ref.id}"))
    except IntegrityError:
        return False


async def _read_data(engine: Engine, result: CheckResult, listing: Listing,
                     needed: dict[str, dict[str, ChunkRef]]) -> None:
    limit = asyncio.Semaphore(READERS)

    async def one(key: str, refs: dict[str, ChunkRef]) -> None:
        async with limit:
            try:
                data = (await engine.store.get(key)).data
            except (StoreError, SyncdError) as exc:
                result.problems.append(f"volume {result.volume!r}: cannot read {key}: {exc}")
                return
        trees = is_tree_pack(engine.layout, result.volume, key)
        for ref in refs.values():
            piece = memoryview(data)[ref.offset:ref.end]
            if len(piece) == ref.stored_size and (trees or _verified(ref, piece)):   # trees: verified by the walk
                result.bytes_verified += ref.size
            else:
                result.problems.append(f"volume {result.volume!r}: chunk {ref.id} in {key} is corrupt "
                                       "(its bytes do not hash to its id)")

    await asyncio.gather(*(one(k, r) for k, r in needed.items() if k in listing.data))
