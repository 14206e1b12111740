"""The msgspec tree codec (format/treewire.py) against the format's own definition.

docs/FORMAT.md §3 defines canonical JSON as what ``json.dumps(ensure_ascii=False,
separators=(",", ":"), sort_keys=True)`` writes. The codec writes and checks
trees with msgspec instead, so these tests hold it to that definition: the
same bytes for every code point and every shape of entry, the same trees
accepted, and every rejection of §8 that types alone could have let through.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.errors import ManifestError
from syncd.format import tree
from syncd.format.chunking import content_id
from syncd.format.manifest import ChunkRef, Entry, Stats, TreeRef
from syncd.format.tree import TreeItem

ID, PACK = "a" * 32, "b" * 32


def reference(doc: Any) -> bytes:
    """Canonical bytes as the format defines them (the stdlib, not the codec)."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def reference_tree(items: list[TreeItem]) -> bytes:
    """A tree encoded the way FORMAT.md §5 spells it, entry by entry, with the stdlib."""
    def text(out: dict[str, Any], key: str, value: str) -> None:
        raw = os.fsencode(value)
        try:
            out[key] = raw.decode()
        except UnicodeDecodeError:
            out[key + "_b64"] = base64.b64encode(raw).decode()

    entries = []
    for i in sorted(items, key=lambda i: os.fsencode(i.name)):
        e = i.entry
        out: dict[str, Any] = {"type": e.kind, "mode": e.mode, "mtime_ns": e.mtime_ns}
        text(out, "name", e.path)
        if e.kind == "file":
            out.update(size=e.size, chunks=[[c.id, c.size] if c.pack is None else
                                            [c.id, c.size, c.pack, c.offset] + ([c.stored] if c.stored else [])
                                            for c in e.chunks])
        elif e.kind == "symlink":
            text(out, "target", e.target or "")
        else:
            assert i.tree is not None and i.stats is not None
            out.update(tree=[i.tree.id, i.tree.pack, i.tree.offset, i.tree.size], files=i.stats.files,
                       dirs=i.stats.dirs, bytes=i.stats.bytes, links=i.stats.links)
        entries.append(out)
    return reference({"format": 3, "entries": entries})


def test_strings_are_written_as_the_stdlib_writes_them_for_every_code_point() -> None:
    scalars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    enc = msgspec.json.Encoder(order="sorted")
    assert enc.encode("".join(scalars)) == reference("".join(scalars))
    for c in [chr(c) for c in range(0x80)] + ["\u2028", "\u2029", "\ufeff", "\U0010ffff"]:
        assert enc.encode(c) == reference(c), repr(c)


names = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60),
    st.binary(min_size=1, max_size=60).map(os.fsdecode),
).filter(lambda n: "/" not in n and "\x00" not in n and n not in (".", ".."))


@st.composite
def items(draw: st.DrawFn) -> TreeItem:
    name, mode, mtime = draw(names), draw(st.integers(0, 0o7777)), draw(st.integers(-(1 << 62), 1 << 62))
    kind = draw(st.sampled_from(["file", "dir", "symlink"]))
    if kind == "dir":
        ref = TreeRef(content_id(name.encode("utf-8", "surrogateescape")), PACK, draw(st.integers(0, 1 << 40)),
                      draw(st.integers(1, 256 << 20)))
        return TreeItem(Entry(name, "dir", mode, mtime), ref, Stats(*draw(st.lists(st.integers(0, 1 << 50),
                                                                                   min_size=4, max_size=4))))
    if kind == "symlink":
        return TreeItem(Entry(name, "symlink", mode, mtime, target=draw(names)))
    sizes = draw(st.lists(st.integers(1, 5 << 30), max_size=3))
    chunks = tuple(ChunkRef(content_id(bytes([n])), s) if n % 2 else ChunkRef(content_id(bytes([n])), s, PACK, n)
                   for n, s in enumerate(sizes))
    return TreeItem(Entry(name, "file", mode, mtime, sum(sizes), chunks))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(items(), max_size=12, unique_by=lambda i: os.fsencode(i.name)))
def test_codec_writes_the_reference_bytes_and_reads_them_back(tree_items: list[TreeItem]) -> None:
    tid, data = tree.encode_tree(tree_items)
    assert data == reference_tree(tree_items)
    back = tree.decode_tree(tree.pack_tree(data), tid)
    assert back == sorted(tree_items, key=lambda i: os.fsencode(i.name))


def file_json(name: str = "a", **extra: object) -> dict[str, object]:
    return {"name": name, "type": "file", "mode": 420, "mtime_ns": 1, "size": 1,
            "chunks": [[ID, 1, PACK, 0]], **extra}


def dir_json(ref: object) -> dict[str, object]:
    return {"name": "d", "type": "dir", "mode": 493, "mtime_ns": 0, "tree": ref,
            "files": 0, "dirs": 0, "bytes": 0, "links": 0}


def rejected(doc: object) -> None:
    data = reference(doc)
    with pytest.raises(ManifestError):
        tree.decode_tree(zlib.compress(data), content_id(data))


