"""Pure tests of format v2 (format/tree.py) and of building trees incrementally (MemoryStore)."""

from __future__ import annotations

import base64
import json
import zlib

import pytest

from syncd.engine import trees as engine_trees
from syncd.engine.trees import Builder, TreeStore, diff_trees, upload_packs
from syncd.errors import ManifestError
from syncd.format import manifest, tree
from syncd.format.chunking import content_id
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef, Entry, Stats, TreeRef
from syncd.format.tree import TreeItem
from syncd.store.base import MemoryStore
from tests.treeutil import stored_wide_volume

ID = "a" * 32


def f(name: str, body: bytes = b"x", mtime: int = 1) -> Entry:
    return Entry(name, "file", 0o644, mtime, len(body), (ChunkRef(content_id(body), len(body)),) if body else ())


def stored(doc: object) -> tuple[str, bytes]:
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    return content_id(data), zlib.compress(data)


def file_json(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "type": "file", "mode": 420, "mtime_ns": 1, "size": 0, "chunks": [], **extra}


def test_tree_round_trip_sorts_by_name_bytes_and_encodes_non_utf8_names_as_base64() -> None:
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")          # latin-1 bytes: not UTF-8
    items = [TreeItem(f("zeta")), TreeItem(f(odd)), TreeItem(f("\u00e9t\u00e9")), TreeItem(f("Alpha", b"")),
             TreeItem(Entry("l", "symlink", 0o777, -7, target=b"t\xff".decode("utf-8", "surrogateescape")))]
    tid, data = tree.encode_tree(items)
    assert tid == content_id(data)
    doc = json.loads(data)
    names = [e.get("name") or base64.b64decode(e["name_b64"]) for e in doc["entries"]]
    # byte order: 'Alpha' < 'caf\xe9' < 'l' < 'zeta' < '\xc3\xa9t\xc3\xa9'
    assert names == ["Alpha", b"caf\xe9", "l", "zeta", "\u00e9t\u00e9"]
    assert doc["entries"][2]["target_b64"] == base64.b64encode(b"t\xff").decode()
    back = tree.decode_tree(tree.pack_tree(data), tid)
    assert [i.entry for i in back] == sorted((i.entry for i in items), key=lambda e: tree.name_bytes(e.path))
    assert back[2].entry.mtime_ns == -7


@pytest.mark.parametrize("mutate", [
    lambda d: d.replace(b'"format":2', b'"format":2.0'),            # integer-valued float
    lambda d: d.replace(b'"format":2', b'"format":2,"format":2'),   # duplicate key
    lambda d: d + b" ",                                            # trailing bytes
    lambda d: d + b"{}",
    lambda d: d.replace(b'"mtime_ns":1', b'"mtime_ns":NaN'),
    lambda d: d.replace(b'"mtime_ns":1', b'"mtime_ns":1e0'),
    lambda d: d.replace(b'{"entries"', b'{ "entries"'),              # whitespace
    lambda d: d.replace(b'"name":"a"', b'"name":"\\u0061"'),        # another spelling of the same string
    lambda d: d.replace(b'"name":"a"', b'"name":"\\udc80"'),        # a lone surrogate
    lambda d: d.replace(b'"mode":420', b'"mode":true'),
])
def test_non_canonical_or_non_strict_json_is_rejected(mutate: object) -> None:
    data = json.dumps({"format": 2, "entries": [file_json("a")]}, separators=(",", ":"), sort_keys=True).encode()
    tree.decode_tree(zlib.compress(data), content_id(data))     # the unmutated tree is fine
    bad = mutate(data)  # type: ignore[operator]
    with pytest.raises(ManifestError):
        tree.decode_tree(zlib.compress(bad), content_id(bad))


