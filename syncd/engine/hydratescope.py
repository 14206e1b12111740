"""What a hydrate must look at: the subtrees that moved remotely or locally, and whether links must be judged.

When the index says the directory held exactly the tree of snapshot ``old``
after its last commit or hydrate (``SyncState.exact``), hydrating to ``new``
can only do something in a subtree whose tree id differs between ``old`` and
``new``, or below which something changed locally since (the walk of
delta.py, or the agent's watcher, which needs no walk). Every other subtree
would be planned as "tracked, unchanged, same content: keep", so the walk of
hydratewalk.py does not enter it: a re-hydrate after a 1-file commit elsewhere
reads the trees and rows on that file's path and nothing else. Without an
exact state (a first hydrate; one after a merge, a failure or a format-1
snapshot) ``old`` is None and everything is entered.

Symlinks. A snapshot must not be hydrated if one of its links leads out of
the volume, alone or through others; only the whole set of links can say
(manifest.escaping_symlinks), and reading it costs the trees that hold links.
So it is read when the snapshot holds links and the change could move one: in
the exact case only if the diff from ``old`` adds, changes or removes a link,
or removes or replaces a directory (``links_may_move``, which stops at the
first such change and holds a bounded part of the diff at a time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from syncd.engine.trees import WALK_BATCH, TreeStore
from syncd.engine.wiring import Engine
from syncd.errors import ManifestError, NotFound
from syncd.format.manifest import Snapshot, TreeRef, escaping_symlinks
from syncd.local.delta import walk_changes
from syncd.local.dirdigest import parent_of
from syncd.local.index import SyncState


@dataclass
class Scope:
    new: Snapshot                        # a v2 snapshot (root set)
    old: TreeRef | None                  # the tree the index is exactly at (None: enter everything)
    state: SyncState | None
    changed: set[str] = field(default_factory=set)   # local changes and every ancestor of one

    def changed_below(self, path: str) -> bool:
        """Did something change locally at or below ``path``?"""
        return path in self.changed


async def scope_of(engine: Engine, volume: str, target: Path, new: Snapshot, changed: Collection[str] | None,
                   leftovers: list[str]) -> Scope:
    """The scope of a hydrate of ``target`` to ``new``; refuses (ManifestError) a snapshot whose
    links could lead out of the volume."""
    assert new.root is not None
    state = await engine.index.state(volume, target)
    old = await _exact_root(engine, volume, state)
    scope = Scope(new, old, state)
    if old is not None:
        local = changed if changed is not None else await walk_changes(engine.index, volume, target, leftovers)
        for path in local:
            while path not in scope.changed:
                scope.changed.add(path)
                if not path:
                    break
                path = parent_of(path)
    has_links = new.stats is None or new.stats.links > 0
    if has_links and (old is None or await links_may_move(engine.repo.trees, volume, old, new.root)):
        links = await engine.repo.trees.symlinks(volume, new.root)
        escaping = await asyncio.to_thread(escaping_symlinks, links)     # CPU: off the event loop
        if escaping:
            raise ManifestError(f"volume {volume!r}: snapshot {new.seq}: {escaping[0]!r}: symlink leads out "
                                "of the volume (alone or through other symlinks)")
    return scope


async def _exact_root(engine: Engine, volume: str, state: SyncState | None) -> TreeRef | None:
    if state is None or not state.exact or state.snapshot is None:
        return None
    try:
        old = await engine.repo.header(volume, state.snapshot)
    except (NotFound, ManifestError):
        return None      # the old snapshot is gone (pruned): enter everything
    return old.root


async def links_may_move(trees: TreeStore, volume: str, old: TreeRef, new: TreeRef) -> bool:
    """Does the diff from ``old`` to ``new`` add or change a symlink, or remove or replace a
    directory (which may change where other links lead)? Enters only subtrees whose ids differ."""
    todo: list[tuple[TreeRef, TreeRef]] = [(old, new)] if old.id != new.id else []
    while todo:
        level, todo = todo[-WALK_BATCH:], todo[:-WALK_BATCH]
        found = await trees.get_many(volume, [r for pair in level for r in pair])
        for a, b in level:
            before = {i.name: i for i in found[a.id]}
            for item in found[b.id]:
                was = before.pop(item.name, None)
                if item.entry.kind == "symlink" and (was is None or not item.entry.same_content(was.entry)):
                    return True
                if was is not None and was.entry.kind in ("dir", "symlink") and item.entry.kind != was.entry.kind:
                    return True
                if was is not None and was.tree is not None and item.tree is not None and was.tree.id != item.tree.id:
                    todo.append((was.tree, item.tree))
            if any(i.entry.kind in ("dir", "symlink") for i in before.values()):
                return True          # a directory or a link removed (a link through it may now leave)
    return False
