"""Single flight across processes: one download per large file for every hydrate on a worker.

``ChunkFetcher``'s single flight (limits.SingleFlight) joins readers inside one
process. Several processes on one worker (six ``syncd hydrate`` of one volume
at once, or a CLI next to the agent) share the chunk cache directory but not
that table, so each would download the file. Here the shared directory holds a
lock file per large file (``<cache>/flights/<key>.lock``, ``key`` a hash of
the file's chunk ids): a hydrate takes the lock (``flock``, exclusive) before
it looks for the file's chunks in the cache, and keeps it while it downloads
and until the cache references the published file. The next process takes the
lock after it, finds every chunk referenced, lets go at once and copies the
file locally (localcopy.py), so six readers cost one download and five
copies, and the copies run side by side.

``flock`` locks belong to an open file description, so two hydrates in one
process exclude each other the same way, and a process that dies releases its
locks with its descriptors: a waiter never waits for a dead holder. The
blocking ``flock`` runs in a thread of its own pool (waiting there must never
take the default pool's threads, which the lock holder's own file steps need:
two processes each holding one lock and waiting for the other's would stall
each other); a waiter that is cancelled leaves
that thread to finish and close the descriptor the moment the lock comes.
Lock files are tiny and never removed (removing one while another process
holds or opens it would let two processes in at once); ``cache check``-style
clean-up of a cache directory removes the directory as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)
WAITERS = 64   # threads that may sit in flock at once: their own pool, never the default one
_waiters: ThreadPoolExecutor | None = None


def key(chunk_ids: Iterable[str]) -> str:
    return hashlib.blake2b("\n".join(chunk_ids).encode(), digest_size=16).hexdigest()


def _acquire(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)   # closing drops the flock


@contextlib.asynccontextmanager
async def exclusive(directory: Path, name: str) -> AsyncIterator[bool]:
    """Hold ``<directory>/flights/<name>.lock``; yields False (and holds nothing) when the lock
    cannot be made (a read-only cache): the caller goes on alone, as without the lock."""
    global _waiters
    if _waiters is None:
        _waiters = ThreadPoolExecutor(WAITERS, thread_name_prefix="syncd-flight")
    task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
        _waiters, _acquire, directory / "flights" / f"{name}.lock"))
    try:
        fd = await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda t: None if t.cancelled() or t.exception() else _release(t.result()))
        raise
    except OSError as exc:
        log.info("no cross-process lock for %s: %s", name, exc)
        yield False
        return
    try:
        yield True
    finally:
        _release(fd)
