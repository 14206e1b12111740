"""What changed in a directory since its index was written, as one answer: for the polling watcher.

``walk_changes(store, volume, root)`` walks like a commit (dirwalk.py: every
entry lstat'ed through directory descriptors, only the rows of directories
whose digest moved read and compared) and returns every path that differs
from its row, with what the walk saw there (None: gone). It holds the changes,
so its memory follows the change; commits stream the same walk instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.local.dirwalk import DirWalk
from syncd.local.index import IndexStore
from syncd.local.scan import LocalFile


def _walk(store: IndexStore, volume: str, root: Path,
          leftovers: list[str] | None) -> dict[str, LocalFile | None]:
    with store.reader(volume, root) as reader:
        return {c.path: c.local for delta in DirWalk(root, reader, leftovers=leftovers) for c in delta.changes}


async def walk_changes(store: IndexStore, volume: str, root: Path,
                       leftovers: list[str] | None = None) -> dict[str, LocalFile | None]:
    """Every path that may differ from its index row, with what the walk saw there (None: gone)."""
    if not await asyncio.to_thread(root.is_dir):
        raise LocalIOError(f"{root} is not a directory")
    return await asyncio.to_thread(_walk, store, volume, root, leftovers)
