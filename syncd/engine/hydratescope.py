"""What a hydrate must look at: the subtrees that moved remotely or locally, and whether links must be judged.

When the index says the directory held exactly the tree of snapshot ``old``
after its last commit or hydrate (``SyncState.exact``), hydrating to ``new``
has something to write only in a subtree whose tree id differs between
``old`` and ``new``: every other subtree is what it should be, as far as the
snapshot is concerned, so the walk of hydratewalk.py does not enter it, and a
re-hydrate after a 1-file commit elsewhere reads the trees, rows and
directories on that file's path and nothing else. Local changes in a subtree
the snapshot did not change are left as they are: they are the next commit's
to find (hydrate never overwrote a local edit of a path the snapshot did not
change; now it also does not look). The agent, whose watcher knows the
changed paths for free, enters their directories too (``changed``), so a
locally deleted tracked file there comes back as before. Without an exact
state (a first hydrate; one after a merge, a failure or a format-1 snapshot)
``old`` is None and everything is entered.

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
from syncd.local.dirwalk import hint_tree
from syncd.local.index import SyncState


@dataclass
class Scope:
    new: Snapshot                        # a v2 snapshot (root set)
    old: TreeRef | None                  # the tree the index is exactly at (None: enter everything)
    state: SyncState | None
    changed: dict[str, set[str]] = field(default_factory=dict)   # the watcher's paths: dir -> names

    def hinted(self, path: str) -> set[str]:
        """The names in directory ``path`` the watcher saw change (with every ancestor of one)."""
        return self.changed.get(path, _NONE)


_NONE: set[str] = set()


async def scope_of(engine: Engine, volume: str, target: Path, new: Snapshot,
                   changed: Collection[str] | None) -> Scope:
    """The scope of a hydrate of ``target`` to ``new``; refuses (ManifestError) a snapshot whose
    links could lead out of the volume."""
    assert new.root is not None
    state = await engine.index.state(volume, target)
    old = await _exact_root(engine, volume, state)
    scope = Scope(new, old, state)
    if old is not None and changed is not None:
        scope.changed = hint_tree(changed)
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
