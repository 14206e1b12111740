"""Reading and building v2 trees (format/tree.py) against the store.

Reading. :class:`TreeStore` fetches trees by reference (from its
:class:`TreePool`, the gateways, when there is one, else from the store),
verifies each against its id and keeps decoded trees in a bounded LRU (trees are immutable, so a
cached tree is never stale). Loading a whole snapshot (:meth:`TreeStore.flat`)
goes level by level: the trees one level down are grouped by tree pack, and
references close together in one pack are read with one ranged GET (gaps
under ``COALESCE_GAP`` are read and dropped, a read never exceeds
``MAX_READ``). A first commit writes its trees into one pack, so a cold load
costs about one GET per level; a re-load after a small change finds every
unchanged tree in the cache and reads only the trees on the changed paths.
:meth:`TreeStore.lookup` and :meth:`TreeStore.list_dir` read only the trees on
one path.

Building. :class:`Builder` replays per-path changes (manifest.diff) on the
tree of the snapshot HEAD names (theirs). It loads only the directories on
changed paths; every other subtree keeps its reference, so a one-file commit
in a volume of any size re-encodes and writes depth + 1 trees. The merge rules
are those of ``manifest.apply``: a path only we changed takes ours, a path
both changed takes ours, a file we write replaces their subtree at that
path, a path we write below ``p`` makes ``p`` a directory, and a directory we
deleted that they filled stays with their files. Changes are applied in path
order, so a parent is always reached before its children. At the end the
dirty directories are encoded bottom-up (a parent needs its children's ids)
and their trees appended to one or more tree packs, whose random ids are
chosen before the first byte, so parents can name them. Nothing here is
quadratic: each change walks its own path once, each directory is loaded and
encoded at most once.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from syncd.errors import ManifestError, NotFound
from syncd.format.layout import Layout
from syncd.format.manifest import MAX_ENTRIES, MAX_PATH, Changes, Entry, Stats, TreeRef
from syncd.format.tree import TreeItem, encode_tree, inflate_tree, pack_tree, parse_tree, sort_key, with_path
from syncd.store.base import ObjectStore, put_immutable

if TYPE_CHECKING:
    from syncd.data.cache import ChunkCache

COALESCE_GAP = 1 << 20
MAX_READ = 32 << 20
CACHE_ITEMS = 65_536     # decoded tree items kept in memory (~640 bytes each: ~40 MiB)
PACK_SIZE = 8 << 20
READERS = 8
WALK_BATCH = 256          # trees a streaming walk asks for at once (their GETs coalesce)
DECODE_BATCH = 256 << 10         # stored tree bytes decoded per worker-thread job (then remembered)


class TreePool(Protocol):
    """Where trees come from before the store: the gateway pool (data/gatewaystore.py)."""

    async def fetch_trees(self, volume: str, pack: str, refs: Sequence[TreeRef]) -> dict[str, bytes] | None:
        """Canonical bytes by tree id, each already verified against its id; None: read the store."""
        ...


class TreeStore:
    """Verified, cached reads of one owner's trees; ``reads`` counts tree GETs (tests, metrics).

    Two caches: decoded trees in memory (LRU, ``cache_items`` entries in all),
    and, when given, the worker's chunk cache on disk, which holds a tree's
    canonical bytes under its id (it re-hashes whatever it returns, so a
    tree from disk is as verified as one from the store). The disk cache is
    what lets a new process re-hydrate after a small change reading only the
    trees that changed.
    """

    def __init__(self, store: ObjectStore, layout: Layout, cache_items: int = CACHE_ITEMS,
                 disk: ChunkCache | None = None, pool: TreePool | None = None) -> None:
        self.store, self.layout, self.disk, self.pool = store, layout, disk, pool
        self._cache: OrderedDict[str, list[TreeItem]] = OrderedDict()
        self._cached_items = 0
        self._limit = cache_items
        self.reads = 0

    @property
    def capacity(self) -> int:
        """Decoded tree items the memory cache holds at most."""
        return self._limit

    def remember(self, tree_id: str, items: list[TreeItem]) -> None:
        if tree_id in self._cache:
            self._cache.move_to_end(tree_id)
            return
        self._cache[tree_id] = items
        self._cached_items += len(items) + 1
        while self._cached_items > self._limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_items -= len(old) + 1

    def forget(self) -> None:
        """Drop the decoded trees held in memory (the disk cache stays)."""
        self._cache.clear()
        self._cached_items = 0

    def cached(self, tree_id: str) -> list[TreeItem] | None:
        items = self._cache.get(tree_id)
        if items is not None:
            self._cache.move_to_end(tree_id)
        return items

    async def get(self, volume: str, ref: TreeRef) -> list[TreeItem]:
        return (await self.get_many(volume, [ref]))[ref.id]

    async def get_many(self, volume: str, refs: list[TreeRef],
                       on_tree: Callable[[str], None] | None = None) -> dict[str, list[TreeItem]]:
        """Every tree of ``refs``, from the cache or with coalesced ranged GETs.

        A ranged read is decoded in batches of up to ``DECODE_BATCH`` stored bytes, each
        tree remembered (and ``on_tree(id)`` called) as its batch is done: a mount's
        prefetch of a hundred subdirectories lets ``find`` into the first ones while the
        others are still being decoded (listing.py)."""
        out: dict[str, list[TreeItem]] = {}
        missing: dict[str, TreeRef] = {}
        for ref in refs:
            items = self.cached(ref.id)
            if items is not None:
                out[ref.id] = items
            else:
                missing[ref.id] = ref
        if missing and self.disk is not None:
            found = await self.disk.get_many(list(missing))
            parsed = await asyncio.to_thread(lambda: [(i, parse_tree(d, i)) for i, d in found.items()])
            for tree_id, items in parsed:              # one worker-thread job for all of them
                self.remember(tree_id, items)
                out[tree_id] = items
                del missing[tree_id]
        by_pack: dict[str, dict[str, TreeRef]] = defaultdict(dict)
        for ref in missing.values():
            by_pack[ref.pack][ref.id] = ref
        fetched: dict[str, bytes] = {}
        reads = [run for pack_refs in by_pack.values() for run in _runs(sorted(pack_refs.values(),
                                                                             key=lambda r: r.offset))]
        limit = asyncio.Semaphore(READERS)

        async def read(run: list[TreeRef]) -> None:
            start, end = run[0].offset, max(r.offset + r.size for r in run)
            async with limit:
                pooled = None if self.pool is None else await self.pool.fetch_trees(volume, run[0].pack, run)
            if pooled is not None:  # verified canonical bytes: parse only
                for batch in _batches(run):
                    for ref, items in await asyncio.to_thread(_parse_all, pooled, batch):
                        done(ref, pooled[ref.id], items)
                return
            async with limit:
                key = self.layout.tree_pack(volume, run[0].pack)
                try:
                    blob = await self.store.get(key, start, end)
                except NotFound as exc:
                    raise ManifestError(f"volume {volume!r}: tree pack {key} is missing") from exc
                self.reads += 1
            if len(blob.data) != end - start:
                raise ManifestError(f"volume {volume!r}: tree pack {run[0].pack} is shorter than "
                                    f"its references (bytes {start}..{end})")
            for batch in _batches(run):
                for ref, data, items in await asyncio.to_thread(_decode_run, blob.data, start, batch):
                    done(ref, data, items)

        def done(ref: TreeRef, data: bytes, items: list[TreeItem]) -> None:
            self.remember(ref.id, items)
            out[ref.id] = items
            fetched[ref.id] = data
            if on_tree is not None:
                on_tree(ref.id)

        await asyncio.gather(*(read(run) for run in reads))
        if fetched and self.disk is not None:
            await self.disk.put_many(fetched)
        return out

    async def flat(self, volume: str, root: TreeRef) -> dict[str, Entry]:
        """Every entry below ``root`` by full path, reading level by level.

        Paths are bounded (MAX_PATH) and so is the total (MAX_ENTRIES), so a
        hostile tree that names itself, or one subtree a million times, fails
        instead of expanding without end.
        """
        entries: dict[str, Entry] = {}
        level: list[tuple[str, TreeRef]] = [("", root)]
        while level:
            trees = await self.get_many(volume, [ref for _, ref in level])
            nxt: list[tuple[str, TreeRef]] = []
            for prefix, ref in level:
                for item in trees[ref.id]:
                    entry = with_path(item, prefix)
                    entries[entry.path] = entry
                    if item.tree is not None:
                        nxt.append((entry.path, item.tree))
                if len(entries) > MAX_ENTRIES or (nxt and len(nxt[-1][0]) > MAX_PATH):
                    raise ManifestError(f"volume {volume!r}: the tree is too large or too deep")
            level = nxt
        return entries

    async def symlinks(self, volume: str, root: TreeRef) -> dict[str, Entry]:
        """Every symlink below ``root`` by full path, entering only subtrees whose stats count
        links (or have none): what ``manifest.escaping_symlinks`` needs to judge a tree, read
        at the cost of the links, not of the tree. The stats are the writer's claims; a
        reader that must not trust them (hydrate) checks each tree's own count as it reads."""
        links: dict[str, Entry] = {}
        todo: list[tuple[str, TreeRef]] = [("", root)]
        seen = 0
        while todo:
            level, todo = todo[-WALK_BATCH:], todo[:-WALK_BATCH]     # a bounded number of trees at once
            trees = await self.get_many(volume, [ref for _, ref in level])
            for prefix, ref in level:
                seen += len(trees[ref.id])
                for item in trees[ref.id]:
                    if item.entry.kind == "symlink":
                        entry = with_path(item, prefix)
                        links[entry.path] = entry
                    elif item.tree is not None and (item.stats is None or item.stats.links):
                        todo.append((f"{prefix}/{item.name}" if prefix else item.name, item.tree))
                if seen > MAX_ENTRIES or (todo and len(todo[-1][0]) > MAX_PATH):
                    raise ManifestError(f"volume {volume!r}: the tree is too large or too deep")
        return links

    async def lookup(self, volume: str, root: TreeRef, path: str) -> TreeItem | None:
        """The item at ``path`` (full path; '' is not an item), reading only the trees on its path."""
        parts = [p for p in path.split("/") if p]
        ref: TreeRef | None = root
        item: TreeItem | None = None
        for part in parts:
            if ref is None:
                return None
            item = next((i for i in await self.get(volume, ref) if i.name == part), None)
            if item is None:
                return None
            ref = item.tree
        return item

    async def list_dir(self, volume: str, root: TreeRef, path: str) -> list[Entry] | None:
        """The entries of directory ``path`` ('' = the root) with full paths; None if it is not a dir."""
        path = path.strip("/")
        if path:
            item = await self.lookup(volume, root, path)
            if item is None or item.tree is None:
                return None
            ref = item.tree
        else:
            ref = root
        return [with_path(i, path) for i in await self.get(volume, ref)]


