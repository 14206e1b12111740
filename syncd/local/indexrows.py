"""Index rows: their encoding in SQLite, and reading them one directory at a time.

A row is ``(vol, path, entry, ino, size, mtime_ns, ctime_ns)`` (index.py has
the schema): ``path`` the UTF-8 bytes of the path with ``surrogateescape``
(rows sort by bytes, so a subtree is one key range), ``entry`` the manifest's
JSON form of the entry without its path. Rows are decoded without the
manifest's validation (they are ours, and that validation was 70% of a load),
by a decoder that checks at import time that it still reads what
``entry_to_json`` writes, and otherwise steps aside.

:class:`RowReader` answers the questions a walk asks per directory (its
digest, its children's rows, the rows of one inode, a subtree in order) over
one connection held for the whole walk, in the one worker thread that walks:
a commit or hydrate of a million files asks tens of thousands of them, and a
connection per question (what the async API of index.py opens) would cost
more than the answers.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from syncd.errors import ManifestError
from syncd.format.chunkindex import ref_text
from syncd.format.manifest import ChunkRef, Entry, entry_from_json, entry_to_json
from syncd.local import dirdigest

Fingerprint = tuple[int, int, int, int]
_COLUMNS = "SELECT path, entry, ino, size, mtime_ns, ctime_ns FROM files"
SELECT = _COLUMNS + " WHERE "
# Named: without statistics SQLite's planner prefers the primary key's (vol) prefix, a scan of every
# row of the volume (74 ms per inode at 300,000 rows, in every commit of a new file), to files_ino
BY_INODE = _COLUMNS + " INDEXED BY files_ino WHERE vol=? AND ino=?"
BATCH = 256          # rows fetched per range query
Raw = tuple[Any, ...]
EncodedRow = tuple[bytes, str, int | None, int | None, int | None, int | None]   # a files row without vol


@dataclass
class Tracked:
    entry: Entry
    fingerprint: Fingerprint | None     # None for dirs and symlinks


def term(seed: int, path: str, tracked: Tracked) -> int:
    """The directory-digest term of the row at ``path`` (dirdigest.py)."""
    return entry_term(seed, path, tracked.entry, tracked.fingerprint)


def entry_term(seed: int, path: str, e: Entry, fingerprint: Fingerprint | None) -> int:
    """``term`` of the row ``Tracked(e, fingerprint)`` would be, without making it (a commit
    spools a row per file)."""
    return dirdigest.child_hash(seed, dirdigest.name_of(path), e.kind, e.mode, fingerprint, e.target, e.mtime_ns)


def enc(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def dec(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def upper(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` + b"/" (b"0" follows b"/")."""
    return prefix + b"0"


def encode_row(path: str, tracked: Tracked) -> EncodedRow:
    fp = tracked.fingerprint
    return (enc(path), entry_json(tracked.entry), *(fp if fp else (None, None, None, None)))


def entry_json(e: Entry) -> str:
    """The ``entry`` column: ``entry_to_json`` without the path. Files and directories hold only
    integers and content ids (32 hex digits, checked where they were made), so they are written
    directly, several times faster than json.dumps; a symlink's target may need escaping."""
    if _FAST_JSON and e.kind == "file" and type(e.mode) is int and type(e.mtime_ns) is int and type(e.size) is int:
        refs = ref_text(e.chunks[0]) if len(e.chunks) == 1 else ",".join(map(ref_text, e.chunks))
        return f'{{"type":"file","mode":{e.mode:d},"mtime_ns":{e.mtime_ns:d},"size":{e.size:d},"chunks":[{refs}]}}'
    if _FAST_JSON and e.kind == "dir" and type(e.mode) is int and type(e.mtime_ns) is int:
        return f'{{"type":"dir","mode":{e.mode:d},"mtime_ns":{e.mtime_ns:d}}}'
    raw = entry_to_json(e)
    raw.pop("path", None)
    return json.dumps(raw, separators=(",", ":"))


_FAST_JSON = True


def _fast_writes_as_json() -> bool:
    """Does entry_json write what json.dumps would (for the entries it writes itself)? If the
    manifest's form ever changes, the fast writer steps aside (checked once, at import)."""
    samples = [Entry("a", "file", 0o640, -5, 9, (ChunkRef("0" * 32, 4), ChunkRef("1" * 32, 5, "2" * 32, 7),
                                                  ChunkRef("3" * 32, 9, "2" * 32, 12, 4))),
               Entry("a", "file", 0o644, 1, 0), Entry("b", "file", 0o600, 7, 5, (ChunkRef("4" * 32, 5, "5" * 32, 3),)),
               Entry("d", "dir", 0o755, 2)]
    for e in samples:
        raw = entry_to_json(e)
        raw.pop("path", None)
        if entry_json(e) != json.dumps(raw, separators=(",", ":")):
            return False
    return True


_FAST_JSON = _fast_writes_as_json()


def decode_row(path: str, entry: str, fp: tuple[int | None, ...]) -> Tracked:
    raw = json.loads(entry)
    raw["path"] = path
    ino, size, mtime, ctime = fp
    fingerprint = None if ino is None else (int(ino), int(size or 0), int(mtime or 0), int(ctime or 0))
    return Tracked(_decode(raw), fingerprint)


