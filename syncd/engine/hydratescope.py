"""Which paths a hydrate must plan: the tree diff plus the local changes, nothing else.

When the index says the directory held exactly the tree of snapshot ``old``
after its last commit or hydrate (``SyncState.exact``), the only paths where
hydrating to ``new`` can do anything are those where ``old`` and ``new``
differ (``diff_trees``: it reads only the trees on changed paths, every
subtree whose id did not move is skipped whole) and those that changed
locally since (the walk of delta.py, or the agent's watcher). For every
other path the full plan (hydrateplan.py) would find "tracked, unchanged,
same content": keep. So the plan runs over that scope only:

* the index rows and local entries of the scope (``known_state``);
* the desired entries: ``new``'s side of the diff, and for every other path
  of the scope its entry in ``new``, read by listing each parent once.

Anything that makes the shortcut unsafe (no exact state, a v1 snapshot, the
old snapshot gone) returns None, and the caller plans over everything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

from syncd.engine.trees import diff_trees
from syncd.engine.wiring import Engine
from syncd.errors import ManifestError, NotFound
from syncd.format.manifest import Changes, Entry, Snapshot, TreeRef, check_path
from syncd.local.delta import known_state, walk_changes
from syncd.local.dirdigest import name_of, parent_of
from syncd.local.index import LocalIndex
from syncd.local.scan import LocalFile

Scope = tuple[dict[str, Entry], LocalIndex, dict[str, LocalFile]]


async def scoped(engine: Engine, volume: str, target: Path, new: Snapshot | None,
                 changed: Collection[str] | None, leftovers: list[str]) -> Scope | None:
    """(desired, index rows, local entries) of the paths the hydrate may touch; None: plan all."""
    state = await engine.index.state(volume, target)
    if state is None or not state.exact or state.snapshot is None or new is None or new.root is None:
        return None
    try:
        old = await engine.repo.header(volume, state.snapshot)
        if old.root is None:
            return None
        remote = await diff_trees(engine.repo.trees, volume, old.root, new.root)
    except (NotFound, ManifestError):
        return None      # the old snapshot or one of its trees is gone (pruned): plan everything
    if _links_may_move(new, remote):
        return None
    for path, entry in remote.items():     # what validate_entries checks of one entry alone
        if entry is not None:
            check_path(path)
            if entry.kind == "file" and sum(c.size for c in entry.chunks) != entry.size:
                raise ManifestError(f"{path!r}: chunks add up to {sum(c.size for c in entry.chunks)}, "
                                    f"not {entry.size}")
    if changed is None:
        changed = await walk_changes(engine.index, volume, target, leftovers)
    index, local = await known_state(engine.index, volume, target, set(remote) | set(changed))
    desired = {p: e for p, e in remote.items() if e is not None}
    rest = [p for p in index.files.keys() | local.keys() if p not in remote]
    desired.update(await _entries_at(engine, volume, new.root, rest))
    return desired, index, local


def _links_may_move(new: Snapshot, remote: Changes) -> bool:
    """Could this diff make a symlink lead out of the volume? Only the whole tree can say
    (escaping_symlinks), so then the full plan runs, which validates it."""
    if any(e is not None and e.kind == "symlink" for e in remote.values()):
        return True
    links = new.stats is None or new.stats.links > 0
    return links and any(e is None or e.kind == "dir" for e in remote.values())


async def _entries_at(engine: Engine, volume: str, root: TreeRef, paths: list[str]) -> dict[str, Entry]:
    """The entries of ``new`` at ``paths`` (absent ones left out), one listing per parent."""
    by_parent: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        by_parent[parent_of(path)].add(name_of(path))
    out: dict[str, Entry] = {}
    for parent in sorted(by_parent, key=len):
        listing = await engine.repo.trees.list_dir(volume, root, parent)
        if listing is None:
            continue
        names = by_parent[parent]
        out.update({e.path: e for e in listing if name_of(e.path) in names})
    return out
