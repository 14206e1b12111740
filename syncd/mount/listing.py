"""What a snapshot holds, asked one directory at a time.

The inode table (tree.py) never walks a snapshot itself: it asks a
``Listing`` for the children of one directory when the kernel first looks
inside it (tree.py loads each directory once, single-flight), and for one
entry by path. A directory's entries come back named by their bare names
(``entry.path`` is the name): on v2 they are the decoded tree's own entries,
shared with the tree cache, not copies made under their full paths (a cold
``find`` makes one object per entry, its inode).

:class:`TreeListing` is the listing a mount uses. On a format-2 snapshot it
asks ``VolumeRepo.list_dir`` for one directory, which reads only the trees on
that directory's path (docs/FORMAT.md); the trees go through the engine's
``TreeStore``, so a tree read once (or found in the disk cache) is not read
again, and listing ``a/b`` after ``a`` costs one tree GET. Mounting a volume
of any size therefore reads the snapshot header and nothing else until the
kernel looks into the root; ``stat`` of one file reads depth + 1 trees, and
``find`` reads each tree once. A format-1 snapshot is one object that comes
with its header, so there the entries are indexed by directory once, in
memory (:class:`SnapshotListing`): ``list_dir`` on v1 scans every entry per
call, which would make listing every directory quadratic.

Listing a directory also starts reading its subdirectories' trees in the
background, in one coalesced read (``TreeStore.get_many``: the trees of one
commit sit side by side in one tree pack), up to ``PREFETCH_BYTES`` of
stored trees per directory. A later listing of one of them waits for that
read instead of issuing its own GET, so ``find`` costs about one GET per
directory that has subdirectories, and ``stat`` of one file still costs one
GET per level (each level's read was already under way). It waits only until
its own tree is decoded (the store decodes a read batch by batch and says
which trees are done), so ``find`` lists the first subdirectories, and the
kernel takes their entries in, while the later ones are still being decoded.
A failed prefetch is only logged: the listing that needs the tree reads it
itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from syncd.engine.volumes import VolumeRepo
from syncd.errors import SyncdError
from syncd.format.manifest import Entry, TreeRef

log = logging.getLogger(__name__)
PREFETCH_BYTES = 4 << 20


class Listing(Protocol):
    async def list_dir(self, path: str) -> list[Entry]:
        """The entries directly inside directory ``path`` ('' is the root), by bare name."""
        ...

    async def lookup(self, path: str) -> Entry | None:
        """The entry at full path ``path`` (under that path)."""
        ...


class SnapshotListing:
    """A v1 snapshot's entries, grouped by directory (by bare name) once."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self.entries = entries
        self._dirs: dict[str, list[Entry]] = {}
        for path in sorted(entries):
            parent, _, name = path.rpartition("/")
            self._dirs.setdefault(parent, []).append(replace(entries[path], path=name))

    async def list_dir(self, path: str) -> list[Entry]:
        return list(self._dirs.get(path, ()))

    async def lookup(self, path: str) -> Entry | None:
        return self.entries.get(path)


class TreeListing:
    """One snapshot of one volume, listed as the kernel asks. Build it with :meth:`open`."""

    def __init__(self, repo: VolumeRepo, volume: str, snapshot_id: str | None,
                 flat: SnapshotListing | None = None, root: TreeRef | None = None) -> None:
        self.repo, self.volume, self.snapshot_id = repo, volume, snapshot_id
        self._flat = flat                   # format 1: the whole snapshot, indexed once
        self._refs: dict[str, TreeRef] = {} if root is None else {"": root}   # dir path -> its tree
        self._reading: dict[str, asyncio.Future[None]] = {}    # tree id -> done once it is decoded
        self._tasks: set[asyncio.Task[None]] = set()               # prefetches under way
        self.dirs_listed = 0                # list_dir calls answered from trees (tests, status)

    @classmethod
    async def open(cls, repo: VolumeRepo, volume: str, snapshot_id: str | None) -> TreeListing:
        """Read the snapshot's header (no tree); a v1 snapshot is indexed here."""
        if snapshot_id is None:
            return cls(repo, volume, None)
        snap = await repo.header(volume, snapshot_id)
        if snap.root is None:
            return cls(repo, volume, snapshot_id, SnapshotListing(snap.entries))
        return cls(repo, volume, snapshot_id, root=snap.root)

    async def list_dir(self, path: str) -> list[Entry]:
        if self._flat is not None:
            return await self._flat.list_dir(path)
        path = path.strip("/")
        ref = self._refs.get(path)
        if ref is None and path and "" in self._refs:   # not seen in a listing: the trees on its path
            item = await self.repo.trees.lookup(self.volume, self._refs[""], path)
            ref = item.tree if item is not None else None
        if ref is None:
            return []
        reading = self._reading.get(ref.id)
        if reading is not None:
            await asyncio.shield(reading)
        items = await self.repo.trees.get(self.volume, ref)
        self.dirs_listed += 1
        self._prefetch(path, [(f"{path}/{i.entry.path}" if path else i.entry.path, i.tree)
                              for i in items if i.tree is not None])
        return [i.entry for i in items]

    def _prefetch(self, path: str, subdirs: list[tuple[str, TreeRef]]) -> None:
        """Start one background read of the subdirectories' trees not in memory yet."""
        wanted: list[TreeRef] = []
        budget = PREFETCH_BYTES
        for sub, ref in subdirs:
            self._refs[sub] = ref
            if budget >= ref.size and ref.id not in self._reading and self.repo.trees.cached(ref.id) is None:
                wanted.append(ref)
                budget -= ref.size
        if not wanted:
            return

        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[None]] = {ref.id: loop.create_future() for ref in wanted}

        def decoded(tree_id: str) -> None:      # this one is in the tree cache: its listing may go on
            future = waiting.pop(tree_id, None)
            if future is not None and not future.done():
                future.set_result(None)
            self._reading.pop(tree_id, None)

        async def read() -> None:
            try:
                await self.repo.trees.get_many(self.volume, wanted, on_tree=decoded)
            except SyncdError as exc:       # the listing that needs one of them reads it again
                log.debug("prefetch of the trees below %r failed: %s", path, exc)
            finally:
                for tree_id in list(waiting):
                    decoded(tree_id)

        self._reading.update(waiting)
        self._tasks.add(task := asyncio.ensure_future(read()))
        task.add_done_callback(self._tasks.discard)

    async def lookup(self, path: str) -> Entry | None:
        if self._flat is not None:
            return await self._flat.lookup(path)
        if self.snapshot_id is None or not path.strip("/"):
            return None
        return await self.repo.lookup(self.volume, self.snapshot_id, path)
