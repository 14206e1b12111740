"""Hostile format-v2 objects: every mutation of a tree or snapshot is refused, and nothing is written.

The v2 counterpart of test_hostile.py's manifest fuzzing (which keeps testing
the v1 reader): the same kinds of attack (unsafe names, type confusion, sizes
that do not add up, malformed ids, hostile symlinks) applied to trees, plus
what canonical JSON adds (non-canonical spellings), end to end behind a valid
HEAD.
"""

from __future__ import annotations

import copy
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine
from syncd.errors import ManifestError
from syncd.format import manifest, tree
from syncd.format.chunking import content_id
from syncd.store.base import put_immutable

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
ID = "a" * 32
Doc = dict[str, Any]


def valid_tree() -> Doc:
    return {"format": 2, "entries": [
        {"name": "f", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 10,
         "chunks": [[ID, 4, "b" * 32, 0], [ID, 6]]},
        {"name": "l", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": "f"},
    ]}


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def stored(doc: Any) -> tuple[str, bytes]:
    data = canonical(doc)
    return content_id(data), zlib.compress(data)


def set_field(i: int, key: str, value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["entries"][i][key] = value
    return mutate


def drop_field(i: int, key: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        del doc["entries"][i][key]
    return mutate


def set_ref(j: int, value: Any, size: int | None = None) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["entries"][0]["chunks"][j] = value
        if size is not None:
            doc["entries"][0]["size"] = size
    return mutate


def duplicate(doc: Doc) -> None:
    doc["entries"].insert(1, copy.deepcopy(doc["entries"][0]))


def unsorted(doc: Doc) -> None:
    doc["entries"].reverse()


TYPE_CONFUSION: list[Any] = [None, True, "1", [], {}, -1, 2**70]
NAMES = ["", ".", "..", "a/b", "/abs", "x\x00", "x" * 256]
TARGETS = ["", "/etc/passwd", "a\x00b", "x/" * 2100, 7, None]

MUTATIONS = st.one_of(
    st.sampled_from(NAMES).map(lambda n: set_field(0, "name", n)),
    st.sampled_from(TARGETS).map(lambda t: set_field(1, "target", t)),
    st.sampled_from([duplicate, unsorted, drop_field(0, "mode"), drop_field(0, "name"), drop_field(1, "target"),
                     set_field(0, "extra", 1), set_field(0, "name_b64", "Zg=="),      # both name fields
                     set_field(0, "target", "f")]),                                 # a field of another type
    st.integers().filter(lambda v: v != 2).map(lambda v: (lambda d: d.__setitem__("format", v))),
    st.sampled_from(["mode", "mtime_ns", "size", "chunks", "type", "name"]).flatmap(
        lambda k: st.sampled_from([v for v in TYPE_CONFUSION if (k, v) not in (("mtime_ns", -1), ("name", "1"))]).map(
            lambda v: set_field(0, k, v))),
    st.integers(min_value=-5, max_value=5).filter(lambda n: n != 0).map(lambda n: set_field(0, "size", 10 + n)),
    st.sampled_from([2**50 + 1, 2**63, -10]).map(lambda n: set_field(0, "size", n)),
    st.sampled_from([1 << 63, -(1 << 63)]).map(lambda n: set_field(0, "mtime_ns", n)),
    st.sampled_from([0o10000, -1]).map(lambda n: set_field(0, "mode", n)),
    st.sampled_from([
        set_ref(1, [ID, 0], size=4), set_ref(1, [ID, (5 << 30) + 1], size=4 + (5 << 30) + 1),
        set_ref(1, ["../../" + "a" * 26, 6]), set_ref(1, [ID.upper(), 6]), set_ref(1, [ID, 6, "not-a-pack", 0]),
        set_ref(1, [ID, 6, "b" * 32, -1]), set_ref(1, [ID, 6, "b" * 32]), set_ref(1, {"id": ID, "size": 6}),
    ]),
)


@FUZZ
@given(MUTATIONS)
def test_every_hostile_tree_mutation_is_a_manifest_error(mutate: Callable[[Doc], None]) -> None:
    doc = valid_tree()
    tree.decode_tree(*reversed(stored(doc)))                 # the unmutated tree is fine
    mutate(doc)
    with pytest.raises(ManifestError):
        tid, data = stored(doc)
        tree.decode_tree(data, tid)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)


@settings(FUZZ, max_examples=60)
@given(st.dictionaries(st.sampled_from(["name", "name_b64", "type", "mode", "mtime_ns", "size", "chunks", "target",
                                        "tree", "files"]), JSON, max_size=8))
def test_arbitrary_tree_entries_are_rejected_or_safe(raw: Doc) -> None:
    doc = valid_tree()
    doc["entries"].append({"type": "file", "name": "zz", **raw})
    try:
        tid, data = stored(doc)
        items = tree.decode_tree(data, tid)
    except ManifestError:
        return
    for item in items:
        name = tree.name_bytes(item.name)
        assert name and b"/" not in name and name not in (b".", b"..") and b"\x00" not in name
        if item.entry.kind == "file":
            assert sum(c.size for c in item.entry.chunks) == item.entry.size


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_as_trees_and_snapshots(data: bytes) -> None:
    with pytest.raises(ManifestError):
        tree.decode_tree(data, content_id(data))
    with pytest.raises(ManifestError):
        tree.decode_tree(zlib.compress(data), content_id(data))
    with pytest.raises(ManifestError):
        tree.decode_snapshot(b"{" + data, content_id(b"{" + data))


# ---------------------------------------------------------------- end to end behind a valid HEAD

async def plant(eng: Engine, volume: str, root_doc: Doc, sub_doc: Doc | None = None,
                wrong_sub_id: bool = False) -> None:
    """Store ``root_doc`` as the root tree (``sub_doc`` as the tree of its dir ``d``) and point HEAD at it."""
    pack, refs = bytearray(), {}
    for name, doc in (("d", sub_doc), ("root", root_doc)):
        if doc is None:
            continue
        if name == "root" and sub_doc is not None:
            doc = copy.deepcopy(doc)
            doc["entries"].insert(0, {"name": "d", "type": "dir", "mode": 0o755, "mtime_ns": 0, "tree": refs["d"],
                                      "files": 0, "dirs": 0, "bytes": 0, "links": 0})
        tid, data = stored(doc)
        refs[name] = ["e" * 32 if wrong_sub_id and name == "d" else tid, "c" * 32, len(pack), len(data)]
        pack += data
    await put_immutable(eng.store, eng.layout.tree_pack(volume, "c" * 32), bytes(pack))
    root = manifest.TreeRef(*refs["root"])
    snap = manifest.Snapshot(volume, eng.layout.owner, 1, None, 0.0, "evil", {}, "", 2, root, manifest.Stats())
    sid, data = tree.encode_snapshot(snap)
    await put_immutable(eng.store, eng.layout.snapshot(volume, sid), data)
    head, _ = await eng.repo.create(volume)
    await eng.repo.advance(head, sid, 1)


def tree_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize("attack", ["bad name", "escaping link", "link escaping through a link", "size",
                                    "unsorted", "tree that is not its id"])
async def test_hostile_v2_volume_behind_a_valid_head_writes_nothing(
        engine: Engine, tmp_path: Path, attack: str) -> None:
    root, sub = valid_tree(), None
    if attack == "bad name":
        sub = {"format": 2, "entries": [{**valid_tree()["entries"][0], "name": ".."}]}
    elif attack == "escaping link":
        sub = {"format": 2, "entries": [{**valid_tree()["entries"][1], "target": "../../outside"}]}
    elif attack == "link escaping through a link":     # d/l1 -> .. (the root), d/l2 -> l1/.. (outside)
        sub = {"format": 2, "entries": [{**valid_tree()["entries"][1], "name": "l1", "target": ".."},
                                        {**valid_tree()["entries"][1], "name": "l2", "target": "l1/.."}]}
    elif attack == "size":
        root["entries"][0]["size"] = 11
    elif attack == "unsorted":
        root["entries"].reverse()
    else:
        sub = {"format": 2, "entries": []}
    await plant(engine, "evil", root, sub, wrong_sub_id=attack == "tree that is not its id")
    sandbox = tmp_path / "sandbox"
    target = sandbox / "inner" / "target"
    target.mkdir(parents=True)
    with pytest.raises(ManifestError):
        await hydrate(engine, "evil", target)
    assert tree_files(sandbox) == ["inner", "inner/target"]