async def diff_trees(trees: TreeStore, volume: str, old: TreeRef | None, new: TreeRef | None) -> Changes:
    """Per-path changes from tree ``old`` to tree ``new`` (None = empty), like ``manifest.diff``.

    Descends only into subtrees whose ids differ, so comparing two snapshots
    one file apart reads the trees on that file's path and nothing else. A
    directory whose metadata did not change but whose contents did is not
    itself a change (as in manifest.diff); everything below a removed
    directory is listed as removed, everything below an added one as added.
    """
    out: Changes = {}
    level: list[tuple[str, TreeRef | None, TreeRef | None]] = [("", old, new)]
    while level:
        trees_read = await trees.get_many(volume, [r for _, a, b in level for r in (a, b) if r is not None])
        nxt: list[tuple[str, TreeRef | None, TreeRef | None]] = []
        for prefix, a, b in level:
            before = {i.name: i for i in trees_read[a.id]} if a is not None else {}
            after = {i.name: i for i in trees_read[b.id]} if b is not None else {}
            for name in before.keys() | after.keys():
                x, y = before.get(name), after.get(name)
                path = f"{prefix}/{name}" if prefix else name
                if y is None:
                    out[path] = None
                elif x is None or not y.entry.same_content(x.entry):
                    out[path] = with_path(y, prefix)
                xt, yt = x.tree if x else None, y.tree if y else None
                if (xt is not None or yt is not None) and (xt is None or yt is None or xt.id != yt.id):
                    nxt.append((path, xt, yt))
        level = nxt
    return out


