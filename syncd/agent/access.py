"""Who may use the agent: its own uid, root, and the task uids and group an operator names.

The socket is the agent's only door: whoever is let in acts as the agent's
owner (docs/SECURITY.md). By default only the agent's uid (and root) gets in:
the socket is ``0600`` from its first instant and a directory the agent
creates for it is ``0700`` (api.py binds it under umask ``0177``).

The usual Kubernetes shape runs the agent as a privileged sidecar and the
tasks as another uid (1000, say). The operator names them:

* ``SYNCD_ALLOW_UIDS=1000,1001`` (numbers or user names) and/or
  ``SYNCD_ALLOW_GROUP=1000`` (a gid or group name);
* the socket is then chgrp'ed to the group and made ``0660`` when only a
  group is named, or ``0666`` when uids are (a file mode cannot name uids,
  so the peer check below is the gate); a directory the agent creates for
  the socket is ``0755``. All of it happens right after the bind under
  umask ``0177``, so the socket is never more open than this.
* Every request is checked against the connecting process's credentials as
  the kernel recorded them at ``connect()`` (``SO_PEERCRED``: uid and gid;
  ``SO_PEERGROUPS``: its supplementary groups): root, the agent's uid, an
  allowed uid, or a member of the allowed group get in; anyone else gets 403
  ``PermissionDenied`` naming their uid and the settings that would admit
  them, before any handler runs. A peer cannot lie about these: they are the
  kernel's, not the client's.

What the tasks are given on disk (mount directories, hydrated files, lazy
mounts) follows ``Config.file_owner``; see local/mountdir.py, local/fs.py
and mount/process.py.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from syncd.config import Config
from syncd.errors import ConfigError, PermissionDenied

log = logging.getLogger(__name__)
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)   # Linux >= 4.13; Python does not name it
_CRED = struct.Struct("iII")                            # struct ucred: pid, uid, gid
_SMALL_GROUPS = 64                                      # first try; the kernel says ERANGE if more


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def shared(config: Config) -> bool:
    """Whether tasks of uids other than the agent's may use it."""
    return bool(config.allow_uids) or config.allow_group is not None


def socket_mode(config: Config) -> int:
    if not shared(config):
        return 0o600
    return 0o666 if config.allow_uids else 0o660


def socket_dir_mode(config: Config) -> int:
    """The mode of a directory the agent creates to hold its socket."""
    return 0o755 if shared(config) else 0o700


def open_socket(path: os.PathLike[str], config: Config) -> None:
    """Give the bound socket its group and mode (see above). Blocking: run in a thread."""
    if config.allow_group is not None:
        try:
            os.chown(path, -1, config.allow_group, follow_symlinks=False)
        except OSError as exc:
            raise ConfigError(f"cannot give the socket {os.fspath(path)} to group {config.allow_group} "
                              f"(SYNCD_ALLOW_GROUP): {exc.strerror}") from exc
    os.chmod(path, socket_mode(config))


def peer_of(sock: socket.socket) -> Peer:
    """The credentials the kernel recorded for the process at the other end of ``sock``."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return Peer(pid, uid, gid)


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups (``SO_PEERGROUPS``); () where the kernel cannot say."""
    size = _SMALL_GROUPS
    for _ in range(2):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * size)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size == _SMALL_GROUPS:
                size = 65536   # NGROUPS_MAX
                continue
            return ()
        return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return ()


class Access:
    """The check every request on the socket passes (``middleware``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.uids = frozenset({0, os.geteuid(), *config.allow_uids})
        self.group = config.allow_group

    def allows(self, peer: Peer, sock: socket.socket | None = None) -> bool:
        if peer.uid in self.uids or (self.group is not None and peer.gid == self.group):
            return True
        return self.group is not None and sock is not None and self.group in peer_groups(sock)

    def refusal(self, peer: Peer) -> str:
        admitted = ", ".join(str(u) for u in sorted(self.uids))
        group = f" and members of group {self.group}" if self.group is not None else ""
        return (f"uid {peer.uid} (gid {peer.gid}) may not use this agent: it serves uids {admitted}{group}; "
                "the operator can admit tasks of other uids with SYNCD_ALLOW_UIDS or SYNCD_ALLOW_GROUP "
                "(docs/AGENT.md)")

    def check(self, request: web.Request) -> None:
        transport = request.transport
        raw = transport.get_extra_info("socket") if transport is not None else None
        if raw is None or raw.family != socket.AF_UNIX:
            raise PermissionDenied("the agent's API answers only on its Unix socket")
        peer = peer_of(raw)
        if not self.allows(peer, raw):
            log.warning("refused a request from pid %d: %s", peer.pid, self.refusal(peer))
            raise PermissionDenied(self.refusal(peer))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(access: Access) -> Middleware:
    @web.middleware
    async def checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        access.check(request)
        return await handler(request)
    return checked