@pytest.mark.parametrize("entries", [
    [file_json("b"), file_json("a")],                               # not sorted
    [file_json("a"), file_json("a")],                               # repeated
    [file_json("a/b")], [file_json("..")], [file_json("")], [file_json("a\x00")], [file_json("x" * 256)],
    [{**file_json("a"), "name_b64": "YQ=="}],                        # both name fields
    [{k: v for k, v in file_json("a").items() if k != "name"} | {"name_b64": "YQ=="}],  # b64 of valid UTF-8
    [file_json("a", extra=1)],                                      # unknown field
    [{k: v for k, v in file_json("a").items() if k != "mode"}],     # missing field
    [file_json("a", size=1)],                                       # chunks do not add up
    [file_json("a", mtime_ns=1 << 63)],
    [file_json("a", chunks=[[ID.upper(), 1]], size=1)],             # uppercase id
    [{"name": "l", "type": "symlink", "mode": 511, "mtime_ns": 0, "target": "/etc"}],
    [{"name": "d", "type": "dir", "mode": 493, "mtime_ns": 0, "tree": [ID, ID, 0, 0],
      "files": 0, "dirs": 0, "bytes": 0, "links": 0}],               # empty tree reference
])
def test_hostile_tree_entries_are_rejected(entries: list[dict[str, object]]) -> None:
    tid, data = stored({"format": 2, "entries": entries})
    with pytest.raises(ManifestError):
        tree.decode_tree(data, tid)


def test_tree_must_match_its_id_and_be_one_zlib_stream() -> None:
    tid, data = stored({"format": 2, "entries": [file_json("a")]})
    with pytest.raises(ManifestError, match="content hash"):
        tree.decode_tree(data, "b" * 32)
    with pytest.raises(ManifestError, match="zlib"):
        tree.decode_tree(data + b"x", tid)
    with pytest.raises(ManifestError):
        tree.decode_tree(zlib.compress(b" " * (300 << 20)), tid)   # inflates beyond the limit


def test_snapshot_round_trip_and_strict_fields() -> None:
    snap = manifest.Snapshot("v", "o", 3, ID, 1.5, "w", {}, "m", 2, TreeRef(ID, ID, 10, 20), Stats(1, 2, 3, 4))
    sid, data = tree.encode_snapshot(snap)
    back = tree.decode_snapshot(data, sid)
    assert (back.root, back.stats, back.seq, back.parent, back.created) == (snap.root, snap.stats, 3, ID, 1.5)
    doc = json.loads(data)
    for bad in ({**doc, "extra": 1}, {k: v for k, v in doc.items() if k != "root"}, {**doc, "format": 1},
                {**doc, "seq": -1}, {**doc, "parent": "x"}):
        raw = json.dumps(bad, separators=(",", ":"), sort_keys=True).encode()
        with pytest.raises(ManifestError):
            tree.decode_snapshot(raw, content_id(raw))


async def test_one_file_change_rewrites_only_the_trees_on_its_path() -> None:
    store, layout = MemoryStore(), Layout("p", "alice")
    trees = TreeStore(store, layout)
    entries: dict[str, Entry] = {}
    for a in range(5):
        entries[f"d{a}"] = Entry(f"d{a}", "dir", 0o755, 0)
        for b in range(5):
            entries[f"d{a}/e{b}"] = Entry(f"d{a}/e{b}", "dir", 0o755, 0)
            for c in range(20):
                p = f"d{a}/e{b}/f{c}"
                entries[p] = Entry(p, "file", 0o644, 1, 1, (ChunkRef(content_id(p.encode()), 1),))
    first = Builder(trees, "v", None, {})
    await first.apply(dict(entries))
    built = await first.finish()
    assert built.trees_written == 1 + 5 + 25 and len(built.packs) == 1
    assert built.stats == Stats(files=500, dirs=30, bytes=500, links=0)
    await upload_packs(store, layout, "v", built)

    cold = TreeStore(store, layout)                # a reader with nothing cached
    change = {"d3/e1/f7": f("d3/e1/f7", b"new"), "d3/e1/new": f("d3/e1/new"), "d0/e0/f0": None}
    second = Builder(cold, "v", built.root, entries)
    await second.apply(change)
    after = await second.finish()
    assert after.trees_written == 1 + 2 + 2        # root, d3, d3/e1, d0, d0/e0
    assert cold.reads == 5                         # the same five trees read, nothing else
    await upload_packs(store, layout, "v", after)
    flat = await TreeStore(store, layout).flat("v", after.root)
    expected = manifest.apply(entries, change, entries)
    assert flat.keys() == expected.keys()
    assert all(flat[p].same_content(e) for p, e in expected.items())

    fresh = TreeStore(store, layout)               # the diff reads only where tree ids differ
    changes = await diff_trees(fresh, "v", built.root, after.root)
    assert changes.keys() == manifest.diff(entries, flat).keys() == change.keys()
    assert fresh.reads <= 3 * 2                    # two trees per changed level at most
    everything = await diff_trees(TreeStore(store, layout), "v", None, after.root)
    assert everything.keys() == flat.keys()


async def test_builder_follows_apply_merge_rules() -> None:
    store, layout = MemoryStore(), Layout("p", "alice")
    trees = TreeStore(store, layout)
    theirs = {"a": Entry("a", "dir", 0o755, 0), "a/x": f("a/x"), "a/y": f("a/y"), "b": f("b"),
              "c": Entry("c", "dir", 0o700, 0), "c/z": f("c/z")}
    first = Builder(trees, "v", None, {})
    await first.apply(dict(theirs))
    root = (await first.finish()).root
    base = {"a": theirs["a"], "a/x": theirs["a/x"], "b": theirs["b"]}
    changes: manifest.Changes = {"a": None, "a/x": None,            # we deleted a; they added a/y: a stays
                                 "b/inner": f("b/inner"),            # a path below a file makes it a dir
                                 "c": f("c")}                        # a file replaces their subtree
    b = Builder(trees, "v", root, base)
    await b.apply(changes)
    merged = await trees.flat("v", (await b.finish()).root)
    expected = manifest.apply(theirs, changes, base)
    assert sorted(merged) == sorted(expected) == ["a", "a/y", "b", "b/inner", "c"]
    assert merged["c"].kind == "file" and merged["b"].kind == "dir"


async def test_a_coalesced_read_is_decoded_and_reported_tree_by_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """One GET for a directory's 30 subtrees; each is in memory, and reported, as its batch is
    decoded, before the read returns (the mount's find lists the first while the rest decode)."""
    store, layout = MemoryStore(), Layout("p", "alice")
    root, subtrees = await stored_wide_volume(store, layout)
    cold = TreeStore(store, layout)
    await cold.get("v", root)
    monkeypatch.setattr(engine_trees, "DECODE_BATCH", 3 * max(r.size for r in subtrees))   # ~10 batches
    seen: list[tuple[str, bool]] = []
    got = await cold.get_many("v", subtrees, on_tree=lambda tid: seen.append((tid, cold.cached(tid) is not None)))
    assert [tid for tid, _ in seen] == [r.id for r in subtrees]
    assert all(cached for _, cached in seen) and got.keys() == {r.id for r in subtrees}
    assert cold.reads == 2                                   # the root, then all 30 subtrees in one GET
    assert len(engine_trees._batches(subtrees)) >= 10


async def test_a_tampered_tree_in_a_coalesced_read_is_refused_and_none_after_it_is_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch decoding keeps the rejection: the tampered tree is a ManifestError; the trees of the
    batches before it verified and may be used (reported, cached), it and every tree after it are not."""
    store, layout = MemoryStore(), Layout("p", "alice")
    root, subtrees = await stored_wide_volume(store, layout)
    cold = TreeStore(store, layout)
    await cold.get("v", root)
    monkeypatch.setattr(engine_trees, "DECODE_BATCH", 3 * max(r.size for r in subtrees))
    bad = subtrees[16]
    key = layout.tree_pack("v", bad.pack)
    data, _, _ = store.objects[key]
    last = bad.offset + bad.size - 1                       # the zlib stream's checksum: inflating fails
    await store.put(key, data[:last] + bytes([data[last] ^ 0xFF]) + data[last + 1:])
    seen: list[str] = []
    with pytest.raises(ManifestError, match=bad.id):
        await cold.get_many("v", subtrees, on_tree=seen.append)
    batches = engine_trees._batches(subtrees)
    before = [r.id for b in batches[:next(i for i, b in enumerate(batches) if bad in b)] for r in b]
    assert seen == before and len(before) >= 9              # the verified batches before the bad one
    assert all(cold.cached(r.id) is not None for r in subtrees if r.id in before)
    assert all(cold.cached(r.id) is None for r in subtrees if r.id not in before)
    assert cold.reads == 2
