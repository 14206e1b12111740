"""What a snapshot holds, asked one directory at a time.

The inode table (tree.py) never walks a snapshot itself: it asks a
``Listing`` for the children of one directory when the kernel first looks
inside it, and for one entry by path. Today's snapshots (format v1) are one
object, so :class:`SnapshotListing` indexes the whole entry map by parent
directory once, in memory (a dict per directory, built in one pass). A v2
listing that fetches one tree object per directory fits the same two calls,
so nothing above this module changes when snapshots stop being one object.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Protocol

from syncd.format.manifest import Entry


class Listing(Protocol):
    async def list_dir(self, path: str) -> list[Entry]:
        """The entries directly inside directory ``path`` ('' is the root)."""
        ...

    async def lookup(self, path: str) -> Entry | None: ...


class SnapshotListing:
    """A v1 snapshot's entries, grouped by directory."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self.entries = entries
        self._dirs: dict[str, list[Entry]] = {}
        for path in sorted(entries):
            self._dirs.setdefault(posixpath.dirname(path), []).append(entries[path])

    async def list_dir(self, path: str) -> list[Entry]:
        return list(self._dirs.get(path, ()))

    async def lookup(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def siblings(self, path: str) -> list[Entry]:
        """Entries of the directory that holds ``path`` (for fetching a pack's small files together)."""
        return self._dirs.get(posixpath.dirname(path), [])
