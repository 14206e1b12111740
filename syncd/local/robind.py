"""Read-only bind mounts: make a directory refuse writes from root too.

File modes stop every uid but root; root ignores them (CAP_DAC_OVERRIDE).
A read-only *mount* stops root as well: the kernel answers EROFS before it
looks at modes. So a read-only view (agent/views.py) is bind-mounted onto
itself and the bind remounted read-only (``mount --bind D D`` then ``mount -o
remount,bind,ro D``, here as two mount(2) calls through libc). Only the view's
own mount is read-only; the directory below it and every other mount stay as
they were, and the view looks the same to every task of the worker.

Both calls name the directory as ``/proc/self/fd/N`` of a descriptor opened
with ``O_NOFOLLOW``, so a symlink planted at the path is not followed; the
remount re-opens the path (now the new mount's root) and checks it is the same
inode before it flips it read-only.

Binding needs CAP_SYS_ADMIN. Where the kernel refuses (an unprivileged agent,
a container without it), :func:`seal` returns False and the view keeps the
mode bits alone: root tasks can then write to the view, but nothing reads a
view back, so nothing is committed either way. :func:`unseal` detaches the
mount (``MNT_DETACH``: a task that still has a file open keeps reading it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MNT_DETACH = 2

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def _open(path: Path) -> int:
    return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)


def seal(path: Path) -> bool:
    """Make ``path`` a read-only bind mount of itself; False if the kernel does not let us."""
    if sealed(path):
        return True
    lib = _lib()
    fd = _open(path)
    try:
        before = os.fstat(fd)
        here = f"/proc/self/fd/{fd}".encode()
        if lib.mount(here, here, None, MS_BIND, None) != 0:
            return False
    finally:
        os.close(fd)
    fd = _open(path)
    try:
        now = os.fstat(fd)
        here = f"/proc/self/fd/{fd}".encode()
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or \
                lib.mount(None, here, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0:
            lib.umount2(here, MNT_DETACH)
            return False
    finally:
        os.close(fd)
    return True


def sealed(path: Path) -> bool:
    """Is ``path`` on a read-only mount? (``os.path.ismount`` cannot see a bind mount of the same filesystem.)"""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def unseal(path: Path) -> None:
    """Detach the read-only mount on ``path`` if there is one (the directory below stays)."""
    try:
        fd = _open(path)
    except OSError:
        return
    try:
        if sealed(Path(f"/proc/self/fd/{fd}")):
            _lib().umount2(f"/proc/self/fd/{fd}".encode(), MNT_DETACH)   # EINVAL: not a mount point
    finally:
        os.close(fd)
