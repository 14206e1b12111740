"""The snapshot a batch of edits works on, and the edit operations (engine/edit.py).

A :class:`View` is one snapshot of a volume as a batch's operations see it:
the snapshot's trees, read lazily, with the changes of the earlier operations
laid over them. ``get(path)`` answers from the changes if the path was changed
and otherwise looks it up in the snapshot (``VolumeRepo.lookup``: the trees on
that path, cached by the TreeStore, so a second look at a neighbour is free);
``below(path)`` lists one directory or one subtree the same way. Nothing else
is read, so an operation costs the depth of the paths it names plus the size
of the subtrees it lists -- never the size of the volume.

The changes are kept *explicit*, path by path, so that they mean the same to
every later operation and to ``VolumeRepo.build`` (which replays them with
manifest.apply's rules on the trees): removing a directory, or overwriting one
with a file, also marks every path below it removed; writing a path below a
missing directory (or below a file) first writes that directory. A path whose
entry was looked up is remembered with its snapshot value, so ``net()`` can
drop changes that end where they started (``Entry.same_content``): a batch
that changes nothing yields no changes and makes no snapshot.

Operations are async functions of a view. They are pure in the sense that
matters for retries: run again on a view of a newer snapshot, they compute
their changes afresh from what is there now (``rm -r d`` removes what ``d``
holds in that snapshot), which is how a batch re-applies itself after another
writer moved HEAD.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
from collections.abc import Awaitable, Callable

from syncd.engine.wiring import Engine
from syncd.errors import ConfigError, SnapshotNotFound
from syncd.format.manifest import Changes, Entry

ROOT = Entry("", "dir", 0o755, 0)   # the volume root, which a snapshot does not list


def inside(path: str, root: str) -> bool:
    return not root or path == root or path.startswith(root + "/")


def ancestors(path: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b'] (top first)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


async def subtree(engine: Engine, volume: str, snapshot_id: str, path: str) -> dict[str, Entry]:
    """Every entry strictly below directory ``path`` by full path, reading that subtree's trees only."""
    snap = await engine.repo.header(volume, snapshot_id)
    if snap.root is None:      # format 1: the header holds every entry
        return {p: e for p, e in snap.entries.items() if p != path and inside(p, path)}
    ref = snap.root
    if path:
        item = await engine.repo.trees.lookup(volume, snap.root, path)
        if item is None or item.tree is None:
            return {}
        ref = item.tree
    flat = await engine.repo.trees.flat(volume, ref)     # level by level, coalesced ranged GETs
    if not path:
        return flat
    return {f"{path}/{p}": dataclasses.replace(e, path=f"{path}/{p}") for p, e in flat.items()}


class View:
    """A snapshot (None: an empty volume) with a batch's changes so far laid over it."""

    def __init__(self, engine: Engine, volume: str, snapshot: str | None) -> None:
        self.engine, self.volume, self.snapshot = engine, volume, snapshot
        self.changes: Changes = {}
        self._original: dict[str, Entry | None] = {"": ROOT}

    async def original(self, path: str) -> Entry | None:
        """The snapshot's entry at ``path`` (looked up once)."""
        if path not in self._original:
            self._original[path] = (await self.engine.repo.lookup(self.volume, self.snapshot, path)
                                    if self.snapshot else None)
        return self._original[path]

    async def get(self, path: str) -> Entry | None:
        if path in self.changes:
            return self.changes[path]
        return await self.original(path)

    async def below(self, path: str, recursive: bool = True) -> dict[str, Entry]:
        """What is below directory ``path`` now (one level, or everything if ``recursive``)."""
        now = await self.get(path)
        if now is None or now.kind != "dir":
            return {}
        found: dict[str, Entry] = {}
        was = await self.original(path)
        if self.snapshot is not None and was is not None and was.kind == "dir":
            if recursive:
                listed = await subtree(self.engine, self.volume, self.snapshot, path)
            else:
                entries = await self.engine.repo.list_dir(self.volume, self.snapshot, path) or []
                listed = {e.path: e for e in entries}
            for p, e in listed.items():
                self._original.setdefault(p, e)
                found[p] = e
        start = len(path) + 1 if path else 0
        for p, change in self.changes.items():
            if p != path and inside(p, path) and (recursive or "/" not in p[start:]):
                if change is None:
                    found.pop(p, None)
                else:
                    found[p] = change
        return found

    async def delete(self, path: str) -> None:
        """Remove ``path`` and everything below it ('' empties the volume)."""
        for p in await self.below(path):
            self.changes[p] = None
        if path:
            self.changes[path] = None

    async def set(self, path: str, entry: Entry) -> None:
        """Write ``entry`` at ``path``: parents become directories, a directory it replaces goes."""
        now = await self.get(path)
        if now is not None and now.kind == "dir" and entry.kind != "dir":
            await self.delete(path)
        for parent in ancestors(path):
            above = await self.get(parent)
            if above is None or above.kind != "dir":
                self.changes[parent] = Entry(parent, "dir", 0o755, time.time_ns())
        self.changes[path] = dataclasses.replace(entry, path=path)

    async def net(self) -> Changes:
        """The changes that differ from the snapshot: what ``VolumeRepo.build`` replays."""
        out: Changes = {}
        for path, change in self.changes.items():
            was = await self.original(path)
            if change is None:
                if was is not None:
                    out[path] = None
            elif not change.same_content(was):
                out[path] = change
        return out


# ---------------------------------------------------------------- operations

Op = Callable[[View], Awaitable[None]]


def _missing(path: str) -> SnapshotNotFound:
    return SnapshotNotFound(f"nothing at {path!r}")


def op_write(path: str, entry: Entry) -> Op:
    async def run(view: View) -> None:
        await view.set(path, entry)
    return run


def op_mkdir(path: str) -> Op:
    async def run(view: View) -> None:
        existing = await view.get(path)
        if existing is None or existing.kind != "dir":
            await view.set(path, Entry(path, "dir", 0o755, time.time_ns()))
    return run


def op_remove(path: str, recursive: bool = False, missing_ok: bool = False) -> Op:
    async def run(view: View) -> None:
        existing = await view.get(path)
        if existing is None:
            if missing_ok:
                return
            raise _missing(path)
        if existing.kind == "dir" and not recursive and await view.below(path, recursive=False):
            raise ConfigError(f"{path or '/'!r} is a directory that is not empty (use -r / recursive)")
        await view.delete(path)
    return run


def op_copy(src: str, dst: str, remove_source: bool = False) -> Op:
    """``dst`` becomes what ``src`` is (a file or a whole tree); the chunks are shared."""
    if not dst or inside(dst, src):
        raise ConfigError(f"cannot copy {src or '/'!r} into itself ({dst or '/'!r})")

    async def run(view: View) -> None:
        top = await view.get(src)
        if top is None:
            raise _missing(src)
        items = await view.below(src) if top.kind == "dir" else {}
        if remove_source:
            await view.delete(src)
        await view.delete(dst)
        if src:
            await view.set(dst, top)
        for p in sorted(items):        # parents first; each parent is already in place
            target = posixpath.join(dst, p[len(src):].lstrip("/"))
            view.changes[target] = dataclasses.replace(items[p], path=target)
    return run
