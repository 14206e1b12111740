"""Pure tests of the snapshot format and the per-path merge (no I/O)."""

from __future__ import annotations

import json
import zlib

import pytest

from syncd.errors import InvalidName, ManifestError
from syncd.format import manifest
from syncd.format.chunking import content_id, spans
from syncd.format.layout import Layout, normalize_volume_name, validate_name
from syncd.format.manifest import ChunkRef, Entry, Snapshot, merge

ID = "0" * 32


def f(path: str, body: bytes = b"x", mtime: int = 1) -> Entry:
    return Entry(path, "file", 0o644, mtime, len(body), (ChunkRef(content_id(body), len(body)),) if body else ())


def d(path: str) -> Entry:
    return Entry(path, "dir", 0o755, 0)


def tree(*entries: Entry) -> dict[str, Entry]:
    return {e.path: e for e in entries}


def snap(entries: dict[str, Entry]) -> Snapshot:
    return Snapshot("vol", "alice", 1, None, 0.0, "test", entries)


def raw_doc(entries: list[dict[str, object]], **extra: object) -> bytes:
    doc = {"format": 1, "volume": "v", "owner": "o", "seq": 1, "parent": None, "created": 0.0,
           "writer": "w", "entries": entries, **extra}
    return zlib.compress(json.dumps(doc).encode())


def test_encode_decode_round_trip_and_id_is_content_hash() -> None:
    s = snap(tree(d("a"), f("a/b.txt", b"hello"), Entry("a/l", "symlink", 0o777, 5, target="b.txt")))
    sid, data = manifest.encode(s)
    assert sid == content_id(data)
    back = manifest.decode(data, sid)
    assert back.entries == s.entries and back.volume == "vol"
    with pytest.raises(ManifestError, match="content hash"):
        manifest.decode(data[:-1] + bytes([data[-1] ^ 1]), sid)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "", "a\x00b"])
def test_unsafe_paths_are_rejected(path: str) -> None:
    with pytest.raises(ManifestError):
        manifest.decode(raw_doc([{"path": path, "type": "dir", "mode": 0o755, "mtime_ns": 0}]))


@pytest.mark.parametrize("target", ["/etc", "../x", "../../x", "a/../../.."])
def test_escaping_symlinks_are_rejected(target: str) -> None:
    entries = [{"path": "l", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": target}]
    with pytest.raises(ManifestError, match="leaves the volume"):
        manifest.decode(raw_doc(entries))


def test_structural_lies_are_rejected() -> None:
    dup = [{"path": "a", "type": "dir", "mode": 0o755, "mtime_ns": 0}] * 2
    with pytest.raises(ManifestError, match="duplicate"):
        manifest.decode(raw_doc(dup))
    orphan = [{"path": "a/b", "type": "dir", "mode": 0o755, "mtime_ns": 0}]
    with pytest.raises(ManifestError, match="parent"):
        manifest.decode(raw_doc(orphan))
    short = [{"path": "f", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": 10, "chunks": [[ID, 5]]}]
    with pytest.raises(ManifestError, match="add up"):
        manifest.decode(raw_doc(short))
    with pytest.raises(ManifestError, match="unsupported snapshot format"):
        manifest.decode(raw_doc([], format=99))
    with pytest.raises(ManifestError, match="zlib"):
        manifest.decode(b"not zlib at all")


def test_decompression_bomb_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(ManifestError, match="limit"):
        manifest.decode(zlib.compress(b" " * 100_000))


def test_merge_keeps_disjoint_changes_from_both_sides() -> None:
    base = tree(f("a"), f("b"))
    ours = tree(f("a", b"ours"), f("b"), f("c"))
    theirs = tree(f("a"), f("b", b"theirs"), f("d"))
    merged = merge(base, ours, theirs)
    assert merged["a"].same_content(f("a", b"ours"))
    assert merged["b"].same_content(f("b", b"theirs"))
    assert set(merged) == {"a", "b", "c", "d"}


def test_merge_same_path_later_commit_wins_and_deletes_apply() -> None:
    base = tree(f("a"), f("gone"))
    ours = tree(f("a", b"ours"))
    theirs = tree(f("a", b"theirs"), f("gone"))
    merged = merge(base, ours, theirs)
    assert merged["a"].same_content(f("a", b"ours"))
    assert "gone" not in merged


def test_merge_keeps_directory_that_the_other_side_filled() -> None:
    base = tree(d("dir"), f("dir/x"))
    ours: dict[str, Entry] = {}
    theirs = tree(d("dir"), f("dir/x"), f("dir/new"))
    merged = merge(base, ours, theirs)
    assert set(merged) == {"dir", "dir/new"}
    manifest.validate_entries(merged)


def test_merge_file_replacing_their_directory() -> None:
    base: dict[str, Entry] = {}
    ours = tree(f("p", b"file"))
    theirs = tree(d("p"), f("p/child"))
    merged = merge(base, ours, theirs)
    assert set(merged) == {"p"} and merged["p"].kind == "file"


def test_names() -> None:
    assert validate_name("my-volume") == "my-volume"
    assert normalize_volume_name("/my_volume") == "my_volume"
    for bad in ["", ".", "..", "a/b", "-x", "x" * 64, "über", "a b", "//x", "../x"]:
        with pytest.raises(InvalidName):
            normalize_volume_name(bad)
    with pytest.raises(InvalidName):
        Layout("volumes", "../other")
    with pytest.raises(InvalidName):
        Layout("volumes", "alice").chunk("v", "../../x")
    assert Layout("volumes", "alice").head("v") == "volumes/alice/v/HEAD"


def test_spans() -> None:
    assert spans(0, 4) == []
    assert spans(10, 4) == [(0, 4), (4, 4), (8, 2)]
