"""Blocking filesystem steps of a hydrate, each run in a worker thread.

Every step names its path as ``(root, rel)``: the hydrate's target directory
and a snapshot path inside it. The step opens ``rel``'s parent by walking from
``root`` one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` and then
works relative to that directory descriptor (``dir_fd=``). So a hydrate never
writes through a symlink, whoever planted it and whenever: a link left in the
directory by a task (``sub -> /etc``), or one swapped in while the hydrate
runs, makes the step fail with LocalIOError instead of writing outside the
target. The final component is never followed either: files are renamed over
it, and metadata is set through an ``O_NOFOLLOW`` descriptor.

Every file appears atomically: bytes go to ``.syncd-tmp-<random>`` in the same
directory (so the rename cannot cross filesystems), mode and mtime are set on
the open descriptor, and ``os.replace`` publishes it; a failure unlinks the
temporary file. Nobody ever sees half a file under its real name.

Permission bits are applied without setuid, setgid and sticky bits: a volume
is data, and a hydrate running as root must not plant set-id programs.
``owner`` (uid, gid): when the agent serves tasks of another uid
(``SYNCD_ALLOW_UIDS``/``SYNCD_ALLOW_GROUP``), what a hydrate creates is given
to them, through the same descriptors (``fchown`` of the temp file before its
mode, mtime and publication, so the stat recorded afterwards is final; a
directory through its ``O_PATH`` descriptor; a symlink under its temp name).
OS errors are translated to LocalIOError naming the path and the reason
(``ENOSPC``, ``EROFS``, ``EACCES``, ``ELOOP`` ...).

Reading (``open_read``, ``open_file`` for commit) and the cleanup of
temporary files follow the same rule as writing: every component is reached
from a directory descriptor with ``O_NOFOLLOW`` (dirfd.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.format.manifest import Entry
from syncd.local import dirfd
from syncd.local.scan import TMP_PREFIX, LocalFile, from_stat, scan_sync

SAFE_MODE_BITS = 0o777
IOV_MAX = 1024  # buffers per pwritev call (the Linux limit)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
Owner = tuple[int, int] | None   # (uid, gid) to give what is created; None: leave it the agent's


def local_error(path: Path | str, exc: OSError, action: str = "write") -> LocalIOError:
    reason = errno.errorcode.get(exc.errno or 0, "error")
    return LocalIOError(f"cannot {action} {path}: {exc.strerror or exc} ({reason})")


def tmp_name() -> str:
    return TMP_PREFIX + secrets.token_hex(6)


def open_parent(root: Path, rel: str) -> tuple[int, str]:
    """``(descriptor of rel's parent, rel's last component)``, reached without following links."""
    parts = rel.split("/")
    return _open_dirs(root, rel, parts[:-1]), parts[-1]


def open_dir(root: Path, rel: str) -> int:
    """A descriptor of the directory ``rel`` ('' is ``root``), reached without following links."""
    return _open_dirs(root, rel, rel.split("/") if rel else [], "open")


def _open_dirs(root: Path, rel: str, parts: list[str], action: str = "write") -> int:
    """A descriptor of ``root`` / ``parts``, each component opened ``O_NOFOLLOW``: a symlink or
    non-directory on the way is refused (LocalIOError naming it); errors name ``rel``."""
    try:
        fd = os.open(root, _DIR)
    except OSError as exc:
        raise local_error(root, exc, "open") from exc
    for i, part in enumerate(parts):
        try:
            nxt = os.open(part, _DIR | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            where = root.joinpath(*parts[:i + 1])
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LocalIOError(f"refusing to write {root / rel}: {where} is a symlink or not a "
                                   f"directory ({errno.errorcode[exc.errno]})") from exc
            raise local_error(root / rel, exc, action) from exc
        os.close(fd)
        fd = nxt
    return fd


@contextlib.contextmanager
def parent(root: Path, rel: str) -> Iterator[tuple[int, str]]:
    fd, name = open_parent(root, rel)
    try:
        yield fd, name
    finally:
        os.close(fd)


@dataclass
class TmpFile:
    """A temporary file being filled next to its final name."""

    fd: int
    dir_fd: int
    name: str        # the final name, in dir_fd
    tmp: str         # the temporary name, in dir_fd
    final: Path      # for messages only
    stat: os.stat_result | None = None   # of the published file, by fstat (finish_tmp)
    owner: Owner = None                  # given the file by finish_tmp

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd = self.dir_fd = -1

    def unlink_tmp(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.tmp, dir_fd=self.dir_fd)


def open_tmp(root: Path, rel: str, size: int, owner: Owner = None) -> TmpFile:
    dir_fd, name = open_parent(root, rel)
    tmp = tmp_name()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
    except OSError as exc:
        os.close(dir_fd)
        raise local_error(root / rel, exc) from exc
    out = TmpFile(fd, dir_fd, name, tmp, root / rel, owner=owner)
    try:
        if size:
            os.ftruncate(fd, size)
    except OSError as exc:
        abandon_tmp(out)
        raise local_error(root / rel, exc) from exc
    return out


def pwrite_all(fd: int, data: bytes | memoryview, offset: int, final: Path) -> None:
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


def finish_tmp(tmp: TmpFile, entry: Entry) -> LocalFile:
    """Set mtime and mode, publish and close; returns the published file's stat.

    The stat is ``fstat`` of our own descriptor after the rename (which moves
    ctime), so it describes the inode we wrote even if a task put another file
    under the name meanwhile; it is kept in ``tmp.stat`` for the cache's
    fingerprint (data/stamp.py). The mode is set after the mtime: the file is
    private (0600) until then, and a writer that opens it after the chmod
    moves mtime away from the snapshot's.
    """
    try:
        if tmp.owner is not None:
            os.fchown(tmp.fd, *tmp.owner)
        os.utime(tmp.fd, ns=(entry.mtime_ns, entry.mtime_ns))
        os.fchmod(tmp.fd, entry.mode & SAFE_MODE_BITS)
        os.replace(tmp.tmp, tmp.name, src_dir_fd=tmp.dir_fd, dst_dir_fd=tmp.dir_fd)
        tmp.stat = os.fstat(tmp.fd)
        return from_stat(tmp.stat)
    except OSError as exc:
        tmp.unlink_tmp()
        raise local_error(tmp.final, exc) from exc
    finally:
        tmp.close()


def abandon_tmp(tmp: TmpFile) -> None:
    tmp.unlink_tmp()
    tmp.close()


def write_small_many(root: Path, files: list[tuple[Entry, bytes]], owner: Owner = None) -> list[os.stat_result]:
    """Small files, each whole (``_write_in``), in order; each directory is opened (from ``root``,
    without following links) once for the run of files in it, not once per file. Returns each
    published file's ``fstat`` (for the index, and the cache's fingerprint: data/stamp.py)."""
    out: list[os.stat_result] = []
    token = secrets.token_hex(4)
    dir_fd, current = -1, None
    try:
        for n, (entry, data) in enumerate(files):
            parent_rel, _, name = entry.path.rpartition("/")
            if parent_rel != current:
                if dir_fd >= 0:
                    os.close(dir_fd)
                    dir_fd = -1
                dir_fd, _ = open_parent(root, entry.path)
                current = parent_rel
            out.append(_write_in(dir_fd, name, f"{TMP_PREFIX}{token}{n:x}", entry, data, owner, root, entry.path))
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    return out


def _write_in(dir_fd: int, name: str, tmp: str, entry: Entry, data: bytes, owner: Owner, root: Path,
              rel: str) -> os.stat_result:
    """One small file, whole, into ``dir_fd``: temporary name, bytes, owner, mtime, mode, rename."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
    except OSError as exc:
        raise local_error(root / rel, exc) from exc
    try:
        try:
            if data and os.write(fd, data) != len(data):
                pwrite_all(fd, data, 0, root / rel)
            if owner is not None:
                os.fchown(fd, *owner)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            os.fchmod(fd, entry.mode & SAFE_MODE_BITS)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return os.fstat(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            if isinstance(exc, OSError):
                raise local_error(root / rel, exc) from exc
            raise
    finally:
        os.close(fd)


def set_meta(root: Path, rel: str, entry: Entry, owner: Owner = None) -> LocalFile:
    """chmod and utime ``rel`` itself, never a symlink's target (``set_meta_at``)."""
    with parent(root, rel) as (dir_fd, name):
        return set_meta_at(dir_fd, name, entry, owner, root / rel)


def set_meta_at(dir_fd: int, name: str, entry: Entry, owner: Owner, where: Path) -> LocalFile:
    """chmod and utime ``name`` in ``dir_fd`` itself, never a symlink's target.

    The path is pinned with an ``O_PATH | O_NOFOLLOW`` descriptor (which needs
    no read permission) and changed through ``/proc/self/fd``, so a file
    swapped for a link in between cannot redirect the chmod. ``where`` names
    it in messages.
    """
    mode = (entry.mode & SAFE_MODE_BITS) | (0o700 if entry.kind == "dir" else 0)
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise local_error(where, exc) from exc
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise LocalIOError(f"refusing to change {where}: it is a symlink")
        pinned = f"/proc/self/fd/{fd}"
        if owner is not None:
            os.chown(pinned, *owner)
        os.chmod(pinned, mode)
        os.utime(pinned, ns=(entry.mtime_ns, entry.mtime_ns))
        return from_stat(os.fstat(fd))
    except OSError as exc:
        raise local_error(where, exc) from exc
    finally:
        os.close(fd)


def make_dir(root: Path, rel: str, entry: Entry, owner: Owner = None) -> LocalFile:
    with parent(root, rel) as (dir_fd, name):
        return make_dir_at(dir_fd, name, entry, owner, root / rel)[0]


def make_dir_at(dir_fd: int, name: str, entry: Entry, owner: Owner, where: Path) -> tuple[LocalFile, bool]:
    """The directory ``name`` in ``dir_fd`` with the entry's mode and mtime: made if missing, a
    symlink or file syncd owns in the way replaced. Returns its stat and whether it was made now
    (empty, ours: hydratewalk.py plans into it without listing it)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)     # a symlink or file syncd owns, in the way
            raise FileNotFoundError
        made = False
    except FileNotFoundError:
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except OSError as exc:
            raise local_error(where, exc, "create directory") from exc
        made = True
    except OSError as exc:
        raise local_error(where, exc, "create directory") from exc
    return set_meta_at(dir_fd, name, entry, owner, where), made


def make_symlink(root: Path, rel: str, entry: Entry, owner: Owner = None) -> LocalFile:
    with parent(root, rel) as (dir_fd, name):
        return make_symlink_at(dir_fd, name, entry, owner, root / rel)


def make_symlink_at(dir_fd: int, name: str, entry: Entry, owner: Owner, where: Path) -> LocalFile:
    """The symlink ``name`` in ``dir_fd``: made in place when nothing is there (a link appears
    whole), else under a temporary name renamed over ``name``; so is one given to ``owner``,
    which must own it before anyone sees it."""
    if owner is None:
        try:
            os.symlink(entry.target or "", name, dir_fd=dir_fd)
            return from_stat(os.lstat(name, dir_fd=dir_fd), entry.target)
        except FileExistsError:
            pass
        except OSError as exc:
            raise local_error(where, exc, "create symlink") from exc
    tmp = tmp_name()
    try:
        os.symlink(entry.target or "", tmp, dir_fd=dir_fd)
        if owner is not None:
            os.chown(tmp, *owner, dir_fd=dir_fd, follow_symlinks=False)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return from_stat(os.lstat(name, dir_fd=dir_fd), entry.target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise local_error(where, exc, "create symlink") from exc


def remove(path: Path, recursive: bool = False) -> None:
    """Remove ``path`` itself (a whole mount, say); a symlink is unlinked, never followed."""
    remove_at(path.parent, path.name, recursive)


def remove_at(root: Path, rel: str, recursive: bool = False) -> None:
    try:
        with parent(root, rel) as (dir_fd, name):
            st = os.lstat(name, dir_fd=dir_fd)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dir_fd)
            elif recursive:
                shutil.rmtree(name, dir_fd=dir_fd)
            else:
                os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and not recursive:
            return  # a directory that still holds the user's own files stays
        raise local_error(root / rel, exc, "remove") from exc


def set_dir_mtime(root: Path, rel: str, mtime_ns: int) -> None:
    try:
        with parent(root, rel) as (dir_fd, name):
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    except (OSError, LocalIOError):
        pass  # cosmetic


def open_read(root: Path, rel: str) -> int:
    """A read descriptor for the regular file at ``rel``, reached without following links.

    Opened ``O_NONBLOCK`` and checked with ``fstat``: a FIFO or socket a task
    put there is refused instead of blocking the agent.
    """
    with parent(root, rel) as (dir_fd, name):
        try:
            fd = dirfd.open_file_at(dir_fd, name)
        except OSError as exc:
            raise local_error(root / rel, exc, "read") from exc
        if fd is None:
            raise LocalIOError(f"cannot read {root / rel}: it is not a regular file (or it just moved)")
        return fd


def cleanup_tmp_files(root: Path) -> int:
    """Remove temporary files a crashed hydrate left behind, without following any link.

    They are found by the same descriptor-relative walk as a scan and each is
    unlinked relative to its parent's descriptor (``remove_at``), so a
    directory swapped for a symlink meanwhile never leads the unlink outside.
    """
    leftovers: list[str] = []
    scan_sync(root, leftovers)
    for rel in leftovers:
        remove_at(root, rel)
    return len(leftovers)