def _trusted(raw: dict[str, Any]) -> Entry:
    """Rows we wrote ourselves, decoded without the manifest's validation (70% of a load)."""
    kind = raw["type"]
    if kind == "file":
        refs = raw["chunks"]
        if not all(type(r) is list and len(r) in (2, 4, 5) for r in refs):
            raise TypeError("unexpected chunk reference shape")
        return Entry(raw["path"], "file", raw["mode"], raw["mtime_ns"], raw["size"],
                     tuple(ChunkRef(*r) for r in refs))
    if kind == "symlink":
        return Entry(raw["path"], "symlink", raw["mode"], raw["mtime_ns"], target=raw["target"])
    if kind == "dir":
        return Entry(raw["path"], "dir", raw["mode"], raw["mtime_ns"])
    raise TypeError(f"unknown kind {kind!r}")


def _trusted_matches_manifest() -> bool:
    """Does the fast decoder still read what entry_to_json writes? (Guards against format drift.)"""
    samples = [Entry("a/b", "file", 0o640, -5, 9, (ChunkRef("0" * 32, 4), ChunkRef("1" * 32, 5, "2" * 32, 7),
                                                  ChunkRef("3" * 32, 9, "2" * 32, 12, 4))),
               Entry("l", "symlink", 0o777, 3, target="a/b"), Entry("a", "dir", 0o755, 2)]
    try:
        return all(_trusted(entry_to_json(e)) == entry_from_json(entry_to_json(e)) == e for e in samples)
    except (TypeError, KeyError, ValueError, ManifestError):
        return False


_FAST = _trusted_matches_manifest()


def _decode(raw: dict[str, Any]) -> Entry:
    if _FAST:
        with contextlib.suppress(TypeError, KeyError):
            return _trusted(raw)
    return entry_from_json(raw)


def children_of(conn: sqlite3.Connection, vol: int, top: str) -> list[Raw]:
    """The raw rows directly inside directory ``top``, jumping over each subdirectory's subtree."""
    found: list[Raw] = []
    prefix = enc(top) + b"/" if top else b""
    bound = " AND path<?" if top else ""
    low, inclusive = prefix, False
    while True:
        args = (vol, low, upper(prefix[:-1])) if top else (vol, low)
        batch = conn.execute(SELECT + f"vol=? AND path{'>=' if inclusive else '>'}?{bound} "
                             f"ORDER BY path LIMIT {BATCH}", args).fetchall()
        jumped = False
        for item in batch:
            rest = bytes(item[0])[len(prefix):]
            cut = rest.find(b"/")
            if cut >= 0:       # below a subdirectory: skip its whole subtree
                low, inclusive, jumped = upper(prefix + rest[:cut]), True, True
                break
            found.append(item)
            low, inclusive = bytes(item[0]), False
        if not jumped and len(batch) < BATCH:
            return found


class RowReader:
    """Per-directory reads of one directory's index over one connection (one thread only).

    ``count(n)`` is told how many rows were decoded (IndexStore.rows_read, what tests count).
    A directory without an index (``vol`` None) reads as empty.
    """

    def __init__(self, conn: sqlite3.Connection, vol: int | None, seed: int, count: Any) -> None:
        self.conn, self.vol, self.seed, self._count = conn, vol, seed, count

    def decoded(self, found: list[Raw]) -> dict[str, Tracked]:
        out: dict[str, Tracked] = {}
        for raw, entry, *fp in found:
            path = dec(raw)
            with contextlib.suppress(ValueError, KeyError, TypeError, ManifestError):
                out[path] = decode_row(path, entry, tuple(fp))   # a damaged row only costs re-reading
        self._count(len(found))
        return out

    def digest(self, top: str) -> int:
        if self.vol is None:
            return 0
        row = self.conn.execute("SELECT digest FROM dirs WHERE vol=? AND path=?", (self.vol, enc(top))).fetchone()
        return dirdigest.from_blob(row[0] if row else None)

    def digests(self, dirs: Collection[str]) -> dict[str, int]:
        """The digests of ``dirs`` (absent ones: 0), ``BATCH`` directories per query."""
        if self.vol is None:
            return dict.fromkeys(dirs, 0)
        out = dict.fromkeys(dirs, 0)
        wanted = [enc(d) for d in dirs]
        for start in range(0, len(wanted), BATCH):
            part = wanted[start:start + BATCH]
            marks = ",".join("?" * len(part))
            for path, digest in self.conn.execute(f"SELECT path, digest FROM dirs WHERE vol=? AND path IN ({marks})",
                                                  (self.vol, *part)):
                out[dec(path)] = dirdigest.from_blob(digest)
        return out

    def children(self, top: str) -> dict[str, Tracked]:
        """The rows directly inside ``top`` ('' = the root), by full path."""
        return {} if self.vol is None else self.decoded(children_of(self.conn, self.vol, top))

    def rows(self, paths: Collection[str]) -> dict[str, Tracked]:
        if self.vol is None:
            return {}
        return self.decoded([r for p in paths for r in self.conn.execute(SELECT + "vol=? AND path=?",
                                                                            (self.vol, enc(p)))])

    def by_inode(self, inos: Collection[int]) -> dict[str, Tracked]:
        """The rows of files with one of these inode numbers (candidates for a rename)."""
        if self.vol is None or not inos:
            return {}
        return self.decoded([r for ino in inos for r in self.conn.execute(BY_INODE, (self.vol, ino))])

    def subtree(self, top: str) -> Iterator[tuple[str, Tracked]]:
        """Every row strictly below directory ``top``, in key order, ``BATCH`` rows at a time."""
        assert top, "the root's subtree is the whole index"
        if self.vol is None:
            return
        low, high = enc(top) + b"/", upper(enc(top))
        while True:
            batch = self.conn.execute(SELECT + f"vol=? AND path>? AND path<? ORDER BY path LIMIT {BATCH}",
                                      (self.vol, low, high)).fetchall()
            yield from self.decoded(batch).items()
            if len(batch) < BATCH:
                return
            low = bytes(batch[-1][0])
