"""Warm hydrates at the copy limit: place chunks from a file this worker already holds.

In ``ref`` cache mode (cache.py) the chunk cache remembers where each chunk of
a large file sits in a file an earlier hydrate published. Reading those bytes
into Python and writing them out again costs two user-space copies per byte;
``cp`` costs none, because ``copy_file_range`` lets the kernel copy page-cache
pages (and on XFS, btrfs or NFS 4.2 the same call shares the blocks: a reflink).
So :func:`place` copies each located chunk with ``copy_file_range`` from its
source file into the hydrate's private temporary file. When the source's
``fstat`` equals the fingerprint recorded when its bytes were verified, both
before and after the copy (stamp.py: the trust model), the copy is taken as
it is: no byte passes through user space, as with ``cp``. Otherwise the copy
is verified by hashing the *destination* through a read-only ``mmap`` (no copy
into Python): hashing the source first and copying after would let an edit of
the source between the two slip into the new file unverified. A chunk whose
copy does not hash to its id (the source was changed or truncated since) is
left for the caller to fetch, and reported so that the stale cache entry is
dropped. Sources are opened ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO put in their
place cannot block us); a path that leads elsewhere leads to another inode,
which no fingerprint matches, so its bytes are hashed like any other.

Everything here blocks; hydrate runs it in a worker thread, one call per file.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from syncd.data import stamp
from syncd.data.stamp import Fingerprint
from syncd.format.chunking import hasher

_PAGE = mmap.ALLOCATIONGRANULARITY
_SOURCE = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


@dataclass(frozen=True, slots=True)
class Copy:
    """Chunk ``id`` of ``size`` bytes: from ``source`` at ``src_offset`` to ``dst_offset``."""

    id: str
    size: int
    source: str
    src_offset: int
    dst_offset: int
    fingerprint: Fingerprint | None = None   # the source's stat when its bytes were verified


@dataclass
class Placed:
    ids: set[str]       # chunks now in place
    stale: set[str]     # chunks whose source no longer holds them (drop the cache entry)
    trusted: int = 0    # of ``ids``, copies taken on the source's fingerprint, not hashed


def place(dst_fd: int, copies: Sequence[Copy]) -> Placed:
    """Copy each chunk into ``dst_fd``, trusted by fingerprint or verified by hashing the copy."""
    out = Placed(set(), set())
    reader = -1
    try:
        for item in copies:
            copied = _copy(item, dst_fd)
            if copied == "trusted":
                out.ids.add(item.id)
                out.trusted += 1
                continue
            if copied == "copied":
                if reader < 0:
                    reader = os.open(f"/proc/self/fd/{dst_fd}", os.O_RDONLY | os.O_CLOEXEC)
                if _hash_range(reader, item.dst_offset, item.size) == item.id:
                    out.ids.add(item.id)
                    continue
            out.stale.add(item.id)
    finally:
        if reader >= 0:
            os.close(reader)
    return out


def _copy(item: Copy, dst_fd: int) -> str:
    """``"trusted"`` (copied, the source's fingerprint held throughout), ``"copied"`` (to be
    verified) or ``"failed"``."""
    try:
        src = os.open(item.source, _SOURCE)
    except OSError:
        return "failed"
    try:
        before = stamp.holds(src, item.fingerprint)
        done = 0
        while done < item.size:
            n = _copy_some(src, dst_fd, item.src_offset + done, item.dst_offset + done, item.size - done)
            if n <= 0:
                return "failed"   # the source is shorter than the chunk: it changed
            done += n
        return "trusted" if before and stamp.holds(src, item.fingerprint) else "copied"
    except OSError:
        return "failed"
    finally:
        os.close(src)


def _copy_some(src: int, dst: int, src_off: int, dst_off: int, count: int) -> int:
    try:
        return os.copy_file_range(src, dst, count, src_off, dst_off)
    except OSError as exc:  # EXDEV on old kernels, ENOSYS, EINVAL on some file systems
        if exc.errno not in (18, 38, 22, 95):
            raise
    data = os.pread(src, min(count, 8 << 20), src_off)
    return os.pwrite(dst, data, dst_off) if data else 0


def _hash_range(fd: int, offset: int, size: int) -> str:
    digest = hasher()
    if size == 0:
        return str(digest.hexdigest())
    start = offset - offset % _PAGE
    with mmap.mmap(fd, size + offset - start, mmap.MAP_SHARED, mmap.PROT_READ, offset=start) as view:
        with memoryview(view) as mv:
            digest.update(mv[offset - start:])
    return str(digest.hexdigest())
