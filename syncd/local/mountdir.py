"""The agent's directories: ``SYNCD_ROOT`` and one mount directory per volume in it.

Scans and hydrates name a mount directory by its path (``SYNCD_ROOT/<name>``)
and work below it through directory descriptors (dirfd.py). Naming it by path
is safe only if nobody but the agent can replace it, so before a volume is
mounted the agent checks, and creates where missing:

* ``SYNCD_ROOT`` is a real directory (opened ``O_NOFOLLOW``, not a symlink),
  belongs to the agent's uid and is not writable by group or others
  (otherwise ConfigError: a task could swap a mount directory for a link);
* ``SYNCD_ROOT/<name>`` is opened ``O_NOFOLLOW | O_DIRECTORY`` relative to
  it: a symlink planted there (``vol -> /etc``) is a LocalConflict, never
  followed, and so is a directory of another uid than the agent's or the
  tasks' (below).

Directories the agent creates get mode 0755 explicitly: under a umask of 0,
``mkdir`` once made SYNCD_ROOT 0777. A mount directory that already exists
keeps its mode (an operator may open it to tasks of other uids). When the
agent serves tasks of another uid (``SYNCD_ALLOW_UIDS``/``SYNCD_ALLOW_GROUP``,
``Config.file_owner``), the mount directory is given to them with ``fchown``
on the descriptor opened above (never by path): owned by the first allowed
uid, group-writable (0775) when a group is named. SYNCD_ROOT stays the
agent's, so a task still cannot replace its mount directory. Stale
``.syncd-tmp-*`` files of a crashed hydrate are removed (fs.cleanup_tmp_files).
All of it is blocking: call it in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from syncd.errors import ConfigError, LocalConflict
from syncd.local import dirfd
from syncd.local import fs as localfs

PRIVATE_DIR = 0o755   # what the agent gives SYNCD_ROOT and mount directories it creates, whatever its umask
GROUP_DIR = 0o775     # a mount directory shared with a group of task uids (SYNCD_ALLOW_GROUP)


def prepare_mount(root: Path, name: str, owner: localfs.Owner = None, mode: int = PRIVATE_DIR) -> None:
    """Create or check ``SYNCD_ROOT`` and ``SYNCD_ROOT/<name>`` (see above); drop stale temp files.

    ``owner``/``mode``: give the mount directory to the tasks' (uid, gid) with this mode."""
    root_fd = open_syncd_root(root)
    try:
        try:
            fd, created = dirfd.make_dir_at(root_fd, name, PRIVATE_DIR)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LocalConflict(f"mount directory {root / name} is a symlink or not a directory; the agent "
                                    "does not follow it (move it away and mount again)", [name]) from exc
            raise localfs.local_error(root / name, exc, "create") from exc
        with dirfd.closing(fd):
            st = os.fstat(fd)
            if not created and st.st_uid not in (os.geteuid(), *(owner[:1] if owner else ())):
                raise LocalConflict(f"mount directory {root / name} belongs to uid {st.st_uid}, not to the "
                                    f"agent's uid {os.geteuid()}" + (f" or the tasks' {owner[0]}" if owner else ""),
                                    [name])
            if owner is not None and (st.st_uid, st.st_gid) != owner:
                try:
                    os.fchown(fd, *owner)
                except OSError as exc:
                    raise ConfigError(f"cannot give mount directory {root / name} to uid {owner[0]}, gid "
                                      f"{owner[1]} ({exc.strerror}): SYNCD_ALLOW_UIDS and SYNCD_ALLOW_GROUP "
                                      "need an agent that may chown (root, or CAP_CHOWN)") from exc
                os.fchmod(fd, mode)
            elif created:
                os.fchmod(fd, mode)
    finally:
        os.close(root_fd)
    localfs.cleanup_tmp_files(root / name)


def open_syncd_root(root: Path) -> int:
    """A descriptor of SYNCD_ROOT, created (with missing parents) 0755 if needed; ConfigError unless private."""
    missing = [p for p in (root, *root.parents) if not os.path.lexists(p)]
    for path in reversed(missing):
        try:
            os.mkdir(path, PRIVATE_DIR)
            os.chmod(path, PRIVATE_DIR)
        except FileExistsError:
            pass
        except OSError as exc:
            raise localfs.local_error(path, exc, "create") from exc
    try:
        fd = os.open(root, dirfd.CHILD_DIR)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ConfigError(f"SYNCD_ROOT {root} is a symlink or not a directory: point it at the real "
                              "directory") from exc
        raise localfs.local_error(root, exc, "open") from exc
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise ConfigError(f"SYNCD_ROOT {root} (mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}) must belong to "
                          f"the agent's uid {os.geteuid()} and not be writable by group or others, or a task "
                          "could replace a mount directory in it")
    return fd