@pytest.mark.parametrize("entries", [
    [file_json(chunks=[[ID + "\n", 1]])],                          # an id the pattern's '$' would let through
    [file_json(chunks=[[ID, 1, PACK + "\n", 0]])],
    [dir_json([ID + "\n", PACK, 0, 1])],
    [dir_json([ID, PACK, 0, 1, 5])],                               # a tree reference of five
    [dir_json([ID, PACK, 0])],                                     # or of three elements
    [dir_json([ID, PACK.upper(), 0, 1])],
    [dir_json([ID, PACK, -1, 1])],
    [dir_json([ID, PACK, 0, (256 << 20) + 1])],
    [file_json(chunks=[[ID, 1, PACK]])],                           # a chunk reference of three
    [file_json(chunks=[[ID, 1, PACK, 0, 0]])],                     # or five elements
    [file_json(chunks=[[ID, 1, None, None]])],
    [file_json(chunks=[[ID, True]])],
    [file_json(chunks=[[1, ID]])],
    [file_json(chunks=[[ID, 0]], size=0)],                         # a chunk of size 0
    [file_json(chunks=[[ID, (5 << 30) + 1]], size=(5 << 30) + 1)],
    [file_json(chunks=[ID])],
    [file_json(size=1 << 51, chunks=[])],
    [file_json(mode=0o10000)],
    [file_json(name="\u00e9" * 128)],                              # 256 bytes in 128 characters
    [{"name": "l", "type": "symlink", "mode": 511, "mtime_ns": 0, "target": "x" * 4097}],
    [{"name": "l", "type": "symlink", "mode": 511, "mtime_ns": 0, "target": ""}],
    [{"name": "l", "type": "symlink", "mode": 511, "mtime_ns": 0, "target": "a\x00"}],
    [{"name": "l", "type": "symlink", "mode": 511, "mtime_ns": 0}],                 # no target
    [{"name": "l", "type": "symlink", "mode": 511, "mtime_ns": 0, "target": "a", "target_b64": "YQ=="}],
    [{"name": "l", "type": "symlink", "mode": 511, "mtime_ns": 0, "target_b64": "/w=x"}],   # bad base64
    [{**file_json(), "type": "fifo"}],
    [{**file_json(), "tree": [ID, PACK, 0, 1]}],                   # a field of another type
    [{k: v for k, v in file_json().items() if k != "type"}],
    [{k: v for k, v in file_json().items() if k != "name"}],       # neither name field
    [file_json("\u00e9"), file_json("z")],                         # UTF-8 order: 'z' < 'é'
])
def test_what_types_cannot_say_is_still_rejected(entries: list[dict[str, object]]) -> None:
    rejected({"format": 2, "entries": entries})


@pytest.mark.parametrize("doc", [
    {"format": 4, "entries": []}, {"format": "2", "entries": []}, {"format": 2}, {"entries": []},
    {"format": 2, "entries": [], "extra": 0}, {"format": 2, "entries": {}}, [], "tree",
])
def test_the_tree_object_itself_is_checked(doc: object) -> None:
    rejected(doc)


@pytest.mark.parametrize("spelling", [
    b'{"entries":[],"format":2}\n', b'{"format":2,"entries":[]}', b'{"entries":[],"format":02}',
    b'{"entries":[],"format":2,"format":2}', b'{"entries":[],"format":-0}', b'\xef\xbb\xbf{"entries":[],"format":2}',
    b'{"entries":[{"chunks":[],"mode":420,"mtime_ns":1,"name":"a\\/b","size":0,"type":"file"}],"format":2}',
    b'{"entries":[{"chunks":[],"mode":420,"mtime_ns":1,"name":"\\u00e9","size":0,"type":"file"}],"format":2}',
    b'{"entries":[{"chunks":[],"mode":420,"mtime_ns":1,"name":"\xc3","size":0,"type":"file"}],"format":2}',
    b'{"entries":[{"chunks":[],"mode":420,"mtime_ns":1,"name":"\\ud800","size":0,"type":"file"}],"format":2}',
    b'{"entries":[{"chunks":[],"mode":420,"mtime_ns":1,"name":"a","size":0,"type":"file","type":"file"}],'
    b'"format":2}',
    b'{"entries":[{"chunks":[],"mode":420,"mtime_ns":1,"name":"a","name":"b","size":0,"type":"file"}],"format":2}',
])
def test_other_spellings_of_a_valid_tree_are_rejected(spelling: bytes) -> None:
    with pytest.raises(ManifestError):
        tree.parse_tree(spelling, content_id(spelling))


def test_control_characters_and_non_utf8_names_round_trip() -> None:
    odd = [TreeItem(Entry(n, "file", 0o644, 0)) for n in ("tab\there", "q\"uote", "back\\slash", "\x7f", "\u2028",
                                                           "nl\n", os.fsdecode(b"\xff\xfe"), "\x01")]
    tid, data = tree.encode_tree(odd)
    assert data == reference_tree(odd)
    assert tree.parse_tree(data, tid) == sorted(odd, key=lambda i: os.fsencode(i.name))


def test_a_name_that_is_neither_text_nor_bytes_is_refused_on_encode() -> None:
    with pytest.raises(ManifestError):
        tree.encode_tree([TreeItem(Entry("\ud800x", "file", 0o644, 0))])    # a lone surrogate, not an escape
    with pytest.raises(ManifestError, match="duplicate"):
        tree.encode_tree([TreeItem(Entry("a", "file", 0o644, 0)), TreeItem(Entry("a", "file", 0o600, 0))])
