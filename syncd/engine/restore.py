"""Restore: a new snapshot whose content at a path (or everywhere) equals an old snapshot's.

History is never rewritten: restoring makes one more snapshot on top of the
latest, so the restore itself can be undone the same way. Only the manifest
changes -- every chunk an old snapshot names is still in the volume, so no
file data moves. The new tree is the latest one with the subtree at ``path``
replaced by the old snapshot's subtree (paths the old snapshot lacks are
deleted), computed with ``manifest.apply`` so parent directories stay valid,
and published as an edit (edit.py: the same conditional HEAD advance as a
commit): if another writer moves HEAD meanwhile, the replacement is re-applied
on the new latest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from syncd.engine.edit import Batch
from syncd.engine.edit import inside as _inside
from syncd.engine.edit import normalize_path as normalize_path  # transfer.py imports it from here
from syncd.engine.wiring import Engine
from syncd.errors import SnapshotNotFound
from syncd.format.manifest import Changes, Entry


@dataclass
class RestoreResult:
    volume: str
    restored_from: str
    path: str
    snapshot: str | None
    seq: int
    changed: int


def restore_changes(latest: Mapping[str, Entry], old: Mapping[str, Entry], path: str) -> Changes:
    """The per-path changes that make ``latest`` equal ``old`` at and under ``path``."""
    wanted = {p: e for p, e in old.items() if _inside(p, path)}
    changes: Changes = {p: e for p, e in wanted.items() if not e.same_content(latest.get(p))}
    changes.update({p: None for p in latest if _inside(p, path) and p not in wanted})
    return changes


async def restore(engine: Engine, volume: str, snapshot_id: str, path: str | None = None,
                  message: str = "") -> RestoreResult:
    root = normalize_path(path)
    old = await engine.repo.snapshot(volume, snapshot_id)
    if root and not any(_inside(p, root) for p in old.entries):
        raise SnapshotNotFound(f"snapshot {snapshot_id} of {volume!r} has nothing at {root!r}")
    message = message or f"restore {root or '/'} from {snapshot_id}"
    batch = Batch(engine, volume)      # replayed on the latest if HEAD moves (edit.py)
    batch.add(lambda current: restore_changes(current, old.entries, root), message, base=old.entries)
    done = await batch.publish(message)
    return RestoreResult(volume, snapshot_id, root or "/", done.snapshot, done.seq, done.changed)
