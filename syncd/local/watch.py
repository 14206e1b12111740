"""Change detection for the agent's write-back: inotify, with polling as the fallback.

Both watchers answer one question, "is there something to commit, and what?",
by comparing the directory with the local index (index.py), which records
exactly what the last commit or hydrate left there. Comparing with the index,
not with a previous look, means a write that lands while a commit runs is
still pending afterwards, never silently absorbed; and a hydrate's own writes
are recognised as clean (the hydrate recorded their fingerprints).

InotifyWatch (the default). On start, one full walk adds a watch on every
directory *before* listing it (so nothing created in between is missed) and
compares it with the index the way a commit's walk does (dirwalk.py: the rows of
a directory are read only if its digest moved): whatever differs is dirty. From then on
the kernel's events name the touched paths (the file, and for creations,
deletions and renames its parent directory, whose mtime moved); nothing is
walked. A directory that appears (created or moved in) is walked on its own,
adding watches as it goes, and all of its paths are dirty. A commit is due
once no event came for ``debounce`` seconds (or the tree has been dirty for
``max_delay``); it is preceded by a check of just the dirty paths against
their index rows (lstat each), and the commit is handed the dirty paths as a
hint (commit.py then lstat's those instead of walking). ``IN_Q_OVERFLOW``
(the kernel dropped events) means we no longer know what changed: one full
rescan, and the next commit walks. Each full walk is counted in ``scans``.

PollWatch (poll.py; the fallback: ``--watch poll``, no inotify on this file system or
Python, the per-user watch or instance limit reached, ``max_watches``
exceeded). Every ``poll`` seconds it walks the tree (scan.py) and reduces the
differences from the index to a signature (0 = clean); it debounces on the
signature. The interval grows to ten times the time a walk took, so a huge
tree costs at most ~10% of a core. Its commits walk too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from syncd.errors import LocalIOError
from syncd.local import dirfd
from syncd.local.changes import differing_sync
from syncd.local.dirwalk import DirWalk
from syncd.local.index import IndexStore
from syncd.local.poll import PollWatch, signature
from syncd.local.scan import TMP_PREFIX, LocalFile, from_stat
from syncd.local.watchsettings import WatchSettings

log = logging.getLogger(__name__)
VERIFY_AFTER = 0.2  # seconds without events before dirty paths are checked against the index
YIELD_EVERY = 64    # events handled between two turns of the event loop during a burst


__all__ = ["InotifyWatch", "PollWatch", "WatchSettings", "WatchUnavailable", "Watcher", "open_watcher", "signature"]


class WatchUnavailable(Exception):
    """inotify cannot watch this tree (not supported, or a limit reached): poll instead."""


class Watcher(Protocol):
    pending: bool
    scans: int
    dirty_since: float | None     # time.monotonic() of the oldest change not committed yet

    async def start(self) -> None: ...
    async def next_due(self, settings: WatchSettings) -> frozenset[str] | None: ...
    def committed(self) -> None: ...
    def hint(self) -> frozenset[str] | None: ...
    def close(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


# no DONT_FOLLOW: watches are added through /proc/self/fd/N, a link that must be followed
# (to the directory we opened without following anything)
MASK_NAMES = ("MODIFY", "ATTRIB", "CLOSE_WRITE", "MOVED_FROM", "MOVED_TO", "CREATE", "DELETE",
              "DELETE_SELF", "MOVE_SELF", "ONLYDIR", "EXCL_UNLINK")
TREE_EVENTS = ("CREATE", "DELETE", "MOVED_FROM", "MOVED_TO")   # these also move the parent's mtime


class InotifyWatch:
    """Events name the dirty paths; a full walk only on start and after an overflow."""

    def __init__(self, index_store: IndexStore, volume: str, directory: Path, max_watches: int = 0) -> None:
        self.index_store, self.volume, self.directory = index_store, volume, directory
        self.max_watches = max_watches
        self.pending = False
        self.scans = 0                   # full walks
        self.subtree_walks = 0           # walks of directories that appeared
        self.events = 0
        self.overflows = 0
        self.hinted_commits = 0
        self.last_change = 0.0
        self.dirty_since: float | None = None
        self._dirs: dict[int, str] = {}      # watch descriptor -> directory, relative ("" = root)
        self._dirty: dict[str, int] = {}     # path -> tick of its last event
        self._tick = 0
        self._verified = 0                   # the tick the last check against the index saw
        self._handed: dict[str, int] = {}    # the dirty paths (and ticks) the last hint named
        self._walk_next_commit = False
        self._overflowed = False
        self._unavailable: WatchUnavailable | None = None
        self._woken = asyncio.Event()
        self._new_dirs: set[str] = set()        # directories that appeared and are not walked yet
        self._walker: asyncio.Task[None] | None = None
        self._inotify: Any = None
        self._mask: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            import asyncinotify
            self._inotify = asyncinotify.Inotify(cache_size=256)
        except (ImportError, OSError) as exc:   # no inotify here, or max_user_instances reached
            raise WatchUnavailable(f"inotify unavailable: {exc}") from exc
        mask = asyncinotify.Mask(0)
        for name in MASK_NAMES:
            mask |= asyncinotify.Mask[name]
        self._mask = mask
        await self._full_rescan()
        self._reader = asyncio.create_task(self._read(), name=f"inotify-{self.volume}")

    def close(self) -> None:
        for task in (self._reader, self._walker):
            if task is not None:
                task.cancel()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def describe(self) -> dict[str, Any]:
        return {"mode": "inotify", "scans": self.scans, "subtree_walks": self.subtree_walks,
                "events": self.events, "overflows": self.overflows, "watches": len(self._dirs),
                "hinted_commits": self.hinted_commits,
                "dirty": len(self._dirty)}

    # ---------------------------------------------------------------- walking (worker thread)

    def _add_watch(self, rel: str, fd: int) -> bool:
        if self.max_watches and len(self._dirs) >= self.max_watches:
            raise WatchUnavailable(f"more than {self.max_watches} directories to watch (max_watches)")
        try:   # through the descriptor we opened: the very directory, whatever was swapped meanwhile
            watch = self._inotify.add_watch(f"/proc/self/fd/{fd}", self._mask)
        except OSError as exc:
            if exc.errno in dirfd.MOVED:
                return False                      # gone (or replaced) meanwhile
            if exc.errno == errno.ENOSPC:
                raise WatchUnavailable("the inotify watch limit (fs.inotify.max_user_watches) "
                                       "is reached") from exc
            raise WatchUnavailable(f"cannot watch {rel or '.'}: {exc.strerror}") from exc
        self._dirs[watch.wd] = rel
        return True

    def _walk(self, top: str) -> dict[str, LocalFile]:
        """Watch, then list, every directory from ``top`` down; what a scan of it would find.

        Like scan.py, every directory is reached through descriptors opened O_NOFOLLOW from
        the root (dirfd.py), so a task swapping a directory for a symlink cannot make us
        watch or list anything outside the volume."""
        out: dict[str, LocalFile] = {}
        root_fd = dirfd.open_root(self.directory)
        try:
            stack = [top]
            while stack:
                rel = stack.pop()
                try:
                    fd = dirfd.walk(root_fd, rel.split("/") if rel else [])
                except OSError as exc:
                    if exc.errno in dirfd.MOVED:
                        continue
                    raise LocalIOError(f"cannot read directory {self.directory / rel}: {exc.strerror}") from exc
                with dirfd.closing(fd):
                    if self._add_watch(rel, fd):
                        self._list_into(out, stack, fd, rel)
        finally:
            os.close(root_fd)
        return out

    def _list_into(self, out: dict[str, LocalFile], stack: list[str], fd: int, rel: str) -> None:
        try:
            entries = list(os.scandir(fd))
        except OSError as exc:
            if exc.errno in dirfd.MOVED:
                return
            raise LocalIOError(f"cannot read directory {self.directory / rel}: {exc.strerror}") from exc
        for de in entries:
            if de.name.startswith(TMP_PREFIX):
                continue
            path = f"{rel}/{de.name}" if rel else de.name
            try:
                st = os.lstat(de.name, dir_fd=fd)
                target = os.readlink(de.name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
            except OSError as exc:
                if exc.errno in dirfd.MOVED:
                    continue
                raise LocalIOError(f"cannot read {self.directory / path}: {exc.strerror}") from exc
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                out[path] = from_stat(st, target)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)

    async def _full_rescan(self) -> None:
        """Watch every directory and compare it with the index as a commit's walk does
        (dirwalk.py: only directories whose digest moved have their rows read), holding one
        directory at a time, never the index or the tree."""
        self.scans += 1
        if not await asyncio.to_thread(self.directory.is_dir):
            return
        for path in await asyncio.to_thread(self._rescan):
            self._touch(path)

    def _rescan(self) -> list[str]:
        changed: list[str] = []
        with self.index_store.reader(self.volume, self.directory) as reader:
            for delta in DirWalk(self.directory, reader, on_dir=self._add_watch):
                changed += [c.path for c in delta.changes]
        return changed

    async def _walk_new_dirs(self) -> None:
        while self._new_dirs:
            top = min(self._new_dirs, key=len)
            self._new_dirs = {d for d in self._new_dirs if d != top and not d.startswith(top + "/")}
            await self._walk_new(top)

    async def _walk_new(self, top: str) -> None:
        self.subtree_walks += 1
        try:
            found = await asyncio.to_thread(self._walk, top)
        except WatchUnavailable as exc:
            log.warning("%s: %s; a full rescan takes over", self.volume, exc)
            self._overflowed = True     # the next round raises it to the agent via next_due
            self._unavailable = exc
            self._woken.set()
            return
        except LocalIOError as exc:
            log.warning("%s: %s", self.volume, exc)
            found = {}
        for path in found:
            self._touch(path)

    # ---------------------------------------------------------------- events (event loop)

    def _touch(self, path: str) -> None:
        self._tick += 1
        self._dirty[path] = self._tick
        self.pending = True
        self.last_change = time.monotonic()
        if self.dirty_since is None:
            self.dirty_since = self.last_change
        self._woken.set()

    async def _read(self) -> None:
        """Handle events as they come; a burst (a task renaming in a loop) is handled
        ``YIELD_EVERY`` events at a time, letting the loop run between (the reader yields only
        when its buffer is empty, so a steady stream would otherwise starve every commit)."""
        async for event in self._inotify:
            self.events += 1
            self._handle(event)
            if self.events % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _handle(self, event: Any) -> None:
        names = {m.name for m in type(event.mask) if m in event.mask and m.name}
        if "Q_OVERFLOW" in names:
            self.overflows += 1
            self._overflowed = True
            self._woken.set()
            return
        watch = event.watch
        wd = watch.wd if watch is not None else None
        if "IGNORED" in names:
            self._dirs.pop(wd, None)     # type: ignore[arg-type]
            return
        rel = self._dirs.get(wd) if wd is not None else None
        if rel is None:
            return
        name = str(event.name) if event.name is not None else None
        if name is None:
            if rel and not names & {"DELETE_SELF", "MOVE_SELF"}:
                self._touch(rel)         # the directory's own mode or mtime
            return
        if name.startswith(TMP_PREFIX):
            return                       # a hydrate's temporary file; its rename names the result
        path = f"{rel}/{name}" if rel else name
        self._touch(path)
        if rel and names & set(TREE_EVENTS):
            self._touch(rel)
        if "ISDIR" in names and "MOVED_FROM" in names:
            for wd_, d in list(self._dirs.items()):  # its watches now point elsewhere
                if d == path or d.startswith(path + "/"):
                    del self._dirs[wd_]
        if "ISDIR" in names and names & {"CREATE", "MOVED_TO"}:
            self._new_dirs.add(path)           # walked by one task, each directory once per burst
            if self._walker is None or self._walker.done():
                self._walker = asyncio.create_task(self._walk_new_dirs())

    # ---------------------------------------------------------------- debounce

    async def _wait(self, seconds: float | None) -> None:
        self._woken.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), seconds)

    async def next_due(self, settings: WatchSettings) -> frozenset[str] | None:
        """Wait until a commit is due; the paths it needs to look at (None: walk everything).

        Dirty paths are checked against the index once events pause for ``VERIFY_AFTER``
        (so a hydrate's own writes stop counting as pending quickly), and again when due."""
        while True:
            if self._overflowed:
                self._overflowed = False
                if self._unavailable is not None:
                    raise self._unavailable
                log.warning("%s: inotify queue overflowed; rescanning the whole tree", self.volume)
                await self._full_rescan()
                self._walk_next_commit = True
            if not self._dirty:
                self.pending, self.dirty_since = False, None
                await self._wait(None)
                continue
            self.pending = True
            assert self.dirty_since is not None
            now = time.monotonic()
            quiet = self.last_change + min(settings.debounce, VERIFY_AFTER)
            due = min(self.last_change + settings.debounce, self.dirty_since + settings.max_delay)
            if self._tick != self._verified and now >= min(quiet, due):
                await self._verify()
                continue
            if now < due:
                await self._wait(min(quiet, due) - now if self._tick != self._verified else due - now)
                continue
            self._handed = dict(self._dirty)
            return None if self._walk_next_commit else _with_parents(self._dirty)

    async def _verify(self) -> None:
        """Drop the dirty paths that are what the index says."""
        seen, self._verified = dict(self._dirty), self._tick
        rows = await self.index_store.rows(self.volume, self.directory, seen)
        differ = await asyncio.to_thread(differing_sync, self.directory, rows, seen)
        for path, tick in seen.items():
            if path not in differ and self._dirty.get(path) == tick:
                del self._dirty[path]
        if not self._dirty:
            self.pending, self.dirty_since = False, None

    def hint(self) -> frozenset[str] | None:
        """Every path that may differ from the index now (None: unknown, walk)."""
        if self._walk_next_commit or self._overflowed or self._new_dirs:
            return None
        return _with_parents(self._dirty)

    def committed(self) -> None:
        """The commit given the last hint succeeded: what it saw is no longer dirty."""
        for path, tick in self._handed.items():
            if self._dirty.get(path) == tick:
                del self._dirty[path]
        self.hinted_commits += not self._walk_next_commit
        self._handed = {}
        self._walk_next_commit = False
        self.pending = bool(self._dirty)
        self.dirty_since = time.monotonic() if self._dirty else None


def _with_parents(paths: Iterable[str]) -> frozenset[str]:
    """The paths and their parent directories (whose mtime a creation or deletion moved)."""
    out = set(paths)
    out.update(p.rsplit("/", 1)[0] for p in list(out) if "/" in p)
    return frozenset(out)


async def open_watcher(index_store: IndexStore, volume: str, directory: Path,
                       settings: WatchSettings) -> Watcher:
    """A started watcher: inotify unless told to poll or inotify cannot watch this tree."""
    if settings.mode != "poll":
        watcher = InotifyWatch(index_store, volume, directory, settings.max_watches)
        try:
            await watcher.start()
            return watcher
        except WatchUnavailable as exc:
            watcher.close()
            log.warning("%s: %s; polling every %.1fs instead", volume, exc, settings.poll)
    return PollWatch(index_store, volume, directory, settings.poll)
