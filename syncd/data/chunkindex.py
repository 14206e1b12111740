"""Does the volume already hold this chunk? Asked for the chunks about to be uploaded, at their cost.

Every write path (commit, server-side edits, fsspec, the lazy mount) hands its
new chunks to the Uploader, which asks this index before it PUTs one, so
identical bytes anywhere in the volume are stored once, also when the writer
never saw the file that holds them (a ``syncd put`` of a copy, a file renamed
through a temporary name on the mount, a revert to an old version).

Store side (format/chunkindex.py, docs/FORMAT.md section 5a): immutable
objects ``index/<xx>/<id>``, one per shard a write touched, listing where its
new chunks went; 256 shards by the first two hex digits of the chunk id.

Asking (:class:`IndexSession.find`, one session per commit): the first time a
session needs shard ``xx`` it lists ``index/<xx>/`` (one LIST), fetches the
objects it has not seen before, validates them (a bad object is ignored
whole, logged) and records their references in a local SQLite cache under
``SYNCD_STATE_DIR/chunkindex/``; rows of objects no longer listed are dropped.
A lookup is then a primary-key query (a shard's objects and an object's
references have SQLite indexes of their own: no question reads the volume's
rows). So a commit touching k shards costs k LISTs plus the index objects
written since this worker last looked, and memory holds one shard's new
objects at a time, never the volume's set: the cache is on disk. A new worker reads the shards its new chunks fall in
(a 1,000-chunk commit: most of the 256; a 1-chunk commit: one).

A hit is a claim, as strong as a tree's chunk reference: the session checks
the object it names exists and holds the range (one HEAD per object per
session) and that the plain size matches, before the Uploader reuses it; the
writer then checks it again after reading a HEAD free of prune's lease, like
every chunk it reuses without uploading (docs/FORMAT.md section 11). Prune
rewrites the index from what the kept snapshots reference (maint/prune.py),
so entries for deleted packs do not live longer than the next prune.

Recording (:meth:`IndexSession.record`, after the uploads finished and before
HEAD moves): one object per shard with the new references. When a shard
holds ``COMPACT_AT`` objects or more, the writer merges those it listed with
its own into one object and deletes the merged ones; a concurrent reader that
misses a deleted object only misses a hint, and two writers merging at once
each keep everything they delete.

Failures here never fail a write: a store or SQLite error is logged and the
chunk is simply uploaded (the index is a cache of the volume's trees).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import msgspec

from syncd.errors import ManifestError, NotFound, StoreError
from syncd.format.chunkindex import decode_index, encode_index, ref_text
from syncd.format.chunking import content_id, is_content_id
from syncd.format.layout import Layout, object_key, shard_of
from syncd.format.manifest import ChunkRef
from syncd.limits import gather_all
from syncd.store.base import ObjectStore, put_immutable

_ENCODE = msgspec.json.Encoder().encode     # a reference's cached form, the JSON json.loads reads back

log = logging.getLogger(__name__)

COMPACT_AT = 16        # index objects in one shard before a writer merges them
FETCHERS = 8           # index objects fetched at once
BUSY_TIMEOUT = 30.0
JSON_ROWS = 8192       # references per SQLite statement (SQLite parses the JSON whole: ~1 KiB a row)

Applied = tuple[str, list[str], dict[str, list[ChunkRef]]]   # a shard, its keys gone, its keys added (refs)


class _Cache:
    """The local copy of the index objects seen so far: SQLite on disk, one connection per call."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.broken = path is None
        self._ready = False
        self._memory: dict[tuple[str, str], dict[str, list[ChunkRef]]] = {}   # when there is no file

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")     # a cache: a power loss costs re-reading index objects
        if not self._ready:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS objects(volume TEXT, shard TEXT, key TEXT, "
                       "PRIMARY KEY(volume, key))")
            db.execute("CREATE TABLE IF NOT EXISTS refs(volume TEXT, id TEXT, key TEXT, ref TEXT, "
                       "PRIMARY KEY(volume, id, key))")
            # a shard's objects, an object's refs: without these each is a scan of the volume's
            # rows (a merge of 16 objects at 300,000 refs: 32 scans of 0.18 s each)
            db.execute("CREATE INDEX IF NOT EXISTS objects_shard ON objects(volume, shard)")
            db.execute("CREATE INDEX IF NOT EXISTS refs_key ON refs(volume, key)")
            self._ready = True
        return db

    def _run(self, fn_name: str, *args: object) -> object:
        if self.broken:
            return getattr(self, "_mem_" + fn_name)(*args)
        try:
            db = self._connect()
            try:
                return getattr(self, "_db_" + fn_name)(db, *args)
            finally:
                db.close()
        except (sqlite3.Error, OSError) as exc:
            log.warning("chunk index cache %s unusable (%s); keeping it in memory", self.path, exc)
            self.broken = True
            return getattr(self, "_mem_" + fn_name)(*args)

    async def call(self, fn_name: str, *args: object) -> object:
        return await asyncio.to_thread(self._run, fn_name, *args)

    # -- SQLite
    @staticmethod
    def _db_keys(db: sqlite3.Connection, volume: str, shard: str) -> set[str]:
        return {k for (k,) in db.execute("SELECT key FROM objects WHERE volume=? AND shard=?", (volume, shard))}

    @classmethod
    def _db_apply(cls, db: sqlite3.Connection, volume: str, shard: str, gone: list[str],
                  added: dict[str, list[ChunkRef]]) -> None:
        cls._db_apply_many(db, volume, [(shard, gone, added)])

    @staticmethod
    def _db_apply_many(db: sqlite3.Connection, volume: str, shards: list[Applied]) -> None:
        """Every shard's change in one transaction, its rows inserted in key order: rows of
        random ids land all over the table, so a transaction per shard wrote most of its pages
        again each time (256 of them took 4 s for 100,000 refs, one 1.4 s, one in key order
        0.7 s). The rows go in as JSON arrays that SQLite unpacks (json_each), ``JSON_ROWS``
        a statement, run without the GIL, where executemany took it back for every row and a
        thread beside it (a commit's index rows) waited for it each time."""
        rows = sorted(f'["{r.id}",{quoted},{ref_text(r)}]' for _, _, added in shards for key, refs in added.items()
                      for quoted in (_ENCODE(key).decode(),) for r in refs)     # JSON text: no list per row
        db.execute("BEGIN IMMEDIATE")
        try:
            for shard, gone, added in shards:
                for key in gone:
                    db.execute("DELETE FROM objects WHERE volume=? AND key=?", (volume, key))
                    db.execute("DELETE FROM refs WHERE volume=? AND key=?", (volume, key))
                db.executemany("INSERT OR IGNORE INTO objects VALUES (?, ?, ?)", ((volume, shard, k) for k in added))
            try:
                for start in range(0, len(rows), JSON_ROWS):
                    db.execute("INSERT OR IGNORE INTO refs SELECT ?, json_extract(value, '$[0]'), "
                               "json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?)",
                               (volume, f"[{','.join(rows[start:start + JSON_ROWS])}]"))
            except sqlite3.OperationalError:     # an SQLite without JSON functions
                db.executemany("INSERT OR IGNORE INTO refs VALUES (?, ?, ?, ?)",
                               ((volume, cid, key, _ENCODE(ref).decode()) for cid, key, ref in map(json.loads, rows)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _db_find(db: sqlite3.Connection, volume: str, chunk_ids: list[str]) -> dict[str, list[ChunkRef]]:
        out: dict[str, list[ChunkRef]] = {}
        for start in range(0, len(chunk_ids), 500):
            part = chunk_ids[start:start + 500]
            marks = ",".join("?" * len(part))
            for cid, r in db.execute(f"SELECT id, ref FROM refs WHERE volume=? AND id IN ({marks})",
                                     (volume, *part)):
                out.setdefault(cid, []).append(ChunkRef(*json.loads(r)))
        return out

    @staticmethod
    def _db_refs_of(db: sqlite3.Connection, volume: str, keys: list[str]) -> list[ChunkRef]:
        out = []
        for key in keys:
            out += [ChunkRef(*json.loads(r)) for (r,) in
                    db.execute("SELECT ref FROM refs WHERE volume=? AND key=?", (volume, key))]
        return out

    # -- memory (no state directory, or SQLite failed)
    def _mem_keys(self, volume: str, shard: str) -> set[str]:
        return set(self._memory.get((volume, shard), {}))

    def _mem_apply(self, volume: str, shard: str, gone: list[str], added: dict[str, list[ChunkRef]]) -> None:
        objects = self._memory.setdefault((volume, shard), {})
        for key in gone:
            objects.pop(key, None)
        objects.update(added)

    def _mem_apply_many(self, volume: str, shards: list[Applied]) -> None:
        for shard, gone, added in shards:
            self._mem_apply(volume, shard, gone, added)

    def _mem_find(self, volume: str, chunk_ids: list[str]) -> dict[str, list[ChunkRef]]:
        out: dict[str, list[ChunkRef]] = {}
        for chunk_id in chunk_ids:
            objects = self._memory.get((volume, shard_of(chunk_id)), {})
            found = [r for refs in objects.values() for r in refs if r.id == chunk_id]
            if found:
                out[chunk_id] = found
        return out

    def _mem_refs_of(self, volume: str, keys: list[str]) -> list[ChunkRef]:
        out = []
        for objects in self._memory.values():
            for key in keys:
                out += objects.get(key, [])
        return out


class ChunkIndex:
    """The chunk index of one owner's volumes; ``session(volume)`` for each write."""

    def __init__(self, store: ObjectStore, layout: Layout, state_dir: Path | None, scope: str) -> None:
        self.store, self.layout = store, layout
        path = None if state_dir is None else state_dir / "chunkindex" / f"{content_id(scope.encode())}.sqlite3"
        self.cache = _Cache(path)
        self.objects_read = 0       # index objects fetched (tests, metrics)

    def session(self, volume: str) -> IndexSession:
        return IndexSession(self, volume)


class IndexSession:
    """One write's view of the index: each shard listed at most once, each object HEADed once."""

    def __init__(self, index: ChunkIndex, volume: str) -> None:
        self.index, self.volume = index, volume
        self._listed: dict[str, asyncio.Task[list[str]]] = {}
        self._objects: dict[str, asyncio.Task[int | None]] = {}
        self._pending: list[tuple[str, asyncio.Future[list[ChunkRef]]]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._caching: asyncio.Task[object] | None = None   # what record stored, going into the local cache
        self.lists = 0

    async def find(self, chunk_id: str, size: int) -> ChunkRef | None:
        """Where the volume holds ``chunk_id`` (``size`` plain bytes), checked to exist; else None.

        A shard with no index object answers at once (a new volume's first commit asks
        nothing more); other lookups made at the same time share one query (``_query``).
        """
        try:
            if not await self._shard(shard_of(chunk_id)):
                return None
            found = await self._query(chunk_id)
        except (StoreError, ManifestError) as exc:
            log.warning("volume %r: chunk index unavailable (%s); uploading", self.volume, exc)
            return None
        for ref in found:
            if ref.size == size and await self._holds(ref):
                return ref
        return None

    async def find_many(self, chunks: list[tuple[str, int]]) -> dict[str, ChunkRef]:
        """:meth:`find` for many ``(chunk id, plain size)`` at once: the shards they fall in listed
        (each once per session), one cache query for the ids in shards that hold objects, then
        the existence checks of what it found. The chunks the volume holds, by id."""
        try:
            shards = list({shard_of(cid) for cid, _ in chunks})
            # not gather_all: cancelling the others would cancel the listings the session shares
            results = await asyncio.gather(*(self._shard(s) for s in shards), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            listed = dict(zip(shards, results, strict=True))
            asked = [cid for cid, _ in chunks if listed[shard_of(cid)]]
            found = await self._cache("find", self.volume, asked) if asked else {}
        except (StoreError, ManifestError) as exc:
            log.warning("volume %r: chunk index unavailable (%s); uploading", self.volume, exc)
            return {}
        assert isinstance(found, dict)
        out: dict[str, ChunkRef] = {}
        for cid, size in chunks:
            for ref in found.get(cid, ()):
                if ref.size == size and await self._holds(ref):
                    out[cid] = ref
                    break
        return out

    async def _query(self, chunk_id: str) -> list[ChunkRef]:
        """The cached references of ``chunk_id``; lookups queued in the same loop turn go in one query."""
        future: asyncio.Future[list[ChunkRef]] = asyncio.get_running_loop().create_future()
        self._pending.append((chunk_id, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(lambda: self._batches.add(asyncio.ensure_future(self._flush())))
        return await future

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            found = await self._cache("find", self.volume, [cid for cid, _ in pending])
        except BaseException as exc:   # handed to every waiter (each falls back to uploading)
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._batches = {t for t in self._batches if not t.done()}
        assert isinstance(found, dict)
        for cid, future in pending:
            if not future.done():
                future.set_result(found.get(cid, []))

    async def _holds(self, ref: ChunkRef) -> bool:
        key = object_key(self.index.layout, self.volume, ref)
        task = self._objects.get(key)
        if task is None:
            task = self._objects[key] = asyncio.ensure_future(self._size(key))
        length = await task
        if length is None:
            return False
        return length == ref.size if ref.pack is None else ref.end <= length

    async def _size(self, key: str) -> int | None:
        try:
            return (await self.index.store.head(key)).size
        except NotFound:
            return None

    async def _shard(self, shard: str) -> list[str]:
        task = self._listed.get(shard)
        if task is None:
            task = self._listed[shard] = asyncio.ensure_future(self._sync(shard))
        return await task

    async def _sync(self, shard: str) -> list[str]:
        """List the shard, fetch the objects not cached yet, drop those gone; the listed keys."""
        index = self.index
        prefix = index.layout.index_shard(self.volume, shard)
        self.lists += 1
        listed = [info.key for info in [i async for i in index.store.list_objects(prefix)]
                  if is_content_id(info.key[len(prefix):])]
        known = await self._cache("keys", self.volume, shard)
        assert isinstance(known, set)
        gone = [k for k in known if k not in set(listed)]
        fresh = [k for k in listed if k not in known]
        added: dict[str, list[ChunkRef]] = {}
        limit = asyncio.Semaphore(FETCHERS)

        async def fetch(key: str) -> None:
            async with limit:
                try:
                    blob = await index.store.get(key)
                except NotFound:
                    return                       # merged and deleted meanwhile: only a hint lost
                index.objects_read += 1
                try:
                    added[key] = await asyncio.to_thread(decode_index, blob.data, key[len(prefix):], shard)
                except ManifestError as exc:
                    log.warning("volume %r: ignoring %s: %s", self.volume, key, exc)
                    added[key] = []              # remembered as seen, so not fetched again

        await gather_all(fetch(k) for k in fresh)
        if gone or added:
            await self._cache("apply", self.volume, shard, gone, added)
        return listed

    async def _cache(self, fn_name: str, *args: object) -> object:
        """A call of the local cache, after what :meth:`record` left to it (lookups and merges
        see this session's records)."""
        await self.settle()
        return await self.index.cache.call(fn_name, *args)

    async def settle(self) -> None:
        """Wait until the references :meth:`record` stored are in the local cache. A failure
        there is logged, no more: the next session fetches those index objects instead."""
        task, self._caching = self._caching, None
        if task is None:
            return
        try:
            await task
        except Exception as exc:   # the cache only ever makes lookups cheaper
            log.warning("volume %r: chunk index cache not updated: %s", self.volume, exc)

    async def record(self, refs: Iterable[ChunkRef], *, wait: bool = True) -> int:
        """Add ``refs`` (chunks this write stored) to the index; merges a crowded shard. Best-effort:
        returns the index objects written. ``wait=False``: their references go into the local
        cache in a worker thread meanwhile (one SQLite statement, ~0.7 s per 100,000 refs,
        while a commit advances HEAD and writes its index rows); :meth:`settle` waits for
        that, and so does every later use of the cache here (the next record included)."""
        await self.settle()
        by_shard: dict[str, dict[str, ChunkRef]] = defaultdict(dict)
        for ref in refs:
            by_shard[shard_of(ref.id)].setdefault(ref.id, ref)
        limit = asyncio.Semaphore(FETCHERS)
        applied: list[Applied] = []     # into the local cache at the end, in one transaction

        async def one(shard: str, new: dict[str, ChunkRef]) -> int:
            async with limit:
                try:
                    return await self._record_shard(shard, new, applied)
                except (StoreError, ManifestError) as exc:
                    log.warning("volume %r: could not record chunk index shard %s: %s", self.volume, shard, exc)
                    return 0
        try:
            return sum(await gather_all(one(s, new) for s, new in by_shard.items()))
        finally:
            if applied:
                self._caching = asyncio.ensure_future(self.index.cache.call("apply_many", self.volume, applied))
                if wait:
                    await self.settle()

    async def _record_shard(self, shard: str, new: dict[str, ChunkRef], applied: list[Applied]) -> int:
        index = self.index
        listed = await self._shard(shard)
        merge = len(listed) + 1 >= COMPACT_AT
        refs = dict(new)
        if merge:
            old = await self._cache("refs_of", self.volume, listed)
            assert isinstance(old, list)
            for ref in old:
                refs.setdefault(ref.id, ref)
        added = {}
        for object_id, data, part in encode_index(refs.values()):
            key = index.layout.index_object(self.volume, shard, object_id)
            await put_immutable(index.store, key, data)
            added[key] = part
        gone = [k for k in listed if k not in added] if merge else []
        if gone:
            await index.store.delete(gone)
        applied.append((shard, gone, added))
        self._listed[shard] = _done([k for k in listed if k not in gone] + list(added))
        return len(added)


def _done(value: list[str]) -> asyncio.Task[list[str]]:
    async def give() -> list[str]:
        return value
    return asyncio.ensure_future(give())
