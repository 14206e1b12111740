"""A commit's changes as spooled: one record per upload batch, in columns the index takes whole.

A commit writes its index rows only once HEAD names its snapshot, and replays its tree
changes on a newer HEAD if another writer got there first (commitpass.py), so every
change goes to the spool file (local/spool.py) as the pass makes it. A batch record is

    [drops, order, puts, deletes, builds, moved, row_moves]

``puts`` are index rows exactly as ``files`` takes them without ``vol`` (path bytes,
entry JSON, the fingerprint or NULLs) and ``deletes`` the paths whose rows go, so writing
a batch is two ``executemany`` calls over the decoded lists, with no Python step per row
(a 100,000-file commit spent ~1.3 s of CPU after HEAD moved turning per-row records into
rows, most of it in the garbage collector scanning them). ``moved`` sums, per parent
directory, what the batch moves its digest by (local/dirdigest.py). The tree changes keep
their order for a replay: ``order`` has one byte per change -- ``p`` a put, ``d`` a delete,
``b`` a tree change only (a path below a directory that went, whose rows go with it, in
``builds``) -- and ``row_moves`` the digest move of each put and delete, for the rare
write that must leave some paths' rows as they were (``left_out``: changes a merge did
not take). ``drops`` are directories whose rows below go whole.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Any

from syncd.format.manifest import Entry
from syncd.local import dirdigest
from syncd.local.indexrows import Fingerprint, dec, decode_row, enc, entry_json

PUT, DELETE, BUILD = ord("p"), ord("d"), ord("b")
_NO_FINGERPRINT = (None, None, None, None)


class SpoolBatch:
    """The drain's side: changes added in walk order, then ``record()`` for Spool.add."""

    def __init__(self, drops: Iterable[str]) -> None:
        self.drops = [enc(top) for top in drops]
        self.order = bytearray()
        self.puts: list[list[Any]] = []
        self.deletes: list[bytes] = []
        self.builds: list[bytes] = []
        self.row_moves: list[bytes] = []
        self.moved: dict[bytes, int] = {}

    def change(self, path: str, entry: Entry | None, fingerprint: Fingerprint | None, moved: int) -> None:
        """The row of ``path`` becomes ``entry`` (None: it goes), moving its parent's digest by ``moved``."""
        raw = enc(path)
        if entry is None:
            self.order.append(DELETE)
            self.deletes.append(raw)
        else:
            self.order.append(PUT)
            self.puts.append([raw, entry_json(entry), *(fingerprint or _NO_FINGERPRINT)])
        self.row_moves.append(dirdigest.to_blob(moved))
        parent = raw[:max(raw.rfind(b"/"), 0)]
        self.moved[parent] = self.moved.get(parent, 0) + moved

    def build(self, path: str) -> None:
        """A tree change only: ``path`` goes from the tree (its row goes with its dropped parent's)."""
        self.order.append(BUILD)
        self.builds.append(enc(path))

    def record(self) -> list[Any]:
        return [self.drops, bytes(self.order), self.puts, self.deletes, self.builds,
                [[d, dirdigest.to_blob(v)] for d, v in self.moved.items()], self.row_moves]


def tree_changes(record: list[Any]) -> Iterator[tuple[str, Entry | None]]:
    """The tree changes of one spooled batch, in the order they were made."""
    _, order, puts, deletes, builds, _, _ = record
    put = delete = build = 0
    for kind in order:
        if kind == PUT:
            row = puts[put]
            put += 1
            path = dec(row[0])
            yield path, decode_row(path, row[1], tuple(row[2:])).entry
        elif kind == DELETE:
            yield dec(deletes[delete]), None
            delete += 1
        else:
            yield dec(builds[build]), None
            build += 1


class IndexWrite:
    """The write_index side: spooled batches in, rows for ``IndexStore.write_rows`` out."""

    def __init__(self, left_out: Collection[str]) -> None:
        self.left_out = left_out
        self.puts: list[list[Any]] = []
        self.deletes: list[bytes] = []
        self.drops: list[str] = []
        self.moved: dict[bytes, int] = {}       # by encoded directory: decoded once per directory

    def take(self, record: list[Any]) -> None:
        drops, order, puts, deletes, _, moved, row_moves = record
        self.drops += [dec(top) for top in drops]
        if not self.left_out:              # the rows as they are: no step per row
            self.puts += puts
            self.deletes += deletes
            for parent, blob in moved:
                self.moved[parent] = self.moved.get(parent, 0) + dirdigest.from_blob(blob)
            return
        put = delete = 0
        for kind, blob in zip((k for k in order if k != BUILD), row_moves, strict=True):
            if kind == PUT:
                raw, row = puts[put][0], puts[put]
                put += 1
            else:
                raw, row = deletes[delete], None
                delete += 1
            if dec(raw) in self.left_out:
                continue
            parent = raw[:max(raw.rfind(b"/"), 0)]
            self.moved[parent] = self.moved.get(parent, 0) + dirdigest.from_blob(blob)
            if row is None:
                self.deletes.append(raw)
            else:
                self.puts.append(row)

    @property
    def rows(self) -> int:
        return len(self.puts) + len(self.deletes)

    def digests(self) -> dict[str, int]:
        return {dec(path): value for path, value in self.moved.items()}

    def clear(self) -> None:
        self.puts, self.deletes, self.drops, self.moved = [], [], [], {}
