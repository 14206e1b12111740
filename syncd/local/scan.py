"""Walking a local directory into ``path -> LocalFile`` (lstat only, never following links).

The walk is the only place that decides what of a directory belongs to the
volume: regular files, directories and symlinks. Sockets, FIFOs and device
nodes are skipped (they cannot be stored), and so are syncd's own in-progress
temporary files (``.syncd-tmp-*``), which a crashed hydrate may leave behind;
a caller that passes ``leftovers`` gets their paths, so hydrate can remove them.
It runs in a worker thread: os.scandir is blocking.

The directory is shared with tasks that may swap any part of it for a symlink
at any moment (see dirfd.py), so the walk never names a path below the root:
each directory is opened relative to its parent's descriptor with
``O_NOFOLLOW | O_DIRECTORY`` and listed through its own descriptor, and a
directory's record is the ``fstat`` of the descriptor that was listed. An
entry that changes kind while we look at it (a link that is a directory by
the time it is read: ``EINVAL``; a directory that is a link by the time it is
opened: ``ELOOP``) is looked at again; one that keeps changing is left out of
this scan, like a file created a moment later. At most one descriptor per
directory level is open at a time.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.format.manifest import RESERVED_PREFIX
from syncd.local import dirfd

TMP_PREFIX = RESERVED_PREFIX
RETRIES = 3   # looks at an entry that changes kind under our hands


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
    mode = st.st_mode
    fmt = mode & _IFMT                 # stat.S_ISDIR and friends, inlined: once per entry of every walk
    kind = "dir" if fmt == stat.S_IFDIR else "symlink" if fmt == stat.S_IFLNK else "file"
    return LocalFile(kind, mode & 0o7777, st.st_size if kind == "file" else 0,
                     st.st_mtime_ns, st.st_ino, st.st_ctime_ns, target)


_IFMT = 0o170000


def scan_sync(root: Path, leftovers: list[str] | None = None) -> dict[str, LocalFile]:
    """Walk ``root`` depth first through directory descriptors (see dirfd.py); one descriptor per level."""
    out: dict[str, LocalFile] = {}
    try:
        root_fd = dirfd.open_root(root)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise LocalIOError(f"cannot read directory {root}: {exc.strerror}") from exc
    stack: list[tuple[int, str, list[str]]] = []
    try:
        stack.append((root_fd, "", _list(root_fd, root)))
        while stack:
            fd, rel, pending = stack[-1]
            if not pending:
                os.close(fd)
                stack.pop()
                continue
            name = pending.pop()
            path = f"{rel}/{name}" if rel else name
            if name.startswith(TMP_PREFIX):
                if leftovers is not None:
                    leftovers.append(path)
                continue
            found = _entry(fd, name, root, path)
            if found is None:
                continue
            out[path], child = found
            if child is not None:
                try:
                    names = _list(child, root / path)
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, path, names))
    except BaseException:
        for fd, _, _ in stack:
            os.close(fd)
        raise
    return out


def _list(fd: int, where: Path) -> list[str]:
    try:
        return dirfd.list_names(fd)
    except OSError as exc:
        raise LocalIOError(f"cannot read directory {where}: {exc.strerror}") from exc


def _entry(dir_fd: int, name: str, root: Path, path: str) -> tuple[LocalFile, int | None] | None:
    """What ``name`` in ``dir_fd`` is now, and a descriptor of it if it is a directory.

    Looked at again when it changes under our hands (a link that is a
    directory by the time it is read, a directory that is a link by the time
    it is opened); None if it is gone, is no kind syncd stores, or keeps
    changing (the next scan sees it).
    """
    for _ in range(RETRIES):
        try:
            st = os.lstat(name, dir_fd=dir_fd)
            if stat.S_ISLNK(st.st_mode):
                return from_stat(st, os.readlink(name, dir_fd=dir_fd)), None
            if stat.S_ISDIR(st.st_mode):
                child = os.open(name, dirfd.CHILD_DIR, dir_fd=dir_fd)
                try:
                    return from_stat(os.fstat(child)), child     # what we opened is what we record
                except BaseException:
                    os.close(child)
                    raise
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            if exc.errno in dirfd.MOVED:
                continue
            raise LocalIOError(f"cannot read {root / path}: {exc.strerror}") from exc
        return (from_stat(st), None) if stat.S_ISREG(st.st_mode) else None
    return None


async def scan(root: Path, leftovers: list[str] | None = None) -> dict[str, LocalFile]:
    return await asyncio.to_thread(_scan_dir, root, leftovers)


def _scan_dir(root: Path, leftovers: list[str] | None) -> dict[str, LocalFile]:
    if not root.is_dir():
        raise LocalIOError(f"{root} is not a directory")
    return scan_sync(root, leftovers)
