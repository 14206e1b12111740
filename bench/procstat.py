"""What a process holds, from /proc: RSS, and its open descriptors by kind (for the soak's flatness check).

``fd_kinds(pid, listen_ports)`` sorts every descriptor of ``pid`` into one of

    file:<name>         a regular file, by its name (``cache.db-wal``, ``agent.log``); the
                        files of a cache's values by their suffix (``file:*.val``), numbered
                        files (a lazy mount's upper layer) as ``file:#``
    tcp-accepted        a TCP connection to one of ``listen_ports`` (a client of a server we run)
    tcp-listen          a listening TCP socket
    tcp-out:<port>      a TCP connection we opened, by the remote port (the store, a gateway)
    unix, pipe, anon:<what>, other

by reading ``/proc/<pid>/fd`` (readlink) and the socket tables ``/proc/<pid>/net/tcp{,6}``.
A descriptor that closes between the listing and the readlink is skipped.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path


def rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def threads(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _tcp_sockets(pid: int) -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state hex) for every TCP socket in pid's namespace."""
    out: dict[str, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            out[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return out


def fd_kinds(pid: int, listen_ports: frozenset[int] = frozenset()) -> collections.Counter[str] | None:
    """Descriptors of ``pid`` by kind (see the module docstring); None if the process is gone."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    tcp = _tcp_sockets(pid)
    kinds: collections.Counter[str] = collections.Counter()
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found = tcp.get(target[8:-1])
            if found is None:
                kinds["unix"] += 1
            elif found[2] == "0A":
                kinds["tcp-listen"] += 1
            elif found[0] in listen_ports:
                kinds["tcp-accepted"] += 1
            else:
                kinds[f"tcp-out:{found[1]}"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds["anon:" + target[11:].strip("[]")] += 1
        elif target.startswith("/"):
            base = os.path.basename(target)
            kinds["file:" + ("*.val" if base.endswith(".val") else "#" if base.isdigit() else base)] += 1
        else:
            kinds["other"] += 1
    return kinds
