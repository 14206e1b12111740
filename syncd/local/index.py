"""What syncd knows about a local directory, kept outside it, in one SQLite database.

For each (store namespace, volume, directory) the index records the snapshot
the directory was last synced with and, per path, the entry it was synced to
plus the stat fingerprint (inode, size, mtime, ctime) the file had right
after. A commit re-reads only files whose fingerprint changed, and recognises
a rename by inode, size and mtime; a hydrate knows which local files it owns
(and may replace) and which are the user's own or locally modified.

Storage. ``SYNCD_STATE_DIR/index/index.sqlite3`` (never inside the volume
directory), stdlib ``sqlite3`` in WAL mode: readers never block the writer,
and the agent and any number of CLI processes share the file safely (every
write is one ``BEGIN IMMEDIATE`` transaction; a busy database is waited for,
up to ``BUSY_TIMEOUT``). Two tables::

    volumes(id, key UNIQUE, scope, volume, directory, snapshot, seq, generation)
    files(vol, path BLOB, entry TEXT, ino, size, mtime_ns, ctime_ns)  PK (vol, path)

``path`` is the UTF-8 encoding of the path with ``surrogateescape``, so names
that are not valid UTF-8 survive, and rows sort in byte order (a subtree is
one range). ``entry`` is the manifest's JSON form of the entry, without its path;
rows are decoded without the manifest's validation (they are ours, and that
validation was 70% of a load), by a decoder that checks at import time that it
still reads what ``entry_to_json`` writes, and otherwise steps aside.

Rows, not files. ``save`` writes only the rows that changed: it keeps, per
directory, the rows this process last loaded or saved (its base) and writes
the difference between that base and the index it is given, so a 1-file
commit of a million-file directory writes one row, and rows that another
process wrote meanwhile (and this one never saw) are left alone. Without a
base (nothing loaded here yet) the difference is taken against the stored
rows. Every write bumps the volume's ``generation``, so a reader can tell
cheaply whether anything moved. ``update`` takes the
changed rows explicitly, and ``rows`` reads chosen paths (and subtrees)
without loading the rest: what the inotify watcher uses.

Key. The namespace (``scope``) is bucket, prefix and owner: what identifies the
volumes, not the endpoint's spelling, so reaching the same bucket through
another ``SYNCD_S3_ENDPOINT`` (a proxy, a DNS alias) finds the same index.
Indexes of the JSON era (``<key>.json``, keyed with the endpoint) are imported
on first use and renamed ``*.json.migrated``.

All SQLite calls run in worker threads (a connection per call: cheap, and no
connection is ever shared between threads). A per-directory ``fcntl`` lock
(``<key>.lock`` beside the database) serialises hydrates and commits of one
directory across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.errors import LocalIOError, ManifestError
from syncd.format.chunking import content_id
from syncd.format.manifest import Entry, entry_from_json
from syncd.local import dirdigest
from syncd.local.indexrows import (
    SELECT,
    Fingerprint,
    RowReader,
    Tracked,
    dec,
    decode_row,
    enc,
    encode_row,
    term,
    upper,
)
from syncd.local.scan import LocalFile

__all__ = ["Fingerprint", "IndexStore", "LocalIndex", "RowReader", "SyncState", "Tracked", "index_key", "unchanged"]

INDEX_FORMAT = 1          # the JSON files this module migrates from
SCHEMA = 3
DB_NAME = "index.sqlite3"
BUSY_TIMEOUT = 60.0       # seconds a writer waits for another process's transaction
DIGEST_READ = 500         # directories' digests read per query
Row = Sequence[Any]       # a files row without vol: an indexrows.EncodedRow, or a list of its six values


@dataclass(frozen=True)
class SyncState:
    snapshot: str | None
    seq: int
    exact: bool


@dataclass
class LocalIndex:
    snapshot: str | None = None
    seq: int = 0
    files: dict[str, Tracked] = field(default_factory=dict)

    def entries(self) -> dict[str, Entry]:
        return {p: t.entry for p, t in self.files.items()}


def index_key(scope: str, volume: str, directory: Path) -> str:
    return content_id(f"{scope}\x00{volume}\x00{directory.resolve()}".encode())


_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volumes (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, scope TEXT NOT NULL, volume TEXT NOT NULL,
    directory TEXT NOT NULL, snapshot TEXT, seq INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0, digests INTEGER NOT NULL DEFAULT 0,
    exact INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS files (
    vol INTEGER NOT NULL REFERENCES volumes(id) ON DELETE CASCADE, path BLOB NOT NULL,
    entry TEXT NOT NULL, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    PRIMARY KEY (vol, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs (
    vol INTEGER NOT NULL REFERENCES volumes(id) ON DELETE CASCADE, path BLOB NOT NULL,
    digest BLOB NOT NULL, PRIMARY KEY (vol, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_ino ON files(vol, ino);
"""
# files_ino (any schema): a rename is recognised by asking for the rows of one inode (RowReader)
# schema 2 -> 3: per-directory digests (dirdigest.py), kept while ``digests`` is dirdigest.VERSION; ``exact``: the
# directory held exactly its snapshot's tree after the last write (a hydrate may diff trees from it)
_MIGRATE_3 = ("ALTER TABLE volumes ADD COLUMN digests INTEGER NOT NULL DEFAULT 0",
              "ALTER TABLE volumes ADD COLUMN exact INTEGER NOT NULL DEFAULT 0")


