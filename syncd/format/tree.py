"""Format v2 objects: directory trees and snapshots. Pure: no I/O.

A v2 snapshot does not list every path. It names a *root tree*; a tree is one
directory's entries, sorted by the bytes of their names, and a subdirectory's
entry names the tree of that subdirectory. A tree's id is the xxh3-128 of its
canonical bytes (below), so a directory whose content did not change keeps its
id, and a commit that changes one file writes only the trees on that file's
path: every other subtree is shared by id. A reader can list one directory by
reading the trees on its path, and a diff skips every subtree whose id did not
move.

Trees travel packed: the new trees of one commit are compressed one by one
(zlib) and concatenated into a *tree pack* ``trees/<pack id>``; a reference to
a tree is ``[tree id, pack id, offset, size]``. The pack id is chosen at random
by the writer when it opens the pack (a parent must name its children's pack
before the pack is complete, so it cannot be the pack's hash); every tree in
it is verified by its own id, so nothing depends on the pack's name.

Canonical JSON (:func:`canonical`): UTF-8, no whitespace, object keys sorted,
integers only (no floats, NaN or exponents), strings with only ``"``, ``\\``
and U+0000-U+001F escaped, the way Python's ``json.dumps(ensure_ascii=False,
separators=(",", ":"), sort_keys=True)`` writes them. :func:`strict_loads`
accepts exactly that: it parses and re-encodes, and refuses bytes that differ,
which rules out duplicate keys, trailing bytes, floats, NaN and lone
surrogates in one test that a reader in any language can repeat. Snapshots
(one small object per commit) go through it; trees, read and written by the
thousand, go through treewire.py, which makes the same test with msgspec's
typed decoder and encoder (in C) and writes the same bytes.

Names are bytes on disk. In memory syncd holds them as Python strings with
undecodable bytes as surrogate escapes (``os.fsdecode``); on the wire a name
that is valid UTF-8 is ``"name"`` and any other is ``"name_b64"`` (standard
base64 of the raw bytes), so Go, Rust or JS readers decode every name exactly.
Symlink targets use ``"target"`` / ``"target_b64"`` the same way.

Validation here is per tree: names, order, required fields, sizes, ids. Rules
that span trees (a symlink resolved through other symlinks stays inside the
volume) are checked where the whole tree is assembled (manifest.validate_entries).
"""

from __future__ import annotations

import itertools
import json
import zlib
from operator import itemgetter
from typing import Any

from syncd.errors import ManifestError
from syncd.format.chunking import content_id, is_content_id
from syncd.format.manifest import MAX_FILE_SIZE, Entry, Snapshot, Stats, TreeRef
from syncd.format.treewire import (
    MAX_MTIME,
    MAX_NAME,
    MAX_TREE_BYTES,
    MAX_TREE_ENTRIES,
    TreeItem,
    check_name,
    decode_items,
    encode_items,
    name_bytes,
)

__all__ = ["FORMAT_V2", "FORMAT_V3", "FORMAT_WRITE", "MAX_MTIME", "MAX_NAME", "MAX_SNAPSHOT_BYTES", "MAX_TREE_BYTES", "MAX_TREE_ENTRIES",
           "TreeItem", "canonical", "check_name", "decode_snapshot", "decode_tree", "encode_snapshot",
           "encode_tree", "inflate_tree", "name_bytes", "pack_tree", "parse_tree", "ref_from_json",
           "ref_to_json", "sort_key", "strict_loads", "with_path"]

FORMAT_V2 = 2
FORMAT_V3 = 3                      # compressed chunks (format/compress.py) and the chunk index
FORMAT_WRITE = FORMAT_V3           # what writers write; readers read 1, 2 and 3 (docs/FORMAT.md)
SNAPSHOT_FORMATS = (FORMAT_V2, FORMAT_V3)
MAX_SNAPSHOT_BYTES = 1 << 20

_SNAPSHOT_KEYS = frozenset({"format", "volume", "owner", "seq", "parent", "created_ns", "writer", "message",
                            "root", "files", "dirs", "bytes", "links"})


def sort_key(item: TreeItem) -> bytes:
    return name_bytes(item.name)


# ---------------------------------------------------------------- canonical JSON

def canonical(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                          allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError) as exc:
        raise ManifestError(f"value has no canonical encoding: {exc}") from exc


def _no_float(text: str) -> Any:
    raise ManifestError(f"non-integer number {text[:40]!r}")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ManifestError("duplicate key in object")
    return out


def strict_loads(data: bytes, what: str) -> Any:
    """Parse canonical JSON; anything else (another spelling of the same value too) is refused."""
    try:
        value = json.loads(data.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float,
                           object_pairs_hook=_unique)
    except ManifestError as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{what} is not JSON: {exc}") from exc
    if canonical(value) != data:
        raise ManifestError(f"{what} is not in canonical form")
    return value


# ---------------------------------------------------------------- trees

def _int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ManifestError(f"{what} must be an integer in [{low}, {high}], not {str(value)[:40]!r}")
    return value


def ref_to_json(ref: TreeRef) -> list[Any]:
    return [ref.id, ref.pack, ref.offset, ref.size]


