"""Change detection against the local index: pure, no server."""

from __future__ import annotations

from syncd.format.manifest import Entry
from syncd.local.index import LocalIndex, Tracked
from syncd.local.scan import LocalFile
from syncd.local.watch import signature


def _file(ino: int, size: int, mtime: int, mode: int = 0o644) -> LocalFile:
    return LocalFile("file", mode, size, mtime, ino, mtime)


def test_signature_is_zero_only_when_the_tree_matches_the_index() -> None:
    a = _file(1, 10, 100)
    index = LocalIndex("s", 1, {"a": Tracked(Entry("a", "file", 0o644, 100, 10), a.fingerprint),
                                "d": Tracked(Entry("d", "dir", 0o755), None)})
    clean = {"a": a, "d": LocalFile("dir", 0o755, 0, 5, 2, 5)}
    assert signature(index, clean) == 0
    grown = {**clean, "a": _file(1, 11, 101)}
    added = {**clean, "b": _file(3, 1, 1)}
    chmod = {**clean, "a": _file(1, 10, 100, 0o600)}
    removed = {"d": clean["d"]}
    sigs = {signature(index, t) for t in (grown, added, chmod, removed)}
    assert 0 not in sigs and len(sigs) == 4            # each difference is seen, and told apart
    assert signature(index, grown) == signature(index, dict(grown))   # stable while nothing changes
