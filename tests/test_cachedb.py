"""Batched writes of the chunk cache's table (syncd/data/cachedb.py) against diskcache's own
``set``: the same values, counts and sizes, value files kept and removed the same way, culled
under the size limit, and nothing written when the transaction fails. (Batched reads are
checked against ``get`` in test_warm_copies.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import diskcache
import pytest

from syncd.data import cachedb
from syncd.data.cache import REF

LRU = "least-recently-used"


def _open(path: Path, **settings: object) -> diskcache.Cache:
    return diskcache.Cache(str(path), eviction_policy=LRU, **settings)


def _files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.val"))


def test_set_many_stores_what_set_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cachedb, "BATCH", 3)
    first: dict[str, object] = {
        "a:small": b"tiny",
        "a:big": os.urandom(100_000),                  # kept in a file of its own
        "a:ref": (REF, "/x/y", 0, 10, (1, 2, 3, 4, 5)),
        "a:replaced": os.urandom(50_000),
        "a:kept": b"unchanged",
    }
    second: dict[str, object] = {"a:replaced": b"now small", "a:ref": (REF, "/x/z", 5, 1, None), "b:new": b"n"}
    one, many = _open(tmp_path / "one"), _open(tmp_path / "many")
    try:
        for items in (first, second):
            for key, value in items.items():
                one.set(key, value)
            cachedb.set_many(many, items)
        for cache in (one, many):
            assert {k: cache.get(k) for k in cache.iterkeys()} == {**first, **second}
        assert len(many) == len(one) == 6
        assert many.volume() == one.volume()             # the size diskcache counts (its triggers)
        assert len(_files(tmp_path / "many")) == len(_files(tmp_path / "one")) == 1   # a:big; a:replaced's went
        cachedb.set_many(many, {})
        assert len(many) == 6
    finally:
        one.close()
        many.close()


def test_set_many_culls_under_the_size_limit(tmp_path: Path) -> None:
    limit = 1 << 20
    cache = _open(tmp_path / "c", size_limit=limit, cull_limit=4)
    try:
        page = cache.volume()                            # the empty database's own pages
        values = {f"a:{n}": os.urandom(100_000) for n in range(30)}     # 3 MB, each in a file
        cachedb.set_many(cache, values)
        assert cache.volume() < limit + 100_000          # as set() leaves it: at most one value over
        assert 8 <= len(cache) < 30
        assert len(_files(tmp_path / "c")) == len(cache)  # evicted entries' files removed
        assert all(cache.get(k) == values[k] for k in cache.iterkeys())
        assert page < limit
    finally:
        cache.close()


def test_a_failed_set_many_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _open(tmp_path / "c")
    try:
        cachedb.set_many(cache, {"a:before": os.urandom(50_000)})
        monkeypatch.setattr(cachedb, "_INSERT", "INSERT INTO NoSuchTable VALUES (?)")
        with pytest.raises(Exception, match="NoSuchTable"):
            cachedb.set_many(cache, {"a:big": os.urandom(50_000), "a:before": b"x"})
        assert list(cache.iterkeys()) == ["a:before"] and len(cache.get("a:before")) == 50_000
        assert len(_files(tmp_path / "c")) == 1          # the failed write's value file is gone
    finally:
        cache.close()


def test_set_many_refuses_another_eviction_policy(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="least-recently-stored")
    try:
        with pytest.raises(ValueError, match="least-recently-used"):
            cachedb.set_many(cache, {"a:x": b"x"})
    finally:
        cache.close()
