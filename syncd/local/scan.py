"""Walking a local directory into ``path -> LocalFile`` (lstat only, never following links).

The walk is the only place that decides what of a directory belongs to the
volume: regular files, directories and symlinks. Sockets, FIFOs and device
nodes are skipped (they cannot be stored), and so are syncd's own in-progress
temporary files (``.syncd-tmp-*``), which a crashed hydrate may leave behind;
a caller that passes ``leftovers`` gets their paths, so hydrate can remove them.
It runs in a worker thread: os.scandir is blocking.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from syncd.errors import LocalIOError

TMP_PREFIX = ".syncd-tmp-"


@dataclass(frozen=True, slots=True)
class LocalFile:
    kind: str                 # "file", "dir", "symlink"
    mode: int                 # permission bits
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    target: str | None = None

    @property
    def fingerprint(self) -> tuple[int, int, int, int]:
        """What must match for a file to count as unchanged without reading it."""
        return (self.ino, self.size, self.mtime_ns, self.ctime_ns)


def from_stat(st: os.stat_result, target: str | None = None) -> LocalFile:
    if stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        kind = "file"
    return LocalFile(kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "file" else 0,
                     st.st_mtime_ns, st.st_ino, st.st_ctime_ns, target)


def scan_sync(root: Path, leftovers: list[str] | None = None) -> dict[str, LocalFile]:
    out: dict[str, LocalFile] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = list(it)
        except FileNotFoundError:
            if rel:
                continue  # removed while we walked
            raise
        except OSError as exc:
            raise LocalIOError(f"cannot read directory {root / rel}: {exc.strerror}") from exc
        for de in entries:
            path = f"{rel}/{de.name}" if rel else de.name
            if de.name.startswith(TMP_PREFIX):
                if leftovers is not None:
                    leftovers.append(path)
                continue
            try:
                st = de.stat(follow_symlinks=False)
                target = os.readlink(de.path) if stat.S_ISLNK(st.st_mode) else None
            except FileNotFoundError:
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue
            out[path] = from_stat(st, target)
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
    return out


async def scan(root: Path, leftovers: list[str] | None = None) -> dict[str, LocalFile]:
    return await asyncio.to_thread(_scan_dir, root, leftovers)


def _scan_dir(root: Path, leftovers: list[str] | None) -> dict[str, LocalFile]:
    if not root.is_dir():
        raise LocalIOError(f"{root} is not a directory")
    return scan_sync(root, leftovers)