def ref_from_json(raw: object, what: str) -> TreeRef:
    if (not isinstance(raw, list) or len(raw) != 4 or not is_content_id(raw[0])
            or not is_content_id(raw[1])):
        raise ManifestError(f"{what}: malformed tree reference {str(raw)[:120]}")
    return TreeRef(raw[0], raw[1], _int(raw[2], f"{what} offset", 0, MAX_FILE_SIZE),
                   _int(raw[3], f"{what} size", 1, MAX_TREE_BYTES))


def encode_tree(items: list[TreeItem]) -> tuple[str, bytes]:
    """``(tree id, canonical bytes)`` of one directory; ``items`` in any order, names unique."""
    try:
        keyed = [(name_bytes(i.entry.path), i) for i in items]
    except UnicodeEncodeError as exc:
        raise ManifestError(f"a name in the tree is neither text nor bytes: {exc}") from exc
    keyed.sort(key=itemgetter(0))
    for (a, item), (b, _) in itertools.pairwise(keyed):
        if a == b:
            raise ManifestError(f"duplicate name in tree: {item.name!r}")
    data = encode_items([i for _, i in keyed])
    return content_id(data), data


def pack_tree(data: bytes) -> bytes:
    """The stored form of a tree's canonical bytes (one zlib stream)."""
    return zlib.compress(data, 6)


def inflate_tree(stored: bytes, expected_id: str) -> bytes:
    """A stored tree's canonical bytes, checked against ``expected_id``."""
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(stored, MAX_TREE_BYTES)
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            raise ManifestError(f"tree {expected_id}: not one complete zlib stream within the size limit")
    except zlib.error as exc:
        raise ManifestError(f"tree {expected_id} is not zlib: {exc}") from exc
    if content_id(data) != expected_id:
        raise ManifestError(f"tree {expected_id} does not match its content hash")
    return data


def decode_tree(stored: bytes, expected_id: str) -> list[TreeItem]:
    """Inflate, verify against ``expected_id`` and validate one stored tree (hostile input)."""
    return parse_tree(inflate_tree(stored, expected_id), expected_id)


def parse_tree(data: bytes, expected_id: str) -> list[TreeItem]:
    """Validate a tree's canonical bytes (already verified against ``expected_id``)."""
    return decode_items(data, f"tree {expected_id}")


def with_path(item: TreeItem, prefix: str) -> Entry:
    """The item's entry under its full path (``prefix`` is its directory, '' at the root)."""
    e = item.entry
    return Entry(f"{prefix}/{e.path}" if prefix else e.path, e.kind, e.mode, e.mtime_ns, e.size, e.chunks, e.target)


# ---------------------------------------------------------------- snapshots

def encode_snapshot(snap: Snapshot) -> tuple[str, bytes]:
    """``(snapshot id, stored bytes)`` of a v2 snapshot: canonical JSON, id = xxh3 of those bytes."""
    if snap.root is None:
        raise ManifestError("a v2 snapshot needs a root tree")
    stats = snap.stats or Stats()
    doc = {"format": FORMAT_WRITE, "volume": snap.volume, "owner": snap.owner, "seq": snap.seq,
           "parent": snap.parent, "created_ns": int(snap.created * 1e9), "writer": snap.writer,
           "message": snap.message, "root": ref_to_json(snap.root), "files": stats.files,
           "dirs": stats.dirs, "bytes": stats.bytes, "links": stats.links}
    data = canonical(doc)
    return content_id(data), data


def decode_snapshot(data: bytes, expected_id: str | None = None) -> Snapshot:
    """Verify and validate a stored v2 snapshot; ``entries`` stay empty (the trees hold them)."""
    if expected_id is not None and content_id(data) != expected_id:
        raise ManifestError(f"snapshot {expected_id} does not match its content hash")
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise ManifestError("snapshot is larger than the size limit")
    doc = strict_loads(data, "snapshot")
    if not isinstance(doc, dict) or set(doc) != _SNAPSHOT_KEYS:
        raise ManifestError(f"snapshot must have exactly the fields {sorted(_SNAPSHOT_KEYS)}")
    if type(doc["format"]) is not int or doc["format"] not in SNAPSHOT_FORMATS:
        raise ManifestError(f"unsupported snapshot format {doc['format']!r}")
    for key in ("volume", "owner", "writer", "message"):
        if not isinstance(doc[key], str):
            raise ManifestError(f"snapshot field {key!r} must be a string")
    parent = doc["parent"]
    if parent is not None and not is_content_id(parent):
        raise ManifestError("snapshot parent is not a valid id")
    stats = Stats(*(_int(doc[k], f"snapshot {k}", 0, MAX_FILE_SIZE) for k in ("files", "dirs", "bytes", "links")))
    return Snapshot(volume=doc["volume"], owner=doc["owner"], seq=_int(doc["seq"], "seq", 0, MAX_FILE_SIZE),
                    parent=parent, created=_int(doc["created_ns"], "created_ns", -MAX_MTIME, MAX_MTIME) / 1e9,
                    writer=doc["writer"], entries={}, message=doc["message"], format=doc["format"],
                    root=ref_from_json(doc["root"], "snapshot root"), stats=stats)