def _runs(refs: list[TreeRef]) -> list[list[TreeRef]]:
    """``refs`` (sorted by offset) grouped into ranged reads: small gaps read over, at most MAX_READ each."""
    runs: list[list[TreeRef]] = []
    start = end = 0
    for ref in refs:
        if runs and ref.offset - end <= COALESCE_GAP and ref.offset + ref.size - start <= MAX_READ:
            runs[-1].append(ref)
            end = max(end, ref.offset + ref.size)
            continue
        runs.append([ref])
        start, end = ref.offset, ref.offset + ref.size
    return runs


def _batches(run: list[TreeRef]) -> list[list[TreeRef]]:
    """``run`` cut into consecutive batches of at most DECODE_BATCH stored bytes (one tree at least)."""
    out: list[list[TreeRef]] = []
    size = DECODE_BATCH
    for ref in run:
        if size + ref.size > DECODE_BATCH:
            out.append([])
            size = 0
        out[-1].append(ref)
        size += ref.size
    return out


def _parse_all(canonical: dict[str, bytes], refs: list[TreeRef]) -> list[tuple[TreeRef, list[TreeItem]]]:
    return [(r, parse_tree(canonical[r.id], r.id)) for r in refs]


def _decode_run(data: bytes, start: int, run: list[TreeRef]) -> list[tuple[TreeRef, bytes, list[TreeItem]]]:
    """Inflate, verify and parse every tree of one ranged read (one worker-thread job)."""
    out = []
    for ref in run:
        canonical = inflate_tree(data[ref.offset - start:ref.offset - start + ref.size], ref.id)
        out.append((ref, canonical, parse_tree(canonical, ref.id)))
    return out


