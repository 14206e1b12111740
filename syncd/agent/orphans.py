"""A vanished volume's local copy: what was never committed is set aside, never deleted.

When a mounted volume disappears from the bucket (``syncd volume rm`` or
``syncd volume rename`` elsewhere, also while the agent was down), the agent
must drop its local copy, so that a new volume of the same name cannot inherit
the old one's files. But the copy may hold writes that never reached any
snapshot: a task wrote after the last write-back, or while the rename ran.
Those are the user's only copy.

So the copy is first renamed, in one step, to
``$SYNCD_ROOT/.orphaned/<name>-<UTC time>[-N]/`` (same filesystem: atomic, no
bytes copied; a name no volume can have, since volume names start with a
letter or digit). The rename itself never replaces anything: a name already
taken by an earlier set-aside (same volume, same second) is skipped for the
next ``-N``. Then every path the local index shows unchanged since syncd last
wrote or committed it is removed: those bytes are in the bucket (in the renamed
volume) or were deleted on purpose. What stays is exactly what was never
committed: new files, modified files, symlinks and directories syncd did not
make. If nothing stays, the directory goes too; otherwise the agent logs a
warning naming it, and the user commits it anywhere with ``syncd put``.

A task may still be writing when this runs (a descriptor opened before the
rename keeps working on the moved file). So a file is removed only if, at that
moment, nobody has it open for writing: the agent takes a read lease on it
(``F_SETLEASE F_RDLCK``, refused with EAGAIN while any descriptor of the file is
open for writing, and holding off new writers until it is released), checks
its fingerprint again through that descriptor and unlinks it under the lease.
Where leases are not available (EACCES: a file of another uid and no
CAP_LEASE; EINVAL: the filesystem or ``fs.leases-enable``) the fingerprint
check alone decides. The lease's break signal is set to SIGURG, ignored by
default, so a writer arriving meanwhile waits for the release instead of
killing the agent with SIGIO. Directories are removed with ``rmdir`` only,
never recursively, so a file created in the moved tree after the walk (by a task
whose working directory is inside it) stops the removal and is kept.

The walk and the removals go through directory descriptors (scan.py,
dirfd.py), as everywhere the agent touches a directory tasks share: no symlink
planted in the copy is followed, and ``.orphaned`` itself must be a real
directory (a symlink there is refused: nothing is moved).

Order in the agent (service.py): set aside, then forget the index, then drop
the mount from the state file. An agent killed anywhere in between finds the
volume listed on restart, sees it gone and runs this again; if it died after
the rename, the copy is already aside with every file, committed ones too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import time
from pathlib import Path

from syncd.errors import LocalIOError
from syncd.local import dirfd
from syncd.local import fs as localfs
from syncd.local.index import LocalIndex, Tracked, unchanged
from syncd.local.scan import from_stat, scan_sync

ORPHANED = ".orphaned"


TAKEN = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR)   # rename(2) onto an existing non-empty dir or a file


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _orphaned_fd(root_fd: int, root: Path) -> int:
    """``.orphaned`` in the root, created 0700 if missing; a symlink or file there is refused."""
    try:
        return dirfd.make_dir_at(root_fd, ORPHANED, 0o700)[0]
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LocalIOError(f"cannot set a vanished volume's files aside: {root / ORPHANED} is a symlink or "
                               f"not a directory ({exc.strerror}); the local copy stays where it is") from exc
        raise localfs.local_error(root / ORPHANED, exc, "create") from exc


def _move_aside(root_fd: int, name: str, into_fd: int, where: Path) -> str:
    """Rename ``name`` into ``into_fd`` as ``<name>-<time>[-N]``, never onto anything already there."""
    base = f"{name}-{_stamp()}"
    for n in range(1, 10_000):
        candidate = base if n == 1 else f"{base}-{n}"
        try:
            os.rename(name, candidate, src_dir_fd=root_fd, dst_dir_fd=into_fd)
            return candidate
        except OSError as exc:
            if exc.errno in TAKEN:
                continue
            raise localfs.local_error(where / name, exc, "move aside") from exc
    raise LocalIOError(f"cannot set {where / name} aside: {where / ORPHANED} holds too many copies named {base}")


def set_aside(root: Path, name: str, index: LocalIndex) -> tuple[Path, list[str]] | None:
    """Move ``root/name`` aside and drop what the index shows committed.

    Returns ``(where, kept paths)`` when uncommitted paths remain, None when nothing did
    (or there was no local copy)."""
    try:
        root_fd = os.open(root, dirfd.DIR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise localfs.local_error(root, exc, "open") from exc
    try:
        try:
            if not stat.S_ISDIR(os.lstat(name, dir_fd=root_fd).st_mode):
                return None                           # gone, or something a task put there: not our copy
        except FileNotFoundError:
            return None
        into_fd = _orphaned_fd(root_fd, root)
        try:
            moved = _move_aside(root_fd, name, into_fd, root)
            dest = root / ORPHANED / moved
            if not stat.S_ISDIR(os.lstat(moved, dir_fd=into_fd).st_mode):
                return dest, ["."]                    # swapped for something else meanwhile: kept as it is
        finally:
            os.close(into_fd)
    finally:
        os.close(root_fd)
    leftovers: list[str] = []
    local = scan_sync(dest, leftovers)
    for path in leftovers:                        # our own temp files of an interrupted hydrate
        localfs.remove_at(dest, path, True)
    gone = {p for p, loc in local.items()
            if loc.kind != "dir" and p in index.files and unchanged(index.files[p], loc)
            and _remove_if_unused(dest, p, index.files[p])}
    for path in sorted((p for p, loc in local.items() if loc.kind == "dir"), key=lambda p: p.count("/"),
                       reverse=True):
        if path in index.files:
            _rmdir_if_empty(dest, path)
    kept = sorted(p for p, loc in local.items()
                  if p not in gone and (loc.kind != "dir" or p not in index.files))
    if not kept:
        try:
            os.rmdir(dest)
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise localfs.local_error(dest, exc, "remove") from exc
        kept = sorted(scan_sync(dest))             # something appeared after the walk: keep it
    return dest, kept


def _remove_if_unused(top: Path, rel: str, tracked: Tracked) -> bool:
    """Unlink ``rel`` if it still is what syncd left there and no one has it open for writing."""
    try:
        fd, last = dirfd.open_parent_fd(top, rel)
    except OSError:
        return False
    try:
        st = os.lstat(last, dir_fd=fd)
        if not stat.S_ISREG(st.st_mode):
            if not unchanged(tracked, from_stat(st, os.readlink(last, dir_fd=fd) if stat.S_ISLNK(st.st_mode)
                                                  else None)):
                return False
            os.unlink(last, dir_fd=fd)
            return True
        return _unlink_unused_file(fd, last, tracked)
    except OSError as exc:
        if exc.errno in dirfd.MOVED:
            return False
        raise localfs.local_error(top / rel, exc, "remove") from exc
    finally:
        os.close(fd)


def _unlink_unused_file(dir_fd: int, name: str, tracked: Tracked) -> bool:
    file_fd = os.open(name, dirfd.READ_FILE, dir_fd=dir_fd)
    leased = False
    try:
        try:
            fcntl.fcntl(file_fd, fcntl.F_SETSIG, signal.SIGURG)   # a lease break must not deliver SIGIO
            fcntl.fcntl(file_fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            leased = True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                return False                                # open for writing right now: in use, kept
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EINVAL):
                raise
        st = os.fstat(file_fd)
        if not unchanged(tracked, from_stat(st)):
            return False
        now = os.lstat(name, dir_fd=dir_fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False                                    # replaced meanwhile
        os.unlink(name, dir_fd=dir_fd)
        return True
    finally:
        if leased:
            fcntl.fcntl(file_fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        os.close(file_fd)


def _rmdir_if_empty(root: Path, rel: str) -> None:
    try:
        fd, last = dirfd.open_parent_fd(root, rel)
    except OSError:
        return
    try:
        os.rmdir(last, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            raise LocalIOError(f"cannot remove {root / rel}: {exc.strerror}") from exc
    finally:
        os.close(fd)
