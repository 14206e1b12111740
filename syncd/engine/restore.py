"""Restore: a new snapshot whose content at a path (or everywhere) equals an old snapshot's.

History is never rewritten: restoring makes one more snapshot on top of the
latest, so the restore itself can be undone the same way. Only the manifest
changes -- every chunk an old snapshot names is still in the volume, so no
file data moves. The new tree is the latest one with the subtree at ``path``
replaced by the old snapshot's subtree (paths the old snapshot lacks are
deleted), replayed on the latest trees by ``VolumeRepo.build`` with
``manifest.apply``'s rules so parent directories stay valid and untouched
subtrees are shared, and published with the same conditional HEAD advance as a commit: if another
writer moves HEAD meanwhile, the replacement is re-applied on the new latest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from syncd.engine.commit import MAX_ATTEMPTS
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, PreconditionFailed, SnapshotNotFound
from syncd.format.manifest import Changes, Entry, check_path


@dataclass
class RestoreResult:
    volume: str
    restored_from: str
    path: str
    snapshot: str | None
    seq: int
    changed: int


def normalize_path(path: str | None) -> str:
    """'' for the whole volume, else a checked relative path ('/a/b/' -> 'a/b')."""
    text = (path or "").strip("/")
    return "" if text in ("", ".") else check_path(text)


def _inside(path: str, root: str) -> bool:
    return not root or path == root or path.startswith(root + "/")


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
    for _ in range(MAX_ATTEMPTS):
        head, latest = await engine.repo.latest(volume)
        current = dict(latest.entries) if latest else {}
        changes = restore_changes(current, old.entries, root)
        theirs = await engine.repo.header(volume, head.snapshot) if head.snapshot else None
        built = await engine.repo.build(volume, theirs, changes, old.entries)
        try:
            head = await engine.repo.publish_built(head, built, message)
        except PreconditionFailed:
            continue
        return RestoreResult(volume, snapshot_id, root or "/", head.snapshot, head.seq, len(changes))
    raise CommitConflict(f"volume {volume!r}: the commit point kept moving during the restore; try again")
