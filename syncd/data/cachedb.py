"""Batched reads and writes of the chunk cache's diskcache table.

diskcache's ``get`` and ``set`` are one key each, and each is a SQLite write
transaction of its own: ``get`` moves the key's access time (the
least-recently-used bookkeeping), ``set`` selects the old row, inserts, and
asks whether the cache is over its size (``_cull``). That is ~50-100 us of
Python and SQLite per key. A hydrate touches a key per file: py-spy put 30%
of a cold hydrate of 100,000 small files in ``Cache.set`` and 4% in cold
``get`` misses; before, 0.2-0.5 s of a warm re-hydrate of a 1 GiB file
(~1,700 chunks) went to a ``get`` per chunk.

So both are done here for many keys at once, in diskcache's own transaction
(``BEGIN IMMEDIATE``, its locking) and on its schema: one ``SELECT ... WHERE
key IN`` per ``BATCH`` keys, one access-time ``UPDATE`` for the rows found,
an ``executemany`` insert. diskcache's triggers keep its entry count and size
as ``set`` does; values go through its ``Disk`` (``store``, ``fetch``), so a
large value is kept in a file of its own exactly as ``set`` keeps it; eviction
is diskcache's ``_cull``, asked once per key written, as ``set`` asks, until the
cache is under its limit. tests/test_cachedb.py checks both against
diskcache's own ``get`` and ``set``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import diskcache

BATCH = 500   # keys per statement: below SQLite's oldest bound on host parameters (999)
POLICY = "least-recently-used"   # the bookkeeping below is that policy's
_INSERT = ("INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, "
           "mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, ?, ?, ?, ?)")


def _check(cache: diskcache.Cache) -> None:
    if cache.eviction_policy != POLICY:
        raise ValueError(f"batched cache access expects the {POLICY} policy, not {cache.eviction_policy}")


def _marks(n: int) -> str:
    return ",".join("?" * n)


def get_many(cache: diskcache.Cache, keys: list[str]) -> dict[str, object]:
    """``key -> value`` for the ``keys`` the cache holds: what ``cache.get`` returns for each,
    with the access time of each found key moved to now, as ``get`` moves it."""
    found: dict[str, object] = {}
    if not keys:
        return found
    _check(cache)
    with cache._transact() as (sql, _):
        now = time.time()
        for start in range(0, len(keys), BATCH):
            batch = keys[start:start + BATCH]
            rows = sql(f"SELECT rowid, key, mode, filename, value FROM Cache WHERE key IN ({_marks(len(batch))})"
                       " AND raw = 1 AND (expire_time IS NULL OR expire_time > ?)", (*batch, now)).fetchall()
            touched = []
            for rowid, key, mode, filename, value in rows:
                try:
                    found[key] = cache.disk.fetch(mode, filename, value, False)
                except OSError:   # a value file removed meanwhile: a miss, as in Cache.get
                    continue
                touched.append(rowid)
            if touched:
                sql(f"UPDATE Cache SET access_time = ? WHERE rowid IN ({_marks(len(touched))})", (now, *touched))
    return found


def set_many(cache: diskcache.Cache, items: Mapping[str, object]) -> None:
    """``cache.set(key, value)`` for every item, in one transaction: a key already there is
    replaced (its value file, if it had one, removed once the transaction is committed), and the
    cache is culled as ``set`` culls it. Nothing is written if the transaction fails (the value
    files made for it are removed)."""
    if not items:
        return
    _check(cache)
    disk = cache.disk
    stored = [(key, *disk.store(value, False, key=key)) for key, value in items.items()]
    committed = False
    try:
        with cache._transact() as (sql, cleanup):
            now = time.time()
            for start in range(0, len(stored), BATCH):
                batch = stored[start:start + BATCH]
                old = sql(f"SELECT rowid, filename FROM Cache WHERE key IN ({_marks(len(batch))}) AND raw = 1",
                          [row[0] for row in batch]).fetchall()
                if old:
                    sql(f"DELETE FROM Cache WHERE rowid IN ({_marks(len(old))})", [rowid for rowid, _ in old])
                    for _, filename in old:
                        cleanup(filename)
                cache._con.executemany(_INSERT, [(key, now, now, size, mode, filename, value)
                                                 for key, size, mode, filename, value in batch])
                for _ in batch:     # as set(): up to cull_limit rows a key, while over the limit
                    if cache.volume() < cache.size_limit:
                        break
                    cache._cull(now, sql, cleanup)
        committed = True
    finally:
        if not committed:
            for _, _, _, filename, _ in stored:
                if filename is not None:
                    disk.remove(filename)
