"""Blocking filesystem steps of a hydrate, each run in a worker thread.

Every file appears atomically: bytes go to ``.syncd-tmp-<random>`` in the same
directory (so the rename cannot cross filesystems), mode and mtime are set on
the open descriptor, and ``os.replace`` publishes it; a failure unlinks the
temporary file. Nobody ever sees half a file under its real name.

Permission bits are applied without setuid, setgid and sticky bits: a volume
is data, and a hydrate running as root must not plant set-id programs.
OS errors are translated to LocalIOError naming the path and the reason
(``ENOSPC``, ``EROFS``, ``EACCES`` ...).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

from .errors import LocalIOError
from .manifest import Entry
from .scan import TMP_PREFIX, LocalFile, from_stat

SAFE_MODE_BITS = 0o777
IOV_MAX = 1024  # buffers per pwritev call (the Linux limit)


def local_error(path: Path | str, exc: OSError, action: str = "write") -> LocalIOError:
    reason = errno.errorcode.get(exc.errno or 0, "error")
    return LocalIOError(f"cannot {action} {path}: {exc.strerror or exc} ({reason})")


def tmp_path(final: Path) -> Path:
    return final.with_name(TMP_PREFIX + secrets.token_hex(6))


def open_tmp(final: Path, size: int) -> tuple[int, Path]:
    tmp = tmp_path(final)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise local_error(final, exc) from exc
    try:
        if size:
            os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise local_error(final, exc) from exc
    return fd, tmp


def pwrite_all(fd: int, data: bytes, offset: int, final: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as exc:
        raise local_error(final, exc) from exc


def pwritev_all(fd: int, pieces: list[bytes], offset: int, final: Path) -> None:
    """Write ``pieces`` back to back at ``offset`` with as few syscalls as the kernel allows."""
    views = [memoryview(p) for p in pieces if p]
    try:
        while views:
            n = os.pwritev(fd, views[:IOV_MAX], offset)
            offset += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]
    except OSError as exc:
        raise local_error(final, exc) from exc


def finish_tmp(fd: int, tmp: Path, final: Path, entry: Entry) -> LocalFile:
    """Set mode and mtime, close and publish; returns the published file's stat."""
    try:
        os.fchmod(fd, entry.mode & SAFE_MODE_BITS)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
        return from_stat(os.lstat(final))
    except OSError as exc:
        raise local_error(final, exc) from exc
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()


def abandon_tmp(fd: int, tmp: Path) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    tmp.unlink(missing_ok=True)


def write_small(final: Path, entry: Entry, data: bytes) -> LocalFile:
    fd, tmp = open_tmp(final, 0)
    try:
        pwrite_all(fd, data, 0, final)
    except BaseException:
        abandon_tmp(fd, tmp)
        raise
    return finish_tmp(fd, tmp, final, entry)


def set_meta(path: Path, entry: Entry) -> LocalFile:
    try:
        os.chmod(path, entry.mode & SAFE_MODE_BITS)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        return from_stat(os.lstat(path))
    except OSError as exc:
        raise local_error(path, exc) from exc


def make_dir(path: Path, entry: Entry) -> LocalFile:
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        path.mkdir(exist_ok=True)
        os.chmod(path, (entry.mode & SAFE_MODE_BITS) | 0o700)
        return from_stat(os.lstat(path))
    except OSError as exc:
        raise local_error(path, exc, "create directory") from exc


def make_symlink(path: Path, entry: Entry) -> LocalFile:
    tmp = tmp_path(path)
    try:
        os.symlink(entry.target or "", tmp)
        os.replace(tmp, path)
        return from_stat(os.lstat(path), entry.target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise local_error(path, exc, "create symlink") from exc


def remove(path: Path, recursive: bool = False) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            if recursive:
                shutil.rmtree(path)
            else:
                path.rmdir()
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and not recursive:
            return  # a directory that still holds the user's own files stays
        raise local_error(path, exc, "remove") from exc


def set_dir_mtime(path: Path, mtime_ns: int) -> None:
    try:
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    except OSError:
        pass  # cosmetic


def cleanup_tmp_files(root: Path) -> int:
    """Remove temporary files a crashed hydrate left behind."""
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(TMP_PREFIX):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed
