"""The local index in SQLite: row-level writes, several processes, migration, endpoint-independent keys."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.wiring import open_engine
from syncd.format.manifest import ChunkRef, Entry, entry_to_json
from syncd.local.index import IndexStore, LocalIndex, Tracked, index_key


def _tracked(i: int, size: int = 10) -> Tracked:
    path = f"d{i % 7}/f{i}"
    return Tracked(Entry(path, "file", 0o644, i, size, (ChunkRef(f"{i:032x}", size),)), (i, size, i, i))


def _index(n: int) -> LocalIndex:
    files = {f"d{j}": Tracked(Entry(f"d{j}", "dir", 0o755, 1), None) for j in range(7)}
    files.update({t.entry.path: t for t in map(_tracked, range(n))})
    return LocalIndex("snap1", 1, files)


def _db_rows(state: Path) -> int:
    with sqlite3.connect(state / "index" / "index.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM files").fetchone()[0])


async def test_save_writes_only_the_rows_that_changed(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "state", "b|p|o")
    index = _index(1000)
    assert await store.save("v", tmp_path / "dir", index) == 1007
    index.files["d1/f1"] = _tracked(1, size=11)                  # one file changed
    del index.files["d2/f2"]                                      # one removed
    index.snapshot, index.seq = "snap2", 2
    assert await store.save("v", tmp_path / "dir", index) == 2
    # another process (a fresh store: no base in memory) also writes only what differs
    other = IndexStore(tmp_path / "state", "b|p|o")
    index.files["d3/f3"] = _tracked(3, size=12)
    assert await other.save("v", tmp_path / "dir", index) == 1
    # the first store writes what differs from the rows it saw last (d3 too, to the same value)
    index.files["d4/f4"] = _tracked(4, size=13)
    assert await store.save("v", tmp_path / "dir", index) == 2
    loaded = await IndexStore(tmp_path / "state", "b|p|o").load("v", tmp_path / "dir")
    assert loaded == index and _db_rows(tmp_path / "state") == 1006
    assert not list((tmp_path / "state" / "index").glob("*.json"))


async def test_update_rows_and_names_that_are_not_utf8(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "state", "b|p|o")
    odd = "caf\udce9"                                              # b"caf\xe9" as os.scandir returns it
    await store.update("v", tmp_path, "s1", 1, {
        "a": Tracked(Entry("a", "dir", 0o755, 1), None),
        "a/x": _tracked(1), odd: Tracked(Entry(odd, "symlink", 0o777, 2, target="a/x"), None),
        "ab": _tracked(2)})
    assert set(await store.rows("v", tmp_path, [odd, "nope"])) == {odd}
    assert set(await store.rows("v", tmp_path, [], subtrees=["a"])) == {"a/x"}   # not "ab"
    await store.update("v", tmp_path, "s2", 2, {"a/x": None})
    loaded = await store.load("v", tmp_path)
    assert set(loaded.files) == {"a", odd, "ab"} and loaded.snapshot == "s2"
    assert loaded.files[odd].entry.target == "a/x"
    gen = await store.generation("v", tmp_path)
    await store.forget("v", tmp_path)
    assert gen is not None and await store.generation("v", tmp_path) is None
    assert not await store.exists("v", tmp_path)


async def test_a_json_index_is_migrated_on_first_use(tmp_path: Path) -> None:
    state, legacy = tmp_path / "state", "http://old:1|b|p|o"
    index = _index(20)
    files = {}
    for p, t in index.files.items():
        raw = entry_to_json(t.entry)
        if t.fingerprint:
            raw["fp"] = list(t.fingerprint)
        files[p] = raw
    old = state / "index" / f"{index_key(legacy, 'v', tmp_path)}.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"format": 1, "snapshot": "snap1", "seq": 1, "files": files}))
    store = IndexStore(state, "b|p|o", legacy)
    assert await store.exists("v", tmp_path)
    assert await store.load("v", tmp_path) == index
    assert not old.exists() and old.with_name(old.name + ".migrated").exists()


def _writer(state: str, worker: int) -> None:
    import asyncio

    async def run() -> None:
        store = IndexStore(Path(state), "b|p|o")
        for i in range(40):
            await store.update("v", Path(state) / "dir", f"s{i}", i, {f"w{worker}/f{i}": _tracked(i)})
            async with store.locked("v", Path(state) / "dir"):
                index = await store.load("v", Path(state) / "dir")
                index.files[f"w{worker}/g{i}"] = _tracked(i)
                await store.save("v", Path(state) / "dir", index)
    asyncio.run(run())


async def test_processes_sharing_one_index_lose_no_row(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    loaded = await IndexStore(tmp_path, "b|p|o").load("v", tmp_path / "dir")
    assert len(loaded.files) == 3 * 80


def _other_spelling(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    host = "localhost" if parts.hostname == "127.0.0.1" else "127.0.0.1"
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))


async def test_the_index_is_found_through_another_endpoint_spelling(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(200):
        (src / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 10}" / f"f{i}").write_text(f"{i}\n")
    assert config.s3_endpoint is not None
    async with open_engine(config) as engine:
        first = await commit(engine, "spelled", src)
    assert first.files_read == 200
    (src / "d3" / "f3").write_text("changed\n")
    async with open_engine(config.replace(s3_endpoint=_other_spelling(config.s3_endpoint))) as engine:
        again = await commit(engine, "spelled", src)
    assert (again.files_read, again.changed, again.merged) == (1, 1, False)


def test_the_fast_row_and_reference_writers_write_the_formats_json() -> None:
    """indexrows.entry_json and chunkindex.ref_text write JSON by hand; if they ever differ from the
    format's encoders, entry_json quietly steps aside (at import) and ref_text would be wrong:
    either is a failure here."""
    from syncd.format.chunkindex import ref_json, ref_text
    from syncd.local import indexrows

    assert indexrows._FAST_JSON
    for ref in (ChunkRef("a" * 32, 7), ChunkRef("b" * 32, 0, "c" * 32, 9), ChunkRef("d" * 32, 5, "c" * 32, 0, 3)):
        assert ref_text(ref) == json.dumps(ref_json(ref), separators=(",", ":"))
        entry = Entry("x/y", "file", 0o644, 12, ref.size, (ref, ref))
        raw = entry_to_json(entry)
        raw.pop("path")
        assert indexrows.entry_json(entry) == json.dumps(raw, separators=(",", ":"))