# ---------------------------------------------------------------- building


class _Dir:
    """A directory being rebuilt: its items by name; a loaded subdirectory is itself a _Dir."""

    __slots__ = ("dirty", "drop_if_empty", "items", "meta", "original")

    def __init__(self, meta: Entry | None, items: dict[str, TreeItem | _Dir], original: TreeItem | None) -> None:
        self.meta, self.items, self.original = meta, items, original
        self.dirty = original is None
        self.drop_if_empty = False


@dataclass
class Built:
    """The result of a build: the new root, what it holds, and the tree packs still to upload
    (``uploaded``: bytes of the packs a streaming build uploaded as they filled)."""

    root: TreeRef
    stats: Stats
    packs: dict[str, bytearray] = field(default_factory=dict)
    trees_written: int = 0
    uploaded: int = 0

    @property
    def bytes(self) -> int:
        return self.uploaded + sum(len(p) for p in self.packs.values())


MetaLookup = Callable[[str], Awaitable[Entry | None]]
UPLOADS = 2              # full tree packs a streaming build uploads at once
DISK_BATCH = 512         # new trees handed to the disk cache at once


class Builder:
    """Replays changes on a tree; see the module docstring.

    Changes may be given all at once (:meth:`apply`) or one by one (:meth:`feed`) in any
    order in which every directory's subtree is contiguous (sorted paths, or a walk that
    finishes a directory before its next sibling): a directory is encoded as soon as a
    change leaves it, and a full tree pack is uploaded at once, so a streaming build holds
    the directories on one path and one pack, whatever the number of changes."""

    def __init__(self, trees: TreeStore, volume: str, root: TreeRef | None, base: Mapping[str, Entry],
                 pack_size: int = PACK_SIZE, lookup: MetaLookup | None = None, remember: bool = True) -> None:
        self.trees, self.volume, self.base, self.pack_size = trees, volume, base, pack_size
        self.lookup, self.remember = lookup, remember
        self.root_ref = root
        self.root = _Dir(None, {}, None)
        self._loaded_root = root is None
        self._open: list[tuple[str, _Dir]] = [("", self.root)]   # the directories on the last change's path
        self._packs: dict[str, bytearray] = {}
        self._current: str | None = None
        self._written = 0
        self._new: dict[str, bytes] = {}
        self._full: list[str] = []                      # packs complete and not uploaded yet
        self._fetched: dict[str, list[TreeItem]] = {}   # trees fetched for the change being retried
        self._metas: dict[str, Entry | None] = {}       # directories' rows, likewise
        self._uploads: list[asyncio.Task[bool]] = []
        self._uploaded = 0

    def _load(self, ref: TreeRef, original: TreeItem | None) -> _Dir:
        items = self._fetched.pop(ref.id, None)
        if items is None:
            raise _Need(ref)               # the driver fetches it (TreeStore.get: its cache first) and retries
        node = _Dir(original.entry if original else None, {i.name: i for i in items}, original)
        node.dirty = False
        return node

    def _meta(self, where: str) -> Entry | None:
        if where in self.base:
            return self.base[where]
        if self.lookup is None:
            return None
        if where not in self._metas:
            raise _Need(where)
        return self._metas.pop(where)

    async def _fetch(self, need: _Need) -> None:
        if isinstance(need.what, TreeRef):
            self._fetched[need.what.id] = await self.trees.get(self.volume, need.what)
        else:
            assert self.lookup is not None
            self._metas[need.what] = await self.lookup(need.what)

    async def apply(self, changes: Changes) -> None:
        for path in sorted(changes):
            await self.feed(path, changes[path])

    async def feed(self, path: str, entry: Entry | None) -> None:
        """Apply one change (see the class docstring for the order changes must come in)."""
        while True:
            try:
                self._feed(path, entry)
                break
            except _Need as need:
                await self._fetch(need)
        if self._full or len(self._new) >= DISK_BATCH:
            await self._ship()

    def feed_from_thread(self, changes: Iterable[tuple[str, Entry | None]], loop: asyncio.AbstractEventLoop) -> None:
        """``feed`` for a worker thread, so encoding trees does not hold up the event loop: what
        must be fetched (a tree of theirs, a directory's row) is fetched through ``loop``. The
        builder must not be used from the loop meanwhile."""
        for path, entry in changes:
            while True:
                try:
                    self._feed(path, entry)
                    break
                except _Need as need:
                    asyncio.run_coroutine_threadsafe(self._fetch(need), loop).result()
            if self._full or len(self._new) >= DISK_BATCH:
                asyncio.run_coroutine_threadsafe(self._ship(), loop).result()

    def _feed(self, path: str, entry: Entry | None) -> None:
        if not self._loaded_root and self.root_ref is not None:
            self.root = self._load(self.root_ref, None)
            self._open = [("", self.root)]
            self._loaded_root = True
        while len(self._open) > 1 and not path.startswith(self._open[-1][0] + "/"):
            self._close()
        self._change(path, entry)

    def _close(self) -> None:
        """Encode the deepest open directory into its parent (the walk has left it)."""
        path, node = self._open.pop()
        parent, name = self._open[-1][1], path.rpartition("/")[2]
        if parent.items.get(name) is not node:
            return                         # replaced by a later change at the parent's level
        if not node.dirty and node.original is not None:
            parent.items[name] = node.original
            return
        done = self._encode(node, path)
        if done is None:
            del parent.items[name]
        else:
            assert node.meta is not None
            parent.items[name] = TreeItem(node.meta, done[0], done[1])

    def _change(self, path: str, entry: Entry | None) -> None:
        """Apply one change; raises _Need (having changed nothing it cannot redo) when a tree or a
        directory's row must be fetched first."""
        parts = path.split("/")
        node = self._open[-1][1]
        for depth in range(len(self._open) - 1, len(parts) - 1):
            part = parts[depth]
            slot = node.items.get(part)
            if isinstance(slot, _Dir):
                node = slot
            elif slot is not None and slot.tree is not None:
                node.items[part] = node = self._load(slot.tree, slot)
            elif entry is None:
                return                     # deleting below something that is not a directory here
            else:                          # a path we write below `part` makes it a directory
                where = "/".join(parts[:depth + 1])
                known = self._meta(where)
                meta = known if known is not None and known.kind == "dir" else Entry(where, "dir", 0o755, 0)
                node.items[part] = node = _Dir(_named(meta, part), {}, None)
            self._open.append(("/".join(parts[:depth + 1]), node))
        name = parts[-1]
        existing = node.items.get(name)
        if entry is None:
            if existing is None:
                return
            if isinstance(existing, _Dir):
                sub: _Dir | None = existing
            elif existing.tree is not None:
                sub = self._load(existing.tree, existing)
            else:
                sub = None
            if sub is None:
                del node.items[name]
            else:                          # theirs may have filled it: it stays if anything is left
                sub.drop_if_empty = sub.dirty = True
                node.items[name] = sub
        elif entry.kind == "dir":
            if isinstance(existing, _Dir):
                existing.meta, existing.drop_if_empty, existing.dirty = _named(entry, name), False, True
            elif existing is not None and existing.tree is not None:
                node.items[name] = TreeItem(_named(entry, name), existing.tree, existing.stats)
            else:
                node.items[name] = _Dir(_named(entry, name), {}, None)
        else:
            node.items[name] = TreeItem(_named(entry, name))
        for _, n in self._open:
            n.dirty = True

    async def finish(self) -> Built:
        if not self._loaded_root and self.root_ref is not None:   # nothing applied
            stats = _stats(await self.trees.get(self.volume, self.root_ref))
            return Built(self.root_ref, stats)
        while len(self._open) > 1:
            self._close()
        if not self.root.dirty and self.root_ref is not None:
            await self._ship(final=True)
            return Built(self.root_ref, _stats(await self.trees.get(self.volume, self.root_ref)),
                         self._packs, self._written, self._uploaded)
        done = self._encode(self.root, "")
        assert done is not None
        ref, stats = done
        await self._ship(final=True)
        return Built(ref, stats, self._packs, self._written, self._uploaded)

    def discard(self) -> None:
        """Stop the uploads still running (an abandoned build: its packs are garbage anyway)."""
        for task in self._uploads:
            task.cancel()
        self._uploads = []

    async def _ship(self, final: bool = False) -> None:
        """Upload the full packs (at most UPLOADS at once) and hand new trees to the disk cache."""
        if self._new and self.trees.disk is not None and (final or len(self._new) >= DISK_BATCH):
            new, self._new = self._new, {}
            await self.trees.disk.put_many(new)
        elif final or len(self._new) >= DISK_BATCH:
            self._new = {}
        for pid in self._full:
            data = self._packs.pop(pid)
            self._uploaded += len(data)
            key = self.trees.layout.tree_pack(self.volume, pid)
            self._uploads.append(asyncio.ensure_future(put_immutable(self.trees.store, key, bytes(data))))
        self._full = []
        while self._uploads and (final or len(self._uploads) > UPLOADS):
            task = self._uploads.pop(0)
            try:
                await task
            except BaseException:
                self.discard()
                raise

    def _encode(self, node: _Dir, path: str) -> tuple[TreeRef, Stats] | None:
        items: list[TreeItem] = []
        for name, slot in node.items.items():
            if not isinstance(slot, _Dir):
                items.append(slot)
            elif not slot.dirty and slot.original is not None:
                items.append(slot.original)
            else:
                done = self._encode(slot, f"{path}/{name}" if path else name)
                if done is not None:
                    assert slot.meta is not None
                    items.append(TreeItem(slot.meta, done[0], done[1]))
        if node.drop_if_empty and not items:
            return None
        tree_id, data = encode_tree(items)
        stats = _stats(items)
        if node.original is not None and node.original.tree is not None and node.original.tree.id == tree_id:
            return node.original.tree, stats
        if path == "" and self.root_ref is not None and self.root_ref.id == tree_id:
            return self.root_ref, stats
        if self.remember:
            self.trees.remember(tree_id, sorted(items, key=sort_key))
        self._new[tree_id] = data
        return self._append(tree_id, pack_tree(data)), stats

    def _append(self, tree_id: str, stored: bytes) -> TreeRef:
        if self._current is None or len(self._packs[self._current]) + len(stored) > self.pack_size:
            if self._current is not None:
                self._full.append(self._current)
            self._current = os.urandom(16).hex()
            self._packs[self._current] = bytearray()
        pack = self._packs[self._current]
        ref = TreeRef(tree_id, self._current, len(pack), len(stored))
        pack += stored
        self._written += 1
        return ref