@dataclass
class _Known:
    """The rows of one directory as this process last loaded or saved them."""
    generation: int
    files: dict[str, Tracked]


class IndexStore:
    def __init__(self, state_dir: Path, scope: str, legacy_scope: str | None = None) -> None:
        self.dir = state_dir / "index"
        self.db_path = self.dir / DB_NAME
        self.scope = scope                      # bucket|prefix|owner: no endpoint in it
        self.legacy_scope = legacy_scope        # how JSON-era index files were keyed
        self._known: dict[str, _Known] = {}
        self._known_lock = threading.Lock()
        self._seed: int | None = None
        self.rows_read = 0                      # index rows decoded, in all (tests count them)

    def key(self, volume: str, directory: Path) -> str:
        return index_key(self.scope, volume, directory)

    # ------------------------------------------------------------ connections

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LocalIOError(f"cannot open the sync index {self.db_path}: {exc}") from exc
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA journal_mode=WAL")      # persistent; a no-op once set
            conn.execute("PRAGMA synchronous=NORMAL")    # WAL: durable across process crashes
            conn.executescript(_SCHEMA_SQL)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('digest_seed', ?)",
                         (str(int.from_bytes(os.urandom(8), "little")),))
            self._migrate_schema(conn)
            yield conn
        except sqlite3.Error as exc:
            raise LocalIOError(f"sync index {self.db_path}: {exc}{full_note(self.dir)}") from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _volume_row(self, conn: sqlite3.Connection, key: str) -> tuple[int, str | None, int, int] | None:
        row = conn.execute("SELECT id, snapshot, seq, generation FROM volumes WHERE key=?", (key,)).fetchone()
        return None if row is None else (int(row[0]), row[1], int(row[2]), int(row[3]))

    def _ensure_volume(self, conn: sqlite3.Connection, key: str, volume: str, directory: Path) -> tuple[int, int]:
        row = self._volume_row(conn, key)
        if row is not None:
            return row[0], row[3]
        cur = conn.execute("INSERT INTO volumes (key, scope, volume, directory, digests) VALUES (?, ?, ?, ?, ?)",
                           (key, self.scope, volume, str(directory.resolve()), dirdigest.VERSION))
        return int(cur.lastrowid or 0), 0

    def _all_rows(self, conn: sqlite3.Connection, vol: int) -> dict[str, Tracked]:
        return self._decoded(conn.execute(SELECT + "vol=?", (vol,)))

    def _decoded(self, found: Iterable[tuple[Any, ...]]) -> dict[str, Tracked]:
        out: dict[str, Tracked] = {}
        for raw, entry, *fp in found:
            path = dec(raw)
            self.rows_read += 1
            with contextlib.suppress(ValueError, KeyError, TypeError, ManifestError):
                out[path] = decode_row(path, entry, tuple(fp))   # a damaged row only costs re-reading
        return out

    def _remember(self, key: str, generation: int, files: Mapping[str, Tracked]) -> None:
        with self._known_lock:
            known = self._known.get(key)
            if known is None or known.generation <= generation:   # a slower, older read never wins
                self._known[key] = _Known(generation, dict(files))

    # ------------------------------------------------------------ sync operations (worker threads)

    def _load(self, volume: str, directory: Path) -> LocalIndex:
        key = self.key(volume, directory)
        self._migrate(volume, directory, key)
        with self._connect() as conn:
            conn.execute("BEGIN")   # one read snapshot for the volume row and its files
            row = self._volume_row(conn, key)
            if row is None:
                conn.execute("COMMIT")
                return LocalIndex()
            vol, snapshot, seq, generation = row
            files = self._all_rows(conn, vol)
            conn.execute("COMMIT")
        self._remember(key, generation, files)
        return LocalIndex(snapshot, seq, files)

    def _save(self, volume: str, directory: Path, index: LocalIndex, exact: bool) -> int:
        """Write the rows that differ from the stored ones; returns how many were written."""
        key = self.key(volume, directory)
        with self._write() as conn:
            vol, generation = self._ensure_volume(conn, key, volume, directory)
            with self._known_lock:
                known = self._known.get(key)
            old = known.files if known is not None else self._all_rows(conn, vol)
            changes: dict[str, Tracked | None] = {p: t for p, t in index.files.items() if old.get(p) != t}
            changes.update({p: None for p in old if p not in index.files})
            # a base of this process may be stale for rows another process wrote: digests then
            # move from the stored rows of the changed paths, read again
            generation = self._apply(conn, vol, index.snapshot, index.seq, changes,
                                     old if known is None else None, exact)
        self._remember(key, generation, index.files)
        return len(changes)

    def _update(self, volume: str, directory: Path, snapshot: str | None, seq: int,
                changes: Mapping[str, Tracked | None], exact: bool | None) -> None:
        key = self.key(volume, directory)
        self._migrate(volume, directory, key)
        with self._write() as conn:
            vol, generation = self._ensure_volume(conn, key, volume, directory)
            new_generation = self._apply(conn, vol, snapshot, seq, changes, None, exact)
        with self._known_lock:
            known = self._known.get(key)
            if known is not None:
                for path, tracked in changes.items():
                    if tracked is None:
                        known.files.pop(path, None)
                    else:
                        known.files[path] = tracked
                known.generation = new_generation if known.generation == generation else -1

    def _write_rows(self, volume: str, directory: Path, snapshot: str | None, seq: int, puts: Sequence[Row],
                    deletes: list[bytes], digests: Mapping[str, int], drops: Collection[str],
                    exact: bool | None) -> None:
        key = self.key(volume, directory)
        with self._write() as conn:
            vol, _ = self._ensure_volume(conn, key, volume, directory)
            for top in drops:
                self._drop_subtree(conn, vol, top)
            if conn.execute("SELECT digests FROM volumes WHERE id=?", (vol,)).fetchone()[0] == dirdigest.VERSION:
                self._add_digests(conn, vol, digests)
            conn.executemany("DELETE FROM files WHERE vol=? AND path=?", ((vol, p) for p in deletes))
            # vol (our own row id, an int) is written into the statement: no tuple per row
            conn.executemany(f"INSERT OR REPLACE INTO files VALUES ({int(vol)}, ?, ?, ?, ?, ?, ?)", puts)
            conn.execute("UPDATE volumes SET snapshot=?, seq=?, generation=generation+1, exact=coalesce(?, exact) "
                         "WHERE id=?", (snapshot, seq, None if exact is None else int(exact), vol))
        with self._known_lock:
            self._known.pop(key, None)        # this process's base of the directory is stale now

    @staticmethod
    def _drop_subtree(conn: sqlite3.Connection, vol: int, top: str) -> None:
        """Delete every row strictly below directory ``top`` and the digests of every directory
        in it (they sum only rows deleted here); ``top``'s own row is the caller's change."""
        low, high = enc(top) + b"/", upper(enc(top))
        conn.execute("DELETE FROM files WHERE vol=? AND path>? AND path<?", (vol, low, high))
        conn.execute("DELETE FROM dirs WHERE vol=? AND path>? AND path<?", (vol, low, high))
        conn.execute("DELETE FROM dirs WHERE vol=? AND path=?", (vol, enc(top)))   # apart: an OR is a scan

    def _apply(self, conn: sqlite3.Connection, vol: int, snapshot: str | None, seq: int,
               changes: Mapping[str, Tracked | None], old: Mapping[str, Tracked] | None = None,
               exact: bool | None = False) -> int:
        """Write ``changes`` and the directory digests they move. ``old``: the stored rows of
        (at least) the changed paths, if the caller has them; otherwise they are read."""
        digests = conn.execute("SELECT digests FROM volumes WHERE id=?", (vol,)).fetchone()
        if digests is not None and digests[0] == dirdigest.VERSION:   # else summed again before a walk
            if old is None:
                old = self._decoded(r for p in changes for r in conn.execute(
                    SELECT + "vol=? AND path=?", (vol, enc(p))))
            self._move_digests(conn, vol, changes, old)
        conn.executemany("DELETE FROM files WHERE vol=? AND path=?",
                         ((vol, enc(p)) for p, t in changes.items() if t is None))
        conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                         ((vol, *encode_row(p, t)) for p, t in changes.items() if t is not None))
        conn.execute("UPDATE volumes SET snapshot=?, seq=?, generation=generation+1, exact=coalesce(?, exact) "
                     "WHERE id=?", (snapshot, seq, None if exact is None else int(exact), vol))
        row = conn.execute("SELECT generation FROM volumes WHERE id=?", (vol,)).fetchone()
        return int(row[0])

    def _move_digests(self, conn: sqlite3.Connection, vol: int, changes: Mapping[str, Tracked | None],
                      old: Mapping[str, Tracked]) -> None:
        seed = self._digest_seed(conn)
        delta: dict[str, int] = defaultdict(int)
        for path, tracked in changes.items():
            before = old.get(path)
            if before is not None:
                delta[dirdigest.parent_of(path)] -= term(seed, path, before)
            if tracked is not None:
                delta[dirdigest.parent_of(path)] += term(seed, path, tracked)
        self._add_digests(conn, vol, delta)

    @staticmethod
    def _add_digests(conn: sqlite3.Connection, vol: int, delta: Mapping[str, int]) -> None:
        """Move each directory's digest by its delta: the stored digests read ``DIGEST_READ`` at a
        time, written back in two statements (a first commit moves every directory's)."""
        moved = [(enc(path), add) for path, add in delta.items() if add % dirdigest.MOD]
        for start in range(0, len(moved), DIGEST_READ):
            part = moved[start:start + DIGEST_READ]
            marks = ",".join("?" * len(part))
            stored = dict(conn.execute(f"SELECT path, digest FROM dirs WHERE vol=? AND path IN ({marks})",
                                       (vol, *(raw for raw, _ in part))).fetchall())
            values = [(raw, (dirdigest.from_blob(stored.get(raw)) + add) % dirdigest.MOD) for raw, add in part]
            conn.executemany("INSERT OR REPLACE INTO dirs VALUES (?, ?, ?)",
                             [(vol, raw, dirdigest.to_blob(value)) for raw, value in values if value])
            conn.executemany("DELETE FROM dirs WHERE vol=? AND path=?", [(vol, raw) for raw, value in values if not value])

    def _digest_seed(self, conn: sqlite3.Connection) -> int:
        if self._seed is None:
            self._seed = int(conn.execute("SELECT v FROM meta WHERE k='digest_seed'").fetchone()[0])
        return self._seed

    @staticmethod
    def _migrate_schema(conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()[0] != "2":
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()[0] == "2":
                for statement in _MIGRATE_3:
                    conn.execute(statement)
                conn.execute("UPDATE meta SET v=? WHERE k='schema'", (str(SCHEMA),))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ------------------------------------------------------------ reads that follow the change

    def _state(self, volume: str, directory: Path) -> SyncState | None:
        key = self.key(volume, directory)
        self._migrate(volume, directory, key)
        with self._connect() as conn:
            row = conn.execute("SELECT snapshot, seq, exact FROM volumes WHERE key=?", (key,)).fetchone()
        return None if row is None else SyncState(row[0], int(row[1]), bool(row[2]))

    def _ensure_digests(self, volume: str, directory: Path) -> None:
        """Sum the digests once, from all rows, for an index written before digests existed or
        with other terms (``volumes.digests`` is the version of the terms, dirdigest.VERSION)."""
        key = self.key(volume, directory)
        self._migrate(volume, directory, key)
        with self._connect() as conn:
            row = conn.execute("SELECT id, digests FROM volumes WHERE key=?", (key,)).fetchone()
        if row is None or row[1] == dirdigest.VERSION:
            return
        with self._write() as conn:
            vol = int(row[0])
            if conn.execute("SELECT digests FROM volumes WHERE id=?", (vol,)).fetchone()[0] != dirdigest.VERSION:
                conn.execute("DELETE FROM dirs WHERE vol=?", (vol,))
                self._move_digests(conn, vol, self._all_rows(conn, vol), {})
                conn.execute("UPDATE volumes SET digests=? WHERE id=?", (dirdigest.VERSION, vol))

    def _rows(self, volume: str, directory: Path, paths: Collection[str],
              subtrees: Collection[str]) -> dict[str, Tracked]:
        key = self.key(volume, directory)
        self._migrate(volume, directory, key)
        with self._connect() as conn:
            row = self._volume_row(conn, key)
            if row is None:
                return {}
            query = SELECT + "vol=? AND "
            found = [r for p in paths for r in conn.execute(query + "path=?", (row[0], enc(p)))]
            for top in subtrees:
                low = enc(top) + b"/"
                found += conn.execute(query + "path>? AND path<?", (row[0], low, low[:-1] + b"0")).fetchall()
        return self._decoded(found)

    def _generation(self, volume: str, directory: Path) -> int | None:
        key = self.key(volume, directory)
        self._migrate(volume, directory, key)
        with self._connect() as conn:
            row = self._volume_row(conn, key)
        return None if row is None else row[3]

    def _forget(self, volume: str, directory: Path) -> None:
        key = self.key(volume, directory)
        with self._write() as conn:
            conn.execute("DELETE FROM volumes WHERE key=?", (key,))
        with self._known_lock:
            self._known.pop(key, None)
        if self.legacy_scope is not None:
            self._legacy_path(volume, directory).unlink(missing_ok=True)

    # ------------------------------------------------------------ JSON-era migration

    def _legacy_path(self, volume: str, directory: Path) -> Path:
        assert self.legacy_scope is not None
        return self.dir / f"{index_key(self.legacy_scope, volume, directory)}.json"

    def _migrate(self, volume: str, directory: Path, key: str) -> None:
        """Import ``<legacy key>.json`` if it exists and the database has no such volume."""
        if self.legacy_scope is None:
            return
        legacy = self._legacy_path(volume, directory)
        if not legacy.exists():
            return
        old = _read_json_index(legacy)
        with self._write() as conn:
            if self._volume_row(conn, key) is None:
                vol, _ = self._ensure_volume(conn, key, volume, directory)
                self._apply(conn, vol, old.snapshot, old.seq, old.files)
        with self._known_lock:
            self._known.pop(key, None)
        with contextlib.suppress(OSError):
            os.replace(legacy, legacy.with_name(legacy.name + ".migrated"))

    # ------------------------------------------------------------ the async API

    async def load(self, volume: str, directory: Path) -> LocalIndex:
        return await asyncio.to_thread(self._load, volume, directory)

    async def save(self, volume: str, directory: Path, index: LocalIndex, *, exact: bool = False) -> int:
        """Make the stored index equal ``index``, writing only the rows that differ. ``exact``:
        the directory now holds exactly ``index.snapshot``'s tree (hydrate may diff from it)."""
        return await asyncio.to_thread(self._save, volume, directory, index, exact)

    async def update(self, volume: str, directory: Path, snapshot: str | None, seq: int,
                     changes: Mapping[str, Tracked | None], *, exact: bool | None = False) -> None:
        """Write exactly these rows (None deletes one) and the synced snapshot (``exact``: as
        in ``save``; None keeps what was recorded)."""
        await asyncio.to_thread(self._update, volume, directory, snapshot, seq, dict(changes), exact)

    def write_rows(self, volume: str, directory: Path, snapshot: str | None, seq: int, puts: Sequence[Row],
                   deletes: list[bytes], digests: Mapping[str, int], drops: Collection[str] = (), *,
                   exact: bool | None = False) -> None:
        """Blocking, for a worker thread: one transaction that drops the subtrees ``drops``, adds
        ``digests`` (directory -> what its digest moves by, the caller summed the terms), deletes
        the rows at ``deletes`` (encoded paths), writes ``puts`` (encoded rows: an EncodedRow,
        or a list of the same six values, as a commit's spool holds them) and records the
        synced snapshot. A caller writing many rows calls it once per batch."""
        self._write_rows(volume, directory, snapshot, seq, puts, deletes, digests, list(drops), exact)

    @contextlib.contextmanager
    def reader(self, volume: str, directory: Path) -> Iterator[RowReader]:
        """A :class:`RowReader` of this directory's rows over one connection; blocking: open and
        use it in one worker thread. An index written before digests existed gets them first."""
        key = self.key(volume, directory)
        self._migrate(volume, directory, key)
        self._ensure_digests(volume, directory)
        with self._connect() as conn:
            seed = self._digest_seed(conn)
            row = self._volume_row(conn, key)

            def count(n: int) -> None:
                self.rows_read += n

            yield RowReader(conn, None if row is None else row[0], seed, count)

    async def state(self, volume: str, directory: Path) -> SyncState | None:
        """The synced snapshot without reading any row; None if the directory has no index."""
        return await asyncio.to_thread(self._state, volume, directory)

    async def rows(self, volume: str, directory: Path, paths: Collection[str],
                   subtrees: Collection[str] = ()) -> dict[str, Tracked]:
        """The stored rows of ``paths`` and of every path below each of ``subtrees``."""
        return await asyncio.to_thread(self._rows, volume, directory, list(paths), list(subtrees))

    async def generation(self, volume: str, directory: Path) -> int | None:
        """A number that changes with every write of this directory's index; None if it has none."""
        return await asyncio.to_thread(self._generation, volume, directory)

    async def exists(self, volume: str, directory: Path) -> bool:
        return await self.generation(volume, directory) is not None

    async def forget(self, volume: str, directory: Path) -> None:
        await asyncio.to_thread(self._forget, volume, directory)

    @contextlib.asynccontextmanager
    async def locked(self, volume: str, directory: Path) -> AsyncIterator[None]:
        """Hold the directory's lock (exclusive across processes) for the block."""
        await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
        lock_path = self.dir / f"{self.key(volume, directory)}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:  # poll, so a cancelled waiter never leaves a thread holding the lock
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_json_index(path: Path) -> LocalIndex:
    """A JSON-era index file; a damaged one reads as empty (that only costs re-reading files)."""
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != INDEX_FORMAT:
            return LocalIndex()
        files = {}
        for p, raw in doc["files"].items():
            fp = raw.pop("fp", None)
            files[p] = Tracked(entry_from_json(raw), tuple(fp) if fp else None)
        return LocalIndex(doc.get("snapshot"), int(doc.get("seq", 0)), files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ManifestError):
        return LocalIndex()


def unchanged(tracked: Tracked, local: LocalFile) -> bool:
    """Is the local path still exactly what syncd last left there?"""
    entry = tracked.entry
    if local.kind != entry.kind:
        return False
    if entry.kind == "file":
        return tracked.fingerprint is not None and local.fingerprint == tracked.fingerprint
    if entry.kind == "symlink":
        return local.target == entry.target
    return True


FULL_MARGIN = 1 << 20  # free bytes below which a failing state directory is reported as full


def full_note(directory: Path) -> str:
    """A note for an error in ``directory`` whose file system is full: SQLite says only
    'disk I/O error' (or 'database or disk is full') when a write finds no space left."""
    try:
        fs = os.statvfs(directory)
    except OSError:
        return ""
    if fs.f_bavail * fs.f_frsize >= FULL_MARGIN:
        return ""
    return f" (the state directory's file system is full: no space left on device in {directory})"
