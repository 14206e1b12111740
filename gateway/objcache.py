"""The gateway's disk cache: verified objects, handed out as open files.

One diskcache ``Cache`` (SQLite index, LRU, size-bounded) holds every owner's
immutable objects under keys ``<owner>:<family>:<content id>``; the owner in
the key keeps one owner from planting bytes another owner's workers would be
served (ids are xxh3: they detect corruption, they are not collision-resistant),
and the family keeps a ``snapshots/<id>`` request from being answered with a
chunk that happens to be cached under that id.

Why files: diskcache keeps a value of 32 KiB or more as a file of its own,
and ``get(key, read=True)`` opens that file instead of reading it. A hit is
then served from the open file with ``sendfile`` (gateway/send.py): the bytes
go from the page cache to the socket and never through a Python buffer. That
is the difference between a gateway slower than going to the store directly
and one faster than it (docs/GATEWAY.md, bench/fanout.py).

Never serve what was not verified: before an open file is handed out it is
hashed whole through ``mmap`` (xxh3 of a file in the page cache runs at
memory speed, ~1 ms per 8 MiB, and copies nothing) and compared with its id;
the same file descriptor is then the one ``sendfile`` reads, so what goes out
is what was hashed even if the entry is evicted meanwhile (an unlinked file
stays readable through its descriptor). A mismatch evicts the entry, counts it
and is a miss: the object is fetched again. Small objects (below diskcache's
file threshold: HEAD-sized snapshots, tiny packs) live in SQLite and come back
as verified bytes.

Misses are spooled (gateway/flight.py): the leader writes the arriving object
to a file under ``<cache dir>/spool/``, and once it has verified, ``put_file``
*moves* that file into diskcache (a ``Disk`` whose ``store`` renames a
:class:`Spooled` value into place instead of copying it), so an object is
written to disk once on its way in. Spool files left by a gateway that died
are removed when the cache is opened.

Best-effort like every syncd cache: a diskcache or disk error is a logged
miss on read and a logged no-op on write. Every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import diskcache

from syncd.format.chunking import hasher, verify

log = logging.getLogger(__name__)


@dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    errors: int = 0


@dataclass
class Hit:
    """A verified cache entry: an open file (served with sendfile) or, for small ones, bytes."""

    size: int
    file: BinaryIO | None = None
    data: bytes | None = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass(frozen=True)
class Spooled:
    """A verified object already in a file on the cache's file system: moved in, not copied."""

    path: Path
    size: int


class _Disk(diskcache.Disk):  # type: ignore[misc]  # diskcache has no type hints
    """diskcache's Disk, plus: a :class:`Spooled` value is renamed into the cache's files."""

    def store(self, value: object, read: bool, key: object = diskcache.core.UNKNOWN) -> tuple[object, ...]:
        if isinstance(value, Spooled):
            filename, full_path = self.filename(key, value)
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            os.rename(value.path, full_path)
            return value.size, diskcache.core.MODE_BINARY, filename, None
        stored: tuple[object, ...] = super().store(value, read, key)
        return stored


HASH_WINDOW = 8 << 20  # a cached file is hashed through mmap windows of this size


def _file_matches(object_id: str, file: BinaryIO) -> tuple[bool, int]:
    """Hash a cached file through mmap windows: no copy, and at most HASH_WINDOW of it mapped
    at a time (a whole mapping of a 256 MiB tree would count 256 MiB against the gateway's RSS)."""
    size = os.fstat(file.fileno()).st_size
    if size <= HASH_WINDOW:
        if size == 0:
            return verify(object_id, b""), 0
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
            return verify(object_id, view), size
    digest = hasher()
    for offset in range(0, size, HASH_WINDOW):
        length = min(HASH_WINDOW, size - offset)
        with (mmap.mmap(file.fileno(), length, access=mmap.ACCESS_READ, offset=offset) as mapped,
              memoryview(mapped) as view):
            digest.update(view)
    return digest.hexdigest() == object_id, size


