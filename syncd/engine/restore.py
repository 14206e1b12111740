"""Restore: a new snapshot whose content at a path (or everywhere) equals an old snapshot's.

History is never rewritten: restoring makes one more snapshot on top of the
latest, so the restore itself can be undone the same way. Only the manifest
changes -- every chunk an old snapshot names is still in the volume, so no
file data moves. The new tree is the latest one with the subtree at ``path``
replaced by the old snapshot's subtree (paths the old snapshot lacks are
deleted), computed on an edit View (editview.py) so parent directories stay
valid; only the old snapshot's trees at and above ``path`` and the latest
one's on the changed paths are read. It is published as an edit (edit.py: the same conditional HEAD advance as a
commit): if another writer moves HEAD meanwhile, the replacement is re-applied
on the new latest.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.engine.edit import Batch
from syncd.engine.edit import normalize_path as normalize_path  # transfer.py imports it from here
from syncd.engine.editview import ROOT, Op, View, ancestors, inside, subtree
from syncd.engine.wiring import Engine
from syncd.errors import SnapshotNotFound
from syncd.format.manifest import Entry


@dataclass
class RestoreResult:
    volume: str
    restored_from: str
    path: str
    snapshot: str | None
    seq: int
    changed: int


async def _old_state(engine: Engine, volume: str, snapshot_id: str, root: str) -> dict[str, Entry]:
    """The old snapshot at and below ``root`` (its subtree's trees only), and the dirs above it."""
    top = await engine.repo.lookup(volume, snapshot_id, root) if root else ROOT
    if top is None:
        raise SnapshotNotFound(f"snapshot {snapshot_id} of {volume!r} has nothing at {root!r}")
    wanted = {root: top} if root else {}
    for parent in ancestors(root):
        above = await engine.repo.lookup(volume, snapshot_id, parent)
        if above is not None:
            wanted[parent] = above
    if top.kind == "dir":
        wanted.update(await subtree(engine, volume, snapshot_id, root))
    return wanted


def restore_op(old: dict[str, Entry], root: str) -> Op:
    """Make the view equal ``old`` at and under ``root`` (paths ``old`` lacks there are removed)."""
    async def run(view: View) -> None:
        for parent in ancestors(root):     # a missing parent comes back with its old metadata
            now = await view.get(parent)
            if now is None or now.kind != "dir":
                await view.set(parent, old.get(parent) or Entry(parent, "dir", 0o755, 0))
        now = await view.get(root)
        if now is not None and (root == "" or now.kind == "dir"):
            for path in await view.below(root):
                if path not in old:
                    view.changes[path] = None
        for path in sorted(old):
            if path and inside(path, root) and not old[path].same_content(await view.get(path)):
                await view.set(path, old[path])
    return run


async def restore(engine: Engine, volume: str, snapshot_id: str, path: str | None = None,
                  message: str = "") -> RestoreResult:
    root = normalize_path(path)
    old = await _old_state(engine, volume, snapshot_id, root)
    message = message or f"restore {root or '/'} from {snapshot_id}"
    batch = Batch(engine, volume)      # run again on the latest if HEAD moves (edit.py)
    batch.add(restore_op(old, root), message)
    done = await batch.publish(message)
    return RestoreResult(volume, snapshot_id, root or "/", done.snapshot, done.seq, done.changed)
