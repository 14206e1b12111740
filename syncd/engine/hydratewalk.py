"""Hydrate as a walk of the snapshot's trees, one directory at a time.

A hydrate of a million files cannot hold a million entries, rows and local
files at once. So it walks the snapshot's trees depth first and plans each
directory on its own: the directory's entries in the snapshot (one tree), its
children's index rows (one range read) and what is there now (one listing,
lstat through the directory's descriptor), planned by the same rules as ever
(hydrateplan.py), executed, recorded. Memory holds the directories on the
walk's path, one directory's plan, the window of small files being written
(``WINDOW_FILES``, ``WINDOW_BYTES``) and the index rows not yet written
(``ROW_BATCH``): bounded by configuration, never by the volume. Which
subtrees are entered at all is hydratescope.py's question.

Two passes. Conflicts (local files that differ and would be overwritten) must
stop a hydrate before any byte is written. So a first pass plans without
doing, entering only directories that exist locally (one that does not exist
holds no conflict), hashing same-size files it must verify, and raises
LocalConflict listing every conflict; the second pass plans again and does.
Into an empty directory the first pass lists the root only.

Links. hydratescope.py judged the snapshot's links as a whole, trusting the
writer's count of links per subtree to find them; here each visited tree's own
count is checked against what its parent claimed, so a tree that hid a link
fails before that link is made.

Order in a directory: in one worker-thread call, what is in the way goes
(with --overwrite), subdirectories are made, file metadata adopted, links made
and files the snapshot dropped deleted; then files are written (small ones
wait in the window, grouped by pack: one ranged GET and one thread call per
pack, each call opening its directories once); a directory the snapshot
dropped goes after its contents, and once every write into them is done,
directories' mtimes are set, deepest first. Index rows are written every ``ROW_BATCH`` rows, claiming the old
snapshot and no exactness until the last write.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd.engine.hydrateplan import Plan, plan_hydrate
from syncd.engine.hydratescope import Scope
from syncd.engine.trees import WALK_BATCH
from syncd.engine.wiring import Engine
from syncd.errors import LocalConflict, LocalIOError, ManifestError, NotFound
from syncd.format.manifest import MAX_PATH, RESERVED_PREFIX, Entry, TreeRef
from syncd.format.tree import TreeItem, with_path
from syncd.limits import in_thread
from syncd.local import dirdigest, dirfd
from syncd.local import fs as localfs
from syncd.local.changes import scan_below
from syncd.local.index import LocalIndex, RowReader, Tracked
from syncd.local.indexrows import enc, encode_row, term
from syncd.local.scan import TMP_PREFIX, LocalFile, _entry

if TYPE_CHECKING:
    from syncd.engine.hydrate import HydrateResult, _Run

WINDOW_FILES = 8192        # small files waiting to be written, grouped by pack
WINDOW_BYTES = 16 << 20
WINDOWS = 2                # windows being written while the walk goes on
LARGE = 32                 # large files being written while the walk goes on
ROW_BATCH = 20000          # index rows written per transaction
MTIME_BATCH = 4096         # finished directories whose mtimes wait for the writes into them
KEEP_PLANNED = 4096        # entries of first-pass plans kept for the second pass (a small change)

Child = tuple[Entry, TreeItem, TreeRef | None]       # (entry by full path, its tree item, its tree in old)


@dataclass
class _Visit:
    """A directory to plan: its tree in the snapshot (None: gone from it) and in ``old``."""

    path: str
    new: TreeRef | None
    old: TreeRef | None
    claimed_links: int | None          # links its parent's item says it holds (None: not said)
    entry: Entry | None                # its own entry in the snapshot (None for the root)
    size: int = 1                      # entries below it, as its parent's item counts them


@dataclass
class _Looked:
    """One directory planned."""

    plan: Plan
    rows: dict[str, Tracked]           # its children's rows, by full path
    local: dict[str, LocalFile]        # what is in it now, by full path
    children: dict[str, Child]         # what the snapshot has in it, by full path
    shadowed: list[tuple[str, TreeRef]] = field(default_factory=list)   # replaced locally by a non-directory
    leftovers: list[str] = field(default_factory=list)    # a killed hydrate's temporary files in it
    path: str = ""                     # the directory's own path ('' is the root)


@dataclass
class _Pending:
    """Index rows not written yet, and what they move the directory digests by."""

    puts: list[Any] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    moved: dict[str, int] = field(default_factory=dict)
    drops: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.puts) + len(self.deletes) + len(self.drops)


class HydrateWalk:
    def __init__(self, engine: Engine, volume: str, target: Path, scope: Scope, run: _Run,
                 result: HydrateResult, overwrite: bool, sid: str | None) -> None:
        self.engine, self.volume, self.target, self.scope = engine, volume, target, scope
        self.run, self.result, self.overwrite, self.sid = run, result, overwrite, sid
        self.trees = engine.repo.trees
        self.late_conflicts: list[str] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="syncd-hydrate")
        self._closing = ExitStack()
        self._reader: RowReader | None = None
        self._root_fd = -1
        self._window: list[tuple[Entry, Tracked | None]] = []
        self._window_bytes = 0
        self._windows: list[asyncio.Task[None]] = []
        self._large: list[asyncio.Task[None]] = []
        self._mtimes: list[Entry] = []
        self._pending = _Pending()
        self._started = False
        self._planned: dict[str, _Looked] = {}
        self._planned_size = 0
        self.progress_total = 0
        self.seed = 0
        self._cold = scope.state is None      # nothing of this directory in the index: no rows anywhere
        self._fresh: set[str] = set()         # directories this hydrate made (cold only), not entered yet

    async def __aenter__(self) -> HydrateWalk:
        def opening() -> None:
            self._reader = self._closing.enter_context(self.engine.index.reader(self.volume, self.target))
            self._root_fd = dirfd.open_root(self.target)
            self._closing.callback(os.close, self._root_fd)
        await in_thread(opening, pool=self._pool)
        assert self._reader is not None
        self.seed = self._reader.seed
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            tasks = self._windows + self._large
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await in_thread(self._closing.close, pool=self._pool)
        finally:
            self._pool.shutdown(wait=False)

    # ------------------------------------------------------------ the two passes

    async def check(self) -> None:
        """The first pass: LocalConflict (before any byte is written) if a local path differs."""
        conflicts: list[str] = []
        await self._walk(conflicts)
        if conflicts:
            raise conflict_error(self.target, self.volume, conflicts,
                                 "commit them first, move them away, or hydrate with --overwrite")

    async def hydrate(self) -> None:
        """The second pass: plan and do, directory by directory. The index stops claiming an
        exact state first: a hydrate killed part-way is followed by one that visits everything
        (removing its temporary files, hashing the files it replaced)."""
        if self.scope.state is not None and self.scope.state.exact:
            await self.save(False)
        await self._walk(None)
        await self._settle_writes()

    async def save(self, complete: bool) -> None:
        """Write the rows not written yet; complete: the directory is now exactly the snapshot."""
        state = self.scope.state
        before = (state.snapshot, state.seq) if state is not None else (None, 0)
        snapshot, seq = (self.sid, self.result.seq) if complete else before
        pending, self._pending = self._pending, _Pending()
        await in_thread(lambda: self.engine.index.write_rows(
            self.volume, self.target, snapshot, seq, pending.puts, pending.deletes, pending.moved, pending.drops,
            exact=complete))

    async def _walk(self, conflicts: list[str] | None) -> None:
        """Depth first over the snapshot's trees; ``conflicts``: the first pass, which only plans,
        enters existing local directories only, and collects conflicts."""
        checking = conflicts is not None
        root = _Visit("", self.scope.new.root, self.scope.old,
                      None if self.scope.new.stats is None else self.scope.new.stats.links, None)
        stack: list[tuple[_Visit, list[_Visit] | None, _Looked | None]] = [(root, None, None)]
        while stack:
            visit, below, looked = stack[-1]
            if below is None:
                looked = await self._look(visit, checking)
                below = [] if looked is None else self._below(looked, checking)
                await self._prefetch(below)
                if looked is not None:
                    if conflicts is not None:
                        conflicts += looked.plan.conflicts
                    else:
                        await self._do(looked)
                below.reverse()
                stack[-1] = (visit, below, looked)
            elif below:
                stack.append((below.pop(), None, None))
            else:
                stack.pop()
                if looked is not None and not checking:
                    await self._finish_dir(visit, looked)

    async def _prefetch(self, visits: list[_Visit]) -> None:
        """Ask for the trees of the directories about to be entered together, so their reads
        coalesce (a pack range each, trees.py), up to what the tree cache can hold. Below a
        directory new to this hydrate (no tree in ``old``), which the walk enters whole, the
        trees are read ahead level by level too, when its whole subtree fits in that room:
        a cold hydrate of a small volume reads its trees with one ranged GET per level."""
        refs: list[TreeRef] = []
        ahead: list[TreeRef] = []
        room = self.trees.capacity // 4
        for visit in visits:
            if visit.path in self._planned:
                continue
            for ref in (visit.new, visit.old):
                if ref is not None:
                    refs.append(ref)
            room -= visit.size
            if room >= 0 and visit.old is None and visit.new is not None:
                ahead.append(visit.new)      # its subtree's entries are counted in room
            if room < 0 or len(refs) >= WALK_BATCH:
                break
        if len(refs) <= 1 and not ahead:
            return
        got = await self.trees.get_many(self.volume, refs)
        while ahead:
            below = [item.tree for ref in ahead for item in got.get(ref.id, ()) if item.tree is not None]
            if not below:
                return
            ahead, got = [], {}
            for at in range(0, len(below), WALK_BATCH):
                level = below[at:at + WALK_BATCH]
                got.update(await self.trees.get_many(self.volume, level))
                ahead += level

    # ------------------------------------------------------------ planning one directory

    async def _look(self, visit: _Visit, checking: bool) -> _Looked | None:
        if not checking and visit.path in self._planned:
            return self._planned.pop(visit.path)     # planned by the first pass a moment ago
        children, names = await self._children(visit)
        if not checking and visit.path in self._fresh:   # made by this hydrate a moment ago: empty, no rows
            self._fresh.discard(visit.path)        # what plan_hydrate makes of it: create everything, in order
            return _Looked(Plan(create=[children[p][0] for p in sorted(children)]), {}, {}, children, path=visit.path)
        looked = await in_thread(self._look_sync, visit.path, children, names, checking, pool=self._pool)
        if checking and looked is not None and self._planned_size + len(looked.children) <= KEEP_PLANNED:
            self._planned[visit.path] = looked      # a small change: the second pass reuses the plan
            self._planned_size += len(looked.children) + len(looked.local)
        return looked

    async def _children(self, visit: _Visit) -> tuple[dict[str, Child], list[str] | None]:
        """The snapshot's entries in the directory, each checked as validate_entries would be,
        and the names to plan: those whose entry moved since ``old`` and those the watcher named
        (None: every name; no ``old`` to compare with)."""
        if visit.new is None:
            return {}, None
        items = await self.trees.get(self.volume, visit.new)
        old = await self._old_items(visit)
        links = 0
        out: dict[str, Child] = {}
        names: list[str] | None = None if old is None else sorted(self.scope.hinted(visit.path))
        for item in items:
            name = item.name
            if name.startswith(RESERVED_PREFIX) or len(visit.path) + len(name) >= MAX_PATH:
                raise ManifestError(f"volume {self.volume!r}: reserved or too long a path: "
                                    f"{visit.path[:100]}/{name[:100]}")
            if item.entry.kind == "symlink":
                links += 1
            elif item.stats is not None:
                links += item.stats.links
            was = old.pop(name, None) if old is not None else None
            if old is not None and names is not None and was is not None and was.entry == item.entry \
                    and was.tree == item.tree and name not in self.scope.hinted(visit.path):
                continue         # as it was when the index was exactly at ``old``: nothing to do here
            entry = with_path(item, visit.path)
            out[entry.path] = (entry, item, was.tree if was is not None else None)
            if names is not None and name not in names:
                names.append(name)
        if visit.claimed_links is not None and links != visit.claimed_links:
            raise ManifestError(f"volume {self.volume!r}: the tree of {visit.path or '/'} holds {links} "
                                f"symlink(s) where its parent counts {visit.claimed_links}")
        if names is not None and old:
            names += old          # gone from the snapshot
        return out, None if names is None else sorted(set(names))

    async def _old_items(self, visit: _Visit) -> dict[str, TreeItem] | None:
        """The directory's items in ``old`` (by name); None when there is nothing to compare with."""
        if visit.old is None or visit.new is None:
            return None
        try:
            items = await self.trees.get(self.volume, visit.old)
        except (ManifestError, NotFound):
            return None      # the old tree is gone (pruned): plan every name
        return {i.name: i for i in items}

    def _look_sync(self, path: str, children: dict[str, Child], names: list[str] | None,
                   checking: bool) -> _Looked | None:
        """Worker thread: look at the directory (every entry, or ``names``), read those rows, plan
        (hashing what must be verified)."""
        assert self._reader is not None
        leftovers: list[str] = []
        local = self._list(path, names, leftovers)
        if local is None and checking:
            return None          # nothing local here: no conflict possible below
        local = local or {}
        if names is None:
            rows = self._reader.children(path)
        else:
            rows = self._reader.rows([f"{path}/{n}" if path else n for n in names])
        desired = {p: c[0] for p, c in children.items()}
        for p, entry in desired.items():   # a local directory where a file must go: all of it ours?
            loc = local.get(p)
            if loc is not None and loc.kind == "dir" and entry.kind != "dir":
                self._add_subtree(p, local, rows)
        plan = plan_hydrate(desired, LocalIndex(None, 0, rows), local, self.overwrite)
        settle_plan(plan, self.target, self.overwrite)
        return _Looked(plan, rows, local, children, leftovers=leftovers, path=path)

    def _list(self, path: str, names: list[str] | None, leftovers: list[str]) -> dict[str, LocalFile] | None:
        """What is in the directory now, or at ``names`` in it (None: it is not a directory here)."""
        try:
            fd = dirfd.walk(self._root_fd, path.split("/") if path else [])
        except OSError as exc:
            if exc.errno in dirfd.MOVED:
                return None
            raise LocalIOError(f"cannot read directory {self.target / path}: {exc.strerror}") from exc
        out: dict[str, LocalFile] = {}
        with dirfd.closing(fd):
            if names is None:
                try:
                    names = dirfd.list_names(fd)
                except OSError as exc:
                    raise LocalIOError(f"cannot read directory {self.target / path}: {exc.strerror}") from exc
            for name in names:
                full = f"{path}/{name}" if path else name
                if name.startswith(TMP_PREFIX):
                    leftovers.append(full)       # a killed hydrate's temporary file: goes (_do)
                    continue
                found = _entry(fd, name, self.target, full)
                if found is None:
                    continue
                loc, child = found
                if child is not None:
                    os.close(child)
                out[full] = loc
        return out

    def _add_subtree(self, top: str, local: dict[str, LocalFile], rows: dict[str, Tracked]) -> None:
        assert self._reader is not None
        try:
            local.update({f"{top}/{p}": f for p, f in scan_below(self.target, top).items()})
        except (OSError, LocalIOError):
            pass
        rows.update(self._reader.subtree(top))

    def _below(self, looked: _Looked, checking: bool) -> list[_Visit]:
        """The subdirectories to enter, in name order."""
        plan, local = looked.plan, looked.local
        out = []
        shadows = {p for p in plan.kept_local if p in local and local[p].kind != "dir"}
        skip = set(plan.conflicts) | shadows
        for path, (entry, item, old) in sorted(looked.children.items()):
            if entry.kind != "dir" or item.tree is None:
                continue
            if path in shadows and not checking:
                looked.shadowed.append((path, item.tree))
            if path in skip:
                continue
            loc = local.get(path)
            here = loc is not None and loc.kind == "dir"
            if checking and not here:
                continue         # made by the second pass: nothing local below to conflict with
            if here and old is not None and old.id == item.tree.id and not self.scope.hinted(path):
                continue         # the tree the index is exactly at, and nothing changed below locally
            stats = item.stats
            out.append(_Visit(path, item.tree, old, None if stats is None else stats.links, entry,
                              1 if stats is None else 1 + stats.files + stats.dirs + stats.links))
        for path in plan.delete:           # a tracked directory the snapshot dropped: empty it first
            if _is_dir(looked.rows.get(path)) and (loc := local.get(path)) is not None and loc.kind == "dir":
                out.append(_Visit(path, None, None, None, None))
        return out

    # ------------------------------------------------------------ doing

    async def _do(self, looked: _Looked) -> None:
        plan, result = looked.plan, self.result
        result.unchanged += len(plan.keep)
        result.kept_local += plan.kept_local
        for path, ref in looked.shadowed:  # the snapshot's paths below a local edit: not ours to write
            result.kept_local += await self._paths_below(path, ref)
        self.late_conflicts += plan.conflicts        # appeared since the first pass: left alone
        applying = looked.leftovers or plan.clear or plan.delete or plan.meta or \
            any(e.kind != "file" for e in plan.create)
        made, fresh = await in_thread(self._apply, looked, pool=self._pool) if applying else ([], [])
        if self._cold:
            self._fresh.update(fresh)
        for entry, st in made:
            self._put(entry.path, Tracked(entry, st.fingerprint if entry.kind == "file" else None),
                      looked.rows.get(entry.path))
        result.adopted += sum(e.kind == "file" for e in plan.meta)
        result.deleted += sum(not _is_dir(looked.rows.get(p)) for p in plan.delete)
        if not self._started:              # the bar starts when the directories are there
            self._started = True
            self.run.progress.start(self.progress_total, f"hydrate {self.volume}")
        for path, tracked in plan.keep.items():
            if looked.rows.get(path) != tracked:
                self._put(path, tracked, looked.rows.get(path))
            loc = looked.local.get(path)
            if tracked.entry.kind == "dir" and loc is not None and loc.mtime_ns != tracked.entry.mtime_ns:
                self._mtimes.append(tracked.entry)   # the same directory, with the snapshot's mtime
        for entry in plan.create:
            if entry.kind == "file":
                await self._write(entry, looked.rows.get(entry.path))
        for path, row in looked.rows.items():   # tracked, not in the snapshot: not tracked any more
            if path not in looked.children and not (_is_dir(row) and path in plan.delete):
                self._gone(path, row)
        if len(self._pending) >= ROW_BATCH:
            await self.save(False)

    def _apply(self, looked: _Looked) -> tuple[list[tuple[Entry, LocalFile]], list[str]]:
        """Worker thread, one call per directory: everything of its plan but writing files --
        leftovers and what is in the way go, subdirectories are made, metadata adopted, links
        made, the files the snapshot dropped deleted. What it made, with each one's stat, and
        the subdirectories it created (they were not there: empty, only ours).

        Its children are made relative to the directory's descriptor, opened once (dirfd.py)."""
        plan, root, owner = looked.plan, self.target, self.run.owner
        for path in looked.leftovers:
            localfs.remove_at(root, path)
        for path in plan.clear:
            localfs.remove_at(root, path, True)
        made: list[tuple[Entry, LocalFile]] = []
        fresh: list[str] = []
        dirs = [e for e in plan.create + plan.meta if e.kind == "dir"]
        files = [e for e in plan.meta if e.kind == "file"]
        links = [e for e in plan.create if e.kind == "symlink"]
        if dirs or files or links:
            with dirfd.closing(localfs.open_dir(root, looked.path)) as fd:
                for e in dirs:
                    st, created = localfs.make_dir_at(fd, dirdigest.name_of(e.path), e, owner, root / e.path)
                    made.append((e, st))
                    if created:
                        fresh.append(e.path)
                made += [(e, localfs.set_meta_at(fd, dirdigest.name_of(e.path), e, owner, root / e.path)) for e in files]
                made += [(e, localfs.make_symlink_at(fd, dirdigest.name_of(e.path), e, owner, root / e.path)) for e in links]
        for path in plan.delete:
            if not _is_dir(looked.rows.get(path)):
                localfs.remove_at(root, path)
        return made, fresh

    async def _paths_below(self, top: str, ref: TreeRef) -> list[str]:
        out: list[str] = []
        todo = [(top, ref)]
        while todo:
            prefix, tree = todo.pop()
            for item in await self.trees.get(self.volume, tree):
                path = f"{prefix}/{item.name}"
                out.append(path)
                if item.tree is not None:
                    todo.append((path, item.tree))
        return out

    async def _finish_dir(self, visit: _Visit, looked: _Looked) -> None:
        """After the directory's subtree: remove the tracked subdirectories the snapshot dropped
        (emptied by now; one still holding the user's files stays), queue its own mtime."""
        dirs = [p for p in looked.plan.delete if _is_dir(looked.rows.get(p))]
        if dirs:
            await self._settle_writes()
            await in_thread(_each, localfs.remove_at, self.target, dirs)
            self.result.deleted += len(dirs)
            for path in dirs:
                self._gone(path, looked.rows[path])
        if visit.entry is not None:
            self._mtimes.append(visit.entry)
            if len(self._mtimes) >= MTIME_BATCH:
                await self._settle_writes()

    async def _write(self, entry: Entry, row: Tracked | None) -> None:
        if not self.run.is_small(entry):
            self._large.append(asyncio.ensure_future(self._write_large(entry, row)))
            while len(self._large) > LARGE:
                await self._large.pop(0)
            return
        self._window.append((entry, row))
        self._window_bytes += entry.size
        if len(self._window) >= WINDOW_FILES or self._window_bytes >= WINDOW_BYTES:
            await self._flush_window()

    async def _write_large(self, entry: Entry, row: Tracked | None) -> None:
        st = await self.run.write_large(entry)
        self._put(entry.path, Tracked(entry, st.fingerprint), row)

    async def _flush_window(self) -> None:
        window, self._window, self._window_bytes = self._window, [], 0
        if window:
            self._windows.append(asyncio.ensure_future(self._write_window(window)))
        while len(self._windows) > WINDOWS:
            await self._windows.pop(0)

    async def _write_window(self, window: list[tuple[Entry, Tracked | None]]) -> None:
        rows = {e.path: r for e, r in window}
        for entry, st in await self.run.write_small([e for e, _ in window]):
            self._put(entry.path, Tracked(entry, st.fingerprint), rows[entry.path])

    async def _settle_writes(self) -> None:
        """Every pending write done, then the queued directories' mtimes (deepest first)."""
        await self._flush_window()
        while self._windows:
            await self._windows.pop(0)
        while self._large:
            await self._large.pop(0)
        if self._mtimes:
            mtimes, self._mtimes = self._mtimes, []
            await in_thread(_set_mtimes, self.target, mtimes)

    # ------------------------------------------------------------ rows

    def _put(self, path: str, tracked: Tracked, old: Tracked | None) -> None:
        pending, parent = self._pending, dirdigest.parent_of(path)
        pending.puts.append(encode_row(path, tracked))
        pending.moved[parent] = pending.moved.get(parent, 0) + term(self.seed, path, tracked) - (
            term(self.seed, path, old) if old is not None else 0)

    def _gone(self, path: str, row: Tracked) -> None:
        pending, parent = self._pending, dirdigest.parent_of(path)
        pending.deletes.append(enc(path))
        pending.moved[parent] = pending.moved.get(parent, 0) - term(self.seed, path, row)
        if row.entry.kind == "dir":
            pending.drops.append(path)


