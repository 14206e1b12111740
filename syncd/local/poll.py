"""The polling fallback of change detection: walk, compare with the index, debounce.

Every ``poll`` seconds the tree is walked and its differences from the local
index are reduced to a signature (0 = clean). The walk is delta.py's: it
keeps nothing of a directory whose digest matches the index and reads only
the rows of those that moved, so polling a million files holds no index in
memory. A commit is due once
the signature has stayed the same for ``debounce`` seconds (or the tree has
been dirty for ``max_delay``). The interval grows to ``SCAN_SHARE`` times the
time a walk took, so a huge tree costs at most ~10% of a core. Its commits
walk too (no hint). See watch.py for when it is used.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd.errors import LocalIOError
from syncd.local.delta import walk_changes
from syncd.local.index import IndexStore, LocalIndex, unchanged
from syncd.local.scan import LocalFile

if TYPE_CHECKING:
    from syncd.local.watchsettings import WatchSettings

SCAN_SHARE = 10     # poll interval >= SCAN_SHARE x the last scan's duration


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
class PollWatch:
    """Walk every ``interval`` seconds; debounce on what differs from the index."""

    index_store: IndexStore
    volume: str
    directory: Path
    interval: float = 0.5
    pending: bool = False
    dirty_since: float | None = None
    last_change: float = 0.0
    signature: int = 0
    scans: int = 0

    async def start(self) -> None:
        return None

    async def due(self, settings: WatchSettings) -> bool:
        """Walk once (only directories whose digest moved keep anything, delta.py); True if a
        background commit should run now."""
        started = time.monotonic()
        try:
            changed = await walk_changes(self.index_store, self.volume, self.directory)
        except (LocalIOError, FileNotFoundError):
            changed = {}  # the directory vanished (a deleted volume): nothing to write back
        self.scans += 1
        now = time.monotonic()
        self.interval = max(settings.poll, SCAN_SHARE * (now - started))
        sig = (hash(tuple(sorted((p, loc) for p, loc in changed.items())) or 1)) if changed else 0
        self.pending = sig != 0
        if not self.pending:
            self.dirty_since = None
            return False
        if sig != self.signature:
            self.signature, self.last_change = sig, now
        if self.dirty_since is None:
            self.dirty_since = now
        return now - self.last_change >= settings.debounce or now - self.dirty_since >= settings.max_delay

    async def next_due(self, settings: WatchSettings) -> frozenset[str] | None:
        while True:
            await asyncio.sleep(self.interval)
            if await self.due(settings):
                return None   # no hint: the commit walks

    def committed(self) -> None:
        self.dirty_since = None

    def hint(self) -> frozenset[str] | None:
        return None   # a commit walks

    def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"mode": "poll", "scans": self.scans, "interval": self.interval}


