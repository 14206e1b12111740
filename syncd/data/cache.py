"""The local chunk cache: content-addressed, size-bounded, verified, best-effort.

Chunks are stored in a diskcache ``Cache`` (SQLite index plus one file per large
value) under ``SYNCD_CACHE_DIR``, keyed ``<owner>:<chunk id>``. diskcache is
safe for several processes on one worker and evicts least-recently-used
entries past ``SYNCD_CACHE_SIZE``. Keys carry the owner so that one owner can
never plant bytes that another owner's hydrate would trust: ids are xxh3, which
detects corruption but is not collision-resistant against an adversary.

The cache only ever makes things faster (mountpoint-s3's rule): every read is
re-hashed, a bad entry is evicted and reported as a miss, and any error from
diskcache or the disk is logged and treated as a miss (on read) or ignored (on
write). All diskcache calls run in worker threads, never on the event loop.

Two kinds of entry (``SYNCD_CACHE_LARGE`` chooses for chunks a hydrate writes):

* bytes: the chunk itself (what the lazy mount and the gateway fetch, trees;
  what a hydrate fetches with ``copy``). Writes of many entries share one
  SQLite transaction (cachedb.py).
* references (``ref``, the default for what a hydrate writes): ``(path, offset, size,
  fingerprint)`` of the chunk inside a file a hydrate published, large or small
  (a small file's one chunk is the whole file; one below 16 KiB is not cached,
  hydrate.REF_MIN). A cold hydrate then writes the
  bytes to disk once, not twice (the measured cost of the copy was about as much
  as the download for a large file, docs/BENCHMARKS.md; a cold hydrate of
  100,000 small files spent 30% of its samples caching their bytes, SCALE.md), and the next hydrate
  on this worker still reads them locally. A reference is read with ``pread``
  and verified like any entry: if the file was changed or removed since, it is
  a quiet miss (counted as ``stale``) and the chunk is fetched again. The
  fingerprint is the file's stat when its bytes were verified (stamp.py): while
  ``fstat`` still shows it, before and after the read, the bytes are served
  without hashing them again (counted as ``trusted``); a reference without one
  (racy, or written by an older syncd) is hashed on every use.
  ``locate`` hands references to hydrate unread, which copies the range in the
  kernel and checks the copy the same way (localcopy.py); ``drop`` forgets the
  stale ones. Both take a whole file's chunks at once: one SQLite transaction
  and one ``SELECT`` per 500 ids (cachedb.py), not one ``get`` per chunk; so do ``get_many`` and
  every write of many entries. ``scrub`` hashes every entry again, fingerprints or not: the
  check for damage below the file system (``syncd cache check``).

Opening: importing diskcache and opening its SQLite index cost a command ~40 ms
(more for a new directory), so the handle is made on first use, in whichever
worker thread needs it first, or ahead of time by :meth:`ChunkCache.open_soon`
(a worker thread started while the caller waits for its first requests). A
failure to open is, like every other cache error, a miss, tried again on the
next use.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd.data import cachedb, stamp
from syncd.data.stamp import Fingerprint
from syncd.format.chunking import verify

if TYPE_CHECKING:
    import diskcache

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    errors: int = 0
    stale: int = 0
    trusted: int = 0      # references served on their fingerprint, without hashing
    bytes_read: int = 0


REF = "syncd-ref"  # marker of a reference entry: (REF, path, offset, size[, fingerprint])
READ_REF = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO put there cannot block us


@dataclass(frozen=True, slots=True)
class Located:
    """Where a chunk sits in a published file, and that file's fingerprint when it was verified."""

    path: str
    offset: int
    size: int
    fingerprint: Fingerprint | None


@dataclass
class ScrubResult:
    checked: int = 0
    references: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)   # ids whose entry did not hash to them (forgotten)


def _as_ref(value: object) -> Located | None:
    if not (isinstance(value, tuple) and len(value) in (4, 5) and value[0] == REF):
        return None
    fp = value[4] if len(value) == 5 else None
    fingerprint = tuple(int(x) for x in fp) if isinstance(fp, (tuple, list)) and len(fp) == 5 else None
    return Located(str(value[1]), int(value[2]), int(value[3]), fingerprint)  # type: ignore[arg-type]


def usage(cache: diskcache.Cache) -> tuple[int, int]:
    """(bytes on disk, entries) of a diskcache: O(1), from its own counters, but blocking SQLite
    reads (call it in a thread); (0, 0) when it cannot tell (a status page must not fail on it)."""
    try:
        return int(cache.volume()), len(cache)
    except Exception as exc:
        log.warning("cannot read the size of the cache in %s: %s", cache.directory, exc)
        return 0, 0


