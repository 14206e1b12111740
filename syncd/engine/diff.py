"""``syncd diff``: what changed between two snapshots of a volume, path by path.

``VolumeRepo.diff`` compares the two snapshots' trees and descends only where
tree ids differ, so two snapshots one file apart cost the trees on that
file's path, whatever the volume's size. Each change is then reported as
added, removed or modified; the old side of a change is looked up in the old
snapshot, whose trees on that path the diff has just read (they come from the
TreeStore's cache).
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.engine.edit import parent_of, tree
from syncd.engine.wiring import Engine


@dataclass
class Difference:
    status: str      # "added", "removed", "modified"
    path: str
    kind: str
    size: int


async def snapshot_diff(engine: Engine, volume: str, old: str | None = None,
                        new: str | None = None) -> tuple[str | None, str | None, list[Difference]]:
    """What changed from ``old`` to ``new`` (defaults: the latest snapshot and its parent)."""
    b = await tree(engine, volume, new)
    if old is None:
        old = await parent_of(engine, volume, b.snapshot)
    elif old:
        await tree(engine, volume, old)           # SnapshotNotFound for an unknown id
    changes = await engine.repo.diff(volume, old, b.snapshot)
    out = []
    for path, entry in sorted(changes.items()):
        before = await engine.repo.lookup(volume, old, path) if old else None
        if entry is None:
            if before is not None:
                out.append(Difference("removed", path, before.kind, before.size))
        else:
            out.append(Difference("added" if before is None else "modified", path, entry.kind, entry.size))
    return old, b.snapshot, out