class ObjectCache:
    def __init__(self, directory: Path, size_limit: int, on_corrupt: Callable[[], object] = lambda: None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._on_corrupt = on_corrupt  # called (in the worker thread) for each entry that failed verification
        self.directory = directory
        self.spool_dir = directory / "spool"  # flights in progress (not a diskcache folder: those are hex)
        shutil.rmtree(self.spool_dir, ignore_errors=True)  # left by a gateway that died mid-flight
        self.counts = CacheCounts()
        self._cache = diskcache.Cache(str(directory), size_limit=size_limit, disk=_Disk,
                                      eviction_policy="least-recently-used", cull_limit=64, sqlite_timeout=60)

    @staticmethod
    def _key(owner: str, family: str, object_id: str) -> str:
        return f"{owner}:{family}:{object_id}"

    def _open(self, owner: str, family: str, object_id: str) -> Hit | None:
        key = self._key(owner, family, object_id)
        try:
            value = self._cache.get(key, read=True)
        except Exception as exc:
            self.counts.errors += 1
            log.warning("gateway cache read failed for %s: %s", key, exc)
            return None
        if value is None:
            self.counts.misses += 1
            return None
        hit: Hit | None = None
        try:
            if isinstance(value, bytes):
                hit = Hit(len(value), data=value) if verify(object_id, value) else None
            elif hasattr(value, "fileno"):
                ok, size = _file_matches(object_id, value)
                hit = Hit(size, file=value) if ok else None
        except (OSError, ValueError) as exc:
            log.warning("gateway cache entry %s unreadable: %s", key, exc)
        if hit is None:
            if hasattr(value, "close"):
                value.close()
            self.counts.corrupt += 1
            self._on_corrupt()
            log.warning("gateway cache entry %s failed verification; evicting it", key)
            self._evict(key)
            return None
        self.counts.hits += 1
        return hit

    def _evict(self, key: str) -> None:
        try:
            self._cache.delete(key)
        except Exception as exc:
            log.warning("could not evict %s from the gateway cache: %s", key, exc)

    def _put(self, owner: str, family: str, object_id: str, data: bytes) -> bool:
        try:
            self._cache.set(self._key(owner, family, object_id), data)
        except Exception as exc:
            self.counts.errors += 1
            log.warning("gateway cache write failed for %s: %s", object_id, exc)
            return False
        return True

    def _put_file(self, owner: str, family: str, object_id: str, spooled: Spooled) -> bool:
        try:
            self._cache.set(self._key(owner, family, object_id), spooled)
        except Exception as exc:
            self.counts.errors += 1
            log.warning("gateway cache write failed for %s: %s", object_id, exc)
            return False
        return True

    def _contains(self, owner: str, family: str, ids: list[str]) -> set[str]:
        try:
            return {i for i in ids if self._key(owner, family, i) in self._cache}
        except Exception:
            return set()

    async def open(self, owner: str, family: str, object_id: str) -> Hit | None:
        """A verified hit (the caller closes it), or None."""
        return await asyncio.to_thread(self._open, owner, family, object_id)

    async def put(self, owner: str, family: str, object_id: str, data: bytes) -> bool:
        """Keep a verified object's bytes; False (logged, counted) when the cache could not."""
        return await asyncio.to_thread(self._put, owner, family, object_id, data)

    async def put_file(self, owner: str, family: str, object_id: str, path: Path, size: int) -> bool:
        """Move a verified object's file into the cache; False (the file left where it was) on error."""
        return await asyncio.to_thread(self._put_file, owner, family, object_id, Spooled(path, size))

    async def contains(self, owner: str, family: str, ids: list[str]) -> set[str]:
        return await asyncio.to_thread(self._contains, owner, family, ids)

    def open_now(self, owner: str, family: str, object_id: str) -> Hit | None:
        """:meth:`open` for a caller already in a worker thread (gateway/trees.py batches lookups)."""
        return self._open(owner, family, object_id)

    def close(self) -> None:
        self._cache.close()