def conflict_error(target: Path, volume: str, conflicts: list[str], advice: str) -> LocalConflict:
    shown = ", ".join(conflicts[:5]) + (" ..." if len(conflicts) > 5 else "")
    return LocalConflict(f"{len(conflicts)} local path(s) in {target} differ from volume {volume!r} and "
                         f"would be overwritten: {shown} ({advice})", conflicts)


def _each(step: Callable[[Path, str], None], root: Path, paths: list[str]) -> None:
    for path in paths:
        step(root, path)


def _set_mtimes(root: Path, dirs: list[Entry]) -> None:
    for entry in reversed(dirs):      # deepest (last finished) first
        localfs.set_dir_mtime(root, entry.path, entry.mtime_ns)


def _is_dir(row: Tracked | None) -> bool:
    return row is not None and row.entry.kind == "dir"


def settle_plan(plan: Plan, root: Path, overwrite: bool) -> None:
    """Hash the same-size local files the plan must verify: equal ones are adopted, the others
    are conflicts (or, with ``overwrite``, written over)."""
    if not plan.verify:
        return
    equal, different = verify_local(root, plan.verify)
    plan.meta += equal
    if overwrite:
        plan.create += different
    else:
        plan.conflicts += [e.path for e in different]
    plan.verify = []


def verify_local(root: Path, entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """Split same-size local files into (already equal, different) by hashing them."""
    from syncd.format.chunking import content_id
    equal: list[Entry] = []
    different: list[Entry] = []
    for entry in entries:
        try:
            with os.fdopen(localfs.open_read(root, entry.path), "rb") as f:
                same = all(content_id(f.read(ref.size)) == ref.id for ref in entry.chunks)
        except (OSError, LocalIOError):
            same = False
        (equal if same else different).append(entry)
    return equal, different

