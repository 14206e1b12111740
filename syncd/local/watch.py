"""Change detection for the agent's write-back: is a directory still what its index says?

The local index (localindex.py) records, per path, exactly what the last
commit or hydrate left in the directory. A directory has pending changes when
an lstat walk (scan.py) finds a path the index lacks, misses a path it has, or
finds a path whose fingerprint (inode, size, mtime, ctime), kind, mode or
symlink target differs. The watcher reduces those differences to a signature
(0 = clean) and debounces on it: a commit starts once the signature has stayed
the same for ``debounce`` seconds, i.e. the writer paused.

Comparing with the index rather than with the previous scan means a write that
lands while a commit runs is still pending afterwards, never silently absorbed.

Costs are kept proportional: the index is parsed again only when its file
changed (stat key), and the interval between scans grows to ten times the
time a scan took, so a huge volume costs at most ~10% of one core.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.local.index import IndexStore, LocalIndex, unchanged
from syncd.local.scan import LocalFile, scan

SCAN_SHARE = 10   # poll interval >= SCAN_SHARE x the last scan's duration


@dataclass(frozen=True)
class WatchSettings:
    poll: float = 0.5          # seconds between scans (at least)
    debounce: float = 1.0      # quiet time before a background commit
    max_delay: float = 10.0    # commit anyway once dirty this long


def signature(index: LocalIndex, local: dict[str, LocalFile]) -> int:
    """0 if ``local`` is exactly what ``index`` describes; else a hash of what differs."""
    changed: list[tuple[object, ...]] = []
    for path, loc in local.items():
        tracked = index.files.get(path)
        if tracked is None or not unchanged(tracked, loc) or tracked.entry.mode != loc.mode:
            changed.append((path, loc.fingerprint, loc.mode, loc.target))
    changed += [(path,) for path in index.files if path not in local]
    if not changed:
        return 0
    return hash(tuple(sorted(changed, key=str))) or 1


@dataclass
class Watch:
    """Per-mount watcher state: the debounce clock and the cached index."""

    index_store: IndexStore
    volume: str
    directory: Path
    interval: float = 0.5
    pending: bool = False
    dirty_since: float | None = None
    last_change: float = 0.0
    signature: int = 0
    _index_key: tuple[int, int, int] | None = field(default=None, repr=False)
    _index: LocalIndex = field(default_factory=LocalIndex, repr=False)

    async def _load_index(self) -> LocalIndex:
        path = self.index_store.path(self.volume, self.directory)
        try:
            st = await asyncio.to_thread(os.stat, path)
            key: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key != self._index_key or key is None:
            self._index = await self.index_store.load(self.volume, self.directory)
            self._index_key = key
        return self._index

    async def due(self, settings: WatchSettings) -> bool:
        """Scan once; True if a background commit should run now."""
        started = time.monotonic()
        index = await self._load_index()
        try:
            local = await scan(self.directory)
        except LocalIOError:
            local = None  # the directory vanished (a deleted volume): nothing to write back
        now = time.monotonic()
        self.interval = max(settings.poll, SCAN_SHARE * (now - started))
        sig = signature(index, local) if local is not None else 0
        self.pending = sig != 0
        if not self.pending:
            self.dirty_since = None
            return False
        if sig != self.signature:
            self.signature, self.last_change = sig, now
        if self.dirty_since is None:
            self.dirty_since = now
        return now - self.last_change >= settings.debounce or now - self.dirty_since >= settings.max_delay

    def committed(self) -> None:
        self.dirty_since = None
