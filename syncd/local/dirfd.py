"""Reaching paths inside a directory a task shares with the agent, without ever following a symlink.

A task may rename, swap (``renameat2(RENAME_EXCHANGE)``) or replace anything in
its volume at any instant, including while a root agent scans it or reads a
file of it. A path such as ``root/d/f`` is resolved by the kernel component by
component *when it is used*, so a check made a moment earlier (an ``lstat``
saying ``d`` is a directory) proves nothing: ``d`` may be a symlink to
``/root`` by the time ``open`` runs. ``O_NOFOLLOW`` on ``open`` protects only
the last component.

So nothing below the root is ever named by a path. Every step starts from a
directory file descriptor and names one component relative to it
(``dir_fd=``), each directory is opened with ``O_DIRECTORY | O_NOFOLLOW``
(a symlink there fails with ``ELOOP``, a file with ``ENOTDIR``), listings are
read from the descriptor (``os.scandir(fd)``), and files are opened with
``O_NOFOLLOW | O_NONBLOCK`` (a FIFO swapped in cannot block the agent) and
checked with ``fstat`` to be regular files. Whatever is reached this way is
inside the volume, whatever the task does meanwhile. When something is not
what it was a moment ago (the errnos in ``MOVED``), it *moved*: the caller
treats the path as changed and looks again, never as content and never as an
error.

The root itself is named by the caller (the agent's mount directory, checked
by the agent; a directory given on the command line) and is opened as given.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
CHILD_DIR = DIR | os.O_NOFOLLOW
READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# a component is no longer what it was: gone, now a symlink, now a non-directory, now a socket
MOVED = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EINVAL})


def open_root(root: Path) -> int:
    return os.open(root, DIR)


def walk(root_fd: int, parts: list[str]) -> int:
    """A new descriptor of the directory ``parts`` below ``root_fd``, every component opened O_NOFOLLOW.

    Raises the OSError of the first component that is not a real directory.
    """
    fd = os.dup(root_fd)
    for part in parts:
        try:
            nxt = os.open(part, CHILD_DIR, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def open_parent_fd(root: Path, rel: str) -> tuple[int, str]:
    """``(descriptor of rel's parent, last component)``; raises OSError (ELOOP/ENOTDIR for a link on the way)."""
    parts = rel.split("/")
    root_fd = open_root(root)
    try:
        return walk(root_fd, parts[:-1]), parts[-1]
    finally:
        os.close(root_fd)


def open_file_at(dir_fd: int, name: str) -> int | None:
    """A read descriptor for the regular file ``name`` in ``dir_fd``; None if it moved or is not a regular file."""
    found = _open_regular(dir_fd, name)
    return None if found is None else found[0]


def _open_regular(dir_fd: int, name: str) -> tuple[int, os.stat_result] | None:
    """``open_file_at`` and the ``fstat`` that found the file regular."""
    try:
        fd = os.open(name, READ_FILE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in MOVED:
            return None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return fd, st
    except OSError:
        pass
    os.close(fd)
    return None


def read_whole(dir_fd: int, name: str) -> tuple[os.stat_result, bytes, os.stat_result] | None:
    """``(fstat before, the bytes, fstat after)`` of the regular file ``name`` in ``dir_fd``,
    read with one ``pread`` of the size ``fstat`` gave; None if it moved (see open_file_at).
    The caller compares the two stats: a file written meanwhile is read again. Five system
    calls (open, fstat, pread, fstat, close): a commit makes them for every small file."""
    found = _open_regular(dir_fd, name)
    if found is None:
        return None
    fd, before = found
    try:
        data = os.pread(fd, before.st_size, 0) if before.st_size else b""
        return before, data, os.fstat(fd)
    finally:
        os.close(fd)


def open_file(root: Path, rel: str) -> int | None:
    """A read descriptor for the regular file at ``rel``, reached without following any link.

    None when something on the way moved (see the module docstring): the
    caller reads it again later. Other errors (EACCES, EIO ...) are raised.
    """
    try:
        dir_fd, name = open_parent_fd(root, rel)
    except OSError as exc:
        if exc.errno in MOVED:
            return None
        raise
    try:
        return open_file_at(dir_fd, name)
    finally:
        os.close(dir_fd)


def make_dir_at(parent_fd: int, name: str, mode: int) -> tuple[int, bool]:
    """``(descriptor of the directory name in parent_fd, whether it was created now)``.

    Created with ``mode`` if missing, then opened ``O_NOFOLLOW | O_DIRECTORY``: a
    symlink or a file there raises OSError (ELOOP, ENOTDIR), never followed."""
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
        created = True
    except FileExistsError:
        created = False
    return os.open(name, CHILD_DIR, dir_fd=parent_fd), created


def list_names(dir_fd: int) -> list[str]:
    with os.scandir(dir_fd) as it:
        return [de.name for de in it]


@contextlib.contextmanager
def closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)