class _Opener:
    """The diskcache handle of one directory, opened once on first use (shared by ``for_owner`` views)."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        self.directory, self.size_limit = directory, size_limit
        self.cache: diskcache.Cache | None = None
        self.closed = False
        self._lock = threading.Lock()

    def get(self) -> diskcache.Cache:
        """The open handle (blocking: diskcache's import and SQLite); raises what opening raised."""
        cache = self.cache
        if cache is not None:
            return cache
        with self._lock:
            if self.cache is None:
                if self.closed:
                    raise RuntimeError("the chunk cache is closed")
                import diskcache
                self.cache = diskcache.Cache(
                    str(self.directory), size_limit=self.size_limit, eviction_policy="least-recently-used",
                    cull_limit=64, sqlite_timeout=60)
            return self.cache

    def warm(self) -> None:
        try:
            self.get()
        except Exception as exc:   # the first real use reports it (as a miss)
            log.info("cannot open the chunk cache in %s yet: %s", self.directory, exc)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            if self.cache is not None:
                self.cache.close()


class ChunkCache:
    def __init__(self, directory: Path, size_limit: int, owner: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.owner = owner
        self.stats = CacheStats()
        self._opener = _Opener(directory, size_limit)
        self._warming: Any = None

    @property
    def _cache(self) -> diskcache.Cache:
        return self._opener.get()

    def open_soon(self) -> None:
        """Open the handle in a worker thread now (call it from the event loop before the first
        requests: the opening then overlaps with their round trips)."""
        if self._opener.cache is None and self._warming is None:
            self._warming = asyncio.get_running_loop().run_in_executor(None, self._opener.warm)

    def for_owner(self, owner: str) -> ChunkCache:
        """The same disk cache (one handle, one size bound) seen through ``owner``'s keys.

        For a process serving many owners (the gateway): opening a diskcache per
        owner costs file descriptors per owner name a client can make up.
        """
        view = copy.copy(self)
        view.owner, view.stats = owner, CacheStats()
        return view

    def _key(self, chunk_id: str) -> str:
        return f"{self.owner}:{chunk_id}"

    def _get_one(self, chunk_id: str) -> bytes | None:
        try:
            value = self._cache.get(self._key(chunk_id))
        except Exception as exc:
            self.stats.errors += 1
            log.warning("chunk cache read failed for %s: %s", chunk_id, exc)
            return None
        return self._resolve(chunk_id, value)

    def _get_batch(self, ids: list[str]) -> dict[str, bytes]:
        """``_get_one`` for many ids: one SELECT per ``cachedb.BATCH`` of them (cachedb.py)."""
        try:
            values = cachedb.get_many(self._cache, [self._key(i) for i in ids])
        except Exception as exc:
            self.stats.errors += 1
            log.warning("chunk cache read failed for %d chunks: %s", len(ids), exc)
            return {}
        found = {}
        for chunk_id in ids:
            data = self._resolve(chunk_id, values.get(self._key(chunk_id)))
            if data is not None:
                found[chunk_id] = data
        return found

    def _resolve(self, chunk_id: str, value: object) -> bytes | None:
        """The verified bytes of an entry (read through a reference), or None: a miss (a bad
        entry is evicted)."""
        if value is None:
            self.stats.misses += 1
            return None
        ref = _as_ref(value)
        if ref is not None:
            value = self._read_ref(chunk_id, ref)
            if value is None:
                return None
        elif not isinstance(value, bytes) or not verify(chunk_id, value):
            self.stats.corrupt += 1
            log.warning("chunk cache entry %s is corrupt; evicting it", chunk_id)
            self._evict(chunk_id)
            return None
        assert isinstance(value, bytes)
        self.stats.hits += 1
        self.stats.bytes_read += len(value)
        return value

    def _read_ref(self, chunk_id: str, ref: Located, trust: bool = True) -> bytes | None:
        data, trusted = b"", False
        try:
            fd = os.open(ref.path, READ_REF)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                trusted = trust and stamp.holds(fd, ref.fingerprint)
                data = os.pread(fd, ref.size, ref.offset)
                trusted = trusted and stamp.holds(fd, ref.fingerprint)   # unchanged while we read
            except OSError:
                data = b""
            finally:
                os.close(fd)
        if len(data) == ref.size and trusted:
            self.stats.trusted += 1
            return data
        if len(data) == ref.size and verify(chunk_id, data):
            return data
        self.stats.stale += 1
        self.stats.misses += 1
        self._evict(chunk_id)
        return None

    def _evict(self, chunk_id: str) -> None:
        try:
            self._cache.delete(self._key(chunk_id))
        except Exception as exc:
            log.warning("could not evict %s from the chunk cache: %s", chunk_id, exc)

    def _evict_many(self, ids: list[str]) -> None:
        try:
            with self._cache.transact():   # one SQLite transaction for all of them
                for chunk_id in ids:
                    self._cache.delete(self._key(chunk_id))
        except Exception as exc:
            log.warning("could not evict %d entries from the chunk cache: %s", len(ids), exc)

    def _put_many(self, items: Mapping[str, bytes | tuple[object, ...]]) -> None:
        try:   # one SQLite transaction and a few statements per 500 entries, not a set() each
            cachedb.set_many(self._cache, {self._key(chunk_id): value if isinstance(value, tuple) else bytes(value)
                                           for chunk_id, value in items.items()})
        except Exception as exc:
            self.stats.errors += 1
            log.warning("chunk cache write failed for %d chunks: %s", len(items), exc)

    def _contains(self, ids: Iterable[str]) -> set[str]:
        try:
            return {i for i in ids if self._key(i) in self._cache}
        except Exception:
            return set()

    async def get(self, chunk_id: str) -> bytes | None:
        return await asyncio.to_thread(self._get_one, chunk_id)

    async def get_many(self, ids: Iterable[str]) -> dict[str, bytes]:
        ids = list(ids)
        return await asyncio.to_thread(self._get_batch, ids) if ids else {}

    async def put(self, chunk_id: str, data: bytes) -> None:
        await asyncio.to_thread(self._put_many, {chunk_id: data})

    async def put_many(self, items: Mapping[str, bytes]) -> None:
        if items:
            await asyncio.to_thread(self._put_many, items)

    async def put_refs(self, path: Path, fingerprint: Fingerprint | None,
                       refs: Mapping[str, tuple[int, int]]) -> None:
        """Record where verified chunks sit in the published file ``path``: ``id -> (offset, size)``,
        with the file's fingerprint taken when it was published (None: hash on every use)."""
        await self.put_located({i: Located(str(path), offset, size, fingerprint) for i, (offset, size) in refs.items()})

    async def put_located(self, refs: Mapping[str, Located]) -> None:
        """``put_refs`` for chunks of many files at once (one transaction): ``id -> where it sits``."""
        if refs:
            items = {i: (REF, at.path, at.offset, at.size, at.fingerprint) for i, at in refs.items()}
            await asyncio.to_thread(self._put_many, items)

    def _locate(self, ids: list[str]) -> dict[str, Located]:
        found: dict[str, Located] = {}
        try:
            values = cachedb.get_many(self._cache, [self._key(i) for i in ids])
        except Exception as exc:
            self.stats.errors += 1
            log.warning("chunk cache read failed: %s", exc)
            return found
        start = len(self.owner) + 1
        for key, value in values.items():
            ref = _as_ref(value)
            if ref is not None:
                found[key[start:]] = ref
        return found

    async def locate(self, ids: Iterable[str]) -> dict[str, Located]:
        """Reference entries among ``ids``, not yet read (the caller copies the range and checks
        the copy against the fingerprint, or hashes it: localcopy.py)."""
        ids = list(ids)
        return await asyncio.to_thread(self._locate, ids) if ids else {}

    async def drop(self, ids: Iterable[str]) -> None:
        """Forget entries found stale by a caller that verified them (counted as ``stale``)."""
        ids = list(ids)
        self.stats.stale += len(ids)
        if ids:
            await asyncio.to_thread(self._evict_many, ids)

    def _scrub(self) -> ScrubResult:
        result = ScrubResult()
        prefix = f"{self.owner}:"
        keys = [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(prefix)]
        for key in keys:   # one entry in memory at a time
            chunk_id = key[len(prefix):]
            try:
                value = self._cache.get(key)
            except Exception as exc:
                log.warning("chunk cache read failed for %s: %s", chunk_id, exc)
                continue
            if value is None:
                continue   # evicted meanwhile
            ref = _as_ref(value)
            if ref is not None:
                result.references += 1
                good = self._read_ref(chunk_id, ref, trust=False) is not None   # evicts a bad one
            else:
                good = isinstance(value, bytes) and verify(chunk_id, value)
                if not good:
                    self._evict(chunk_id)
            result.checked += 1
            result.bytes += ref.size if ref is not None else len(value) if isinstance(value, bytes) else 0
            if not good:
                result.bad.append(chunk_id)
        return result

    async def scrub(self) -> ScrubResult:
        """Hash every entry of this owner again, trusting no fingerprint; forget the bad ones."""
        return await asyncio.to_thread(self._scrub)

    async def contains(self, ids: Iterable[str]) -> set[str]:
        return await asyncio.to_thread(self._contains, list(ids))

    def usage(self) -> tuple[int, int]:
        """(bytes on disk, entries) of the whole cache, every owner's (blocking: call it in a thread)."""
        try:
            cache = self._cache
        except Exception as exc:
            log.warning("cannot open the chunk cache in %s: %s", self.directory, exc)
            return 0, 0
        return usage(cache)

    def close(self) -> None:
        self._opener.close()   # waits for an opening in progress
