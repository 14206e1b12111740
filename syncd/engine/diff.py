"""``syncd diff``: what changed between two snapshots of a volume, path by path.

The per-path diff of commit's merge (manifest.diff), reported as added,
removed or modified entries. Snapshots are read through edit.py's access
functions, so a new snapshot format changes nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from syncd.engine.edit import parent_of, tree
from syncd.engine.wiring import Engine
from syncd.format.manifest import Entry, diff


@dataclass
class Difference:
    status: str      # "added", "removed", "modified"
    path: str
    kind: str
    size: int


def difference(a: Mapping[str, Entry], b: Mapping[str, Entry]) -> list[Difference]:
    out = []
    for path, entry in sorted(diff(a, b).items()):
        if entry is None:
            old = a[path]
            out.append(Difference("removed", path, old.kind, old.size))
        else:
            out.append(Difference("added" if path not in a else "modified", path, entry.kind, entry.size))
    return out


async def snapshot_diff(engine: Engine, volume: str, old: str | None = None,
                        new: str | None = None) -> tuple[str | None, str | None, list[Difference]]:
    """What changed from ``old`` to ``new`` (defaults: the latest snapshot and its parent)."""
    b = await tree(engine, volume, new)
    if old is None:
        old = await parent_of(engine, volume, b.snapshot)
    a_entries = (await tree(engine, volume, old)).entries if old else {}
    return old, b.snapshot, difference(a_entries, b.entries)
