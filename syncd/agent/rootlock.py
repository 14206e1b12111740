"""One agent per ``SYNCD_ROOT``: an exclusive ``flock`` on ``<root>/.agent.lock``.

Two agents on one root (each with its own socket and state directory) would
each believe it owns every volume directory there: the second rewrites files
the first hydrated, and the first then commits that as a write of its own. So
the agent takes an exclusive, non-blocking ``flock`` on a file in the root
before it serves anything, and holds it (one open descriptor) for its life.
The kernel drops the lock when the process dies, ``kill -9`` included, so a
restarted agent never finds a stale lock; the file only says who held it last
(its pid) for the error message.

The root is created as the agent creates it (private, whatever the umask) and
shared with task code, so the file is opened relative to the
root's descriptor with ``O_NOFOLLOW`` (a planted symlink is refused, not
followed) and created 0600.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from syncd.errors import ConfigError, LocalIOError
from syncd.local.mountdir import open_syncd_root

LOCK_NAME = ".agent.lock"


class RootLock:
    """Held while open; :meth:`release` (or process exit) gives it back."""

    def __init__(self, root: Path, fd: int) -> None:
        self.root, self._fd = root, fd

    @classmethod
    def acquire(cls, root: Path) -> RootLock:
        root_fd = open_syncd_root(root)   # created private (0755 whatever the umask), or refused if it is not
        try:
            fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=root_fd)
        except OSError as exc:
            raise LocalIOError(f"cannot open the agent lock {root / LOCK_NAME}: {exc.strerror}") from exc
        finally:
            os.close(root_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"another agent{f' (pid {holder})' if holder else ''} already holds SYNCD_ROOT "
                                  f"{root} (lock {root / LOCK_NAME}); stop it, or give this agent its own "
                                  "SYNCD_ROOT") from exc
            raise LocalIOError(f"cannot lock {root / LOCK_NAME}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(root, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
