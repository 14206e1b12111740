"""Warm hydrates at the copy limit: place chunks from a file this worker already holds.

In ``ref`` cache mode (cache.py) the chunk cache remembers where each chunk of
a large file sits in a file an earlier hydrate published. Reading those bytes
into Python and writing them out again costs two user-space copies per byte;
``cp`` costs none, because ``copy_file_range`` lets the kernel copy page-cache
pages (and on XFS, btrfs or NFS 4.2 the same call shares the blocks: a reflink).
So :func:`place` copies the located chunks with ``copy_file_range`` from their
source file into the hydrate's private temporary file, a run of chunks that lie
back to back in both with one call (a whole file, usually, as ``cp``). When the source's
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
_ADVISE_FROM = 64 << 20   # runs larger than this are read with POSIX_FADV_SEQUENTIAL (as cp)


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
    """Copy each chunk into ``dst_fd``, trusted by fingerprint or verified by hashing the copy.

    Chunks that lie back to back in one source and in the destination (a whole file copied
    from the file an earlier hydrate published: the common warm case) are copied as one run:
    one ``open``, one ``fstat`` before and after, and one ``copy_file_range`` for all of them,
    as ``cp`` does (per-chunk calls measured no faster and cost a Python round per 8 MiB)."""
    out = Placed(set(), set())
    reader = -1
    try:
        for run in _runs(copies):
            copied, done = _copy(run, dst_fd)
            for item in run:
                whole = item.dst_offset + item.size <= run[0].dst_offset + done
                if whole and copied == "trusted":
                    out.ids.add(item.id)
                    out.trusted += 1
                    continue
                if whole:
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


def _runs(copies: Sequence[Copy]) -> list[list[Copy]]:
    """``copies`` in runs that one ``copy_file_range`` can take: the same source and fingerprint,
    each chunk starting where the previous one ended, in the source and in the destination."""
    runs: list[list[Copy]] = []
    for item in copies:
        last = runs[-1][-1] if runs else None
        if last is not None and item.source == last.source and item.fingerprint == last.fingerprint \
                and item.src_offset == last.src_offset + last.size and item.dst_offset == last.dst_offset + last.size:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _copy(run: list[Copy], dst_fd: int) -> tuple[str, int]:
    """Copy ``run``'s bytes; ``("trusted", n)`` (the source's fingerprint held throughout) or
    ``("copied", n)`` (to be verified), with ``n`` the bytes copied (fewer than the run's when the
    source is shorter than it: changed since)."""
    first = run[0]
    size = run[-1].src_offset + run[-1].size - first.src_offset
    try:
        src = os.open(first.source, _SOURCE)
    except OSError:
        return "copied", 0
    done = 0
    try:
        before = stamp.holds(src, first.fingerprint)
        if size > _ADVISE_FROM:
            os.posix_fadvise(src, first.src_offset, size, os.POSIX_FADV_SEQUENTIAL)
        while done < size:
            n = _copy_some(src, dst_fd, first.src_offset + done, first.dst_offset + done, size - done)
            if n <= 0:
                break   # the source is shorter than the chunks: it changed
            done += n
        return ("trusted" if before and done == size and stamp.holds(src, first.fingerprint) else "copied"), done
    except OSError:
        return "copied", done
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