class _Need(Exception):
    """The builder needs a tree (TreeRef) or a directory's row (its path) it does not hold."""

    def __init__(self, what: TreeRef | str) -> None:
        super().__init__(what)
        self.what = what


def _stats(items: list[TreeItem]) -> Stats:
    """What ``items`` hold, as ``sum(own_stats)`` would say, without a Stats object per item."""
    files = dirs = size = links = 0
    for item in items:
        e = item.entry
        if e.kind == "file":
            files += 1
            size += e.size
        elif e.kind == "symlink":
            links += 1
        else:
            dirs += 1
            if item.stats is not None:
                files, dirs = files + item.stats.files, dirs + item.stats.dirs
                size, links = size + item.stats.bytes, links + item.stats.links
    return Stats(files, dirs, size, links)


def _named(entry: Entry, name: str) -> Entry:
    """``entry`` under its bare name, as a tree holds it (dataclasses.replace, several times faster)."""
    if entry.path == name:
        return entry
    return Entry(name, entry.kind, entry.mode, entry.mtime_ns, entry.size, entry.chunks, entry.target)


async def upload_packs(store: ObjectStore, layout: Layout, volume: str, built: Built) -> None:
    await asyncio.gather(*(put_immutable(store, layout.tree_pack(volume, pid), bytes(data))
                           for pid, data in built.packs.items()))
