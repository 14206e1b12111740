"""Snapshots: what a volume contains at one commit. Pure: no I/O.

A snapshot maps each path to an :class:`Entry` (file, dir or symlink) and names
its parent snapshot, so snapshots form a history. It is stored as zlib-compressed
UTF-8 JSON and named by the xxh3-128 of those stored bytes, which makes it
immutable and self-checking: whoever fetches ``snapshots/<id>`` re-hashes it.

:func:`decode` treats its input as hostile. Before any byte is written to disk
it rejects unknown format versions, absolute paths, ``.``/``..`` components,
duplicate paths, entries whose parent is not a directory in the snapshot,
symlinks that resolve outside the volume (also by way of other symlinks), chunk lists that do not add up to the
file size, malformed ids and absurd sizes or counts.

:func:`merge` is the per-path three-way merge used when another writer advanced
the commit point first: our changes (base -> ours) are replayed on top of their
snapshot, so changes to different paths both survive and a path changed on
both sides takes our (the later) version; theirs stays in the history.
"""

from __future__ import annotations

import bisect
import json
import posixpath
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from syncd.errors import ManifestError
from syncd.format.chunking import content_id, is_content_id

FORMAT_VERSION = 1
MAX_ENTRIES = 10_000_000
MAX_FILE_SIZE = 1 << 50          # 1 PiB
MAX_CHUNK_SIZE = 5 << 30         # S3's single-object PUT limit
MAX_PATH = 4096                  # PATH_MAX: a path or link target is shorter (the kernel counts the NUL)
MAX_NAME = 255                   # NAME_MAX: bytes of one path component
RESERVED_PREFIX = ".syncd-tmp-"  # hydrate's temporary files; never a snapshot entry
MAX_MANIFEST_BYTES = 1 << 31     # decompressed
MAX_COMPRESSED = 16 << 20        # format 3: the largest chunk stored compressed (format/compress.py)

Kind = Literal["file", "dir", "symlink"]
KINDS: frozenset[str] = frozenset({"file", "dir", "symlink"})


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Where one chunk lives: its own object, or ``size`` bytes at ``offset`` of a pack.

    ``stored`` (format 3) is non-zero for a chunk kept zstd-compressed in its pack:
    the ``stored`` bytes at ``offset`` inflate to the ``size`` plain bytes the id
    names (format/compress.py). ``size`` is always the plain size.
    """

    id: str
    size: int
    pack: str | None = None
    offset: int = 0
    stored: int = 0

    @property
    def stored_size(self) -> int:
        """Bytes the chunk takes in its object (the compressed size, if compressed)."""
        return self.stored or self.size

    @property
    def end(self) -> int:
        """Where the chunk's stored bytes end in its pack."""
        return self.offset + (self.stored or self.size)


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    kind: Kind
    mode: int = 0o644
    mtime_ns: int = 0
    size: int = 0
    chunks: tuple[ChunkRef, ...] = ()
    target: str | None = None

    def same_content(self, other: Entry | None) -> bool:
        """Equal in everything a hydrate would write (locations may differ)."""
        if other is None or other.kind != self.kind or other.mode != self.mode:
            return False
        if self.kind == "file":
            return (other.size == self.size and other.mtime_ns == self.mtime_ns
                    and [c.id for c in other.chunks] == [c.id for c in self.chunks])
        return other.target == self.target


@dataclass(frozen=True, slots=True)
class TreeRef:
    """Where a tree is stored: ``size`` compressed bytes at ``offset`` of tree pack ``pack``."""

    id: str
    pack: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Stats:
    """What a subtree holds, below its directory: counts, file bytes, symlinks (informational)."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    links: int = 0

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.files + other.files, self.dirs + other.dirs, self.bytes + other.bytes,
                     self.links + other.links)


@dataclass(frozen=True)
class Snapshot:
    volume: str
    owner: str
    seq: int
    parent: str | None
    created: float
    writer: str
    entries: Mapping[str, Entry] = field(default_factory=dict)
    message: str = ""
    format: int = FORMAT_VERSION
    root: TreeRef | None = None      # v2: the root tree (tree.py); entries are then loaded from trees
    stats: Stats | None = None       # v2: what the root tree holds

    @property
    def total_bytes(self) -> int:
        if self.stats is not None:
            return self.stats.bytes
        return sum(e.size for e in self.entries.values())

    @property
    def total_files(self) -> int:
        if self.stats is not None:
            return self.stats.files
        return sum(e.kind == "file" for e in self.entries.values())


# ---------------------------------------------------------------- encoding

def _ref_to_json(ref: ChunkRef) -> list[Any]:
    if ref.pack is None:
        return [ref.id, ref.size]
    return [ref.id, ref.size, ref.pack, ref.offset] if not ref.stored else [ref.id, ref.size, ref.pack, ref.offset,
                                                                             ref.stored]


def entry_to_json(e: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"path": e.path, "type": e.kind, "mode": e.mode, "mtime_ns": e.mtime_ns}
    if e.kind == "file":
        out["size"] = e.size
        out["chunks"] = [_ref_to_json(c) for c in e.chunks]
    elif e.kind == "symlink":
        out["target"] = e.target
    return out


def encode(snap: Snapshot) -> tuple[str, bytes]:
    """Serialise ``snap``; returns ``(snapshot_id, stored_bytes)``."""
    validate_entries(snap.entries)
    doc = {
        "format": FORMAT_VERSION,
        "volume": snap.volume,
        "owner": snap.owner,
        "seq": snap.seq,
        "parent": snap.parent,
        "created": snap.created,
        "writer": snap.writer,
        "message": snap.message,
        "entries": [entry_to_json(snap.entries[p]) for p in sorted(snap.entries)],
    }
    raw = zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)
    return content_id(raw), raw


def decode(data: bytes, expected_id: str | None = None) -> Snapshot:
    """Parse and validate stored snapshot bytes (hostile input)."""
    if expected_id is not None and content_id(data) != expected_id:
        raise ManifestError(f"snapshot {expected_id} does not match its content hash")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(data, MAX_MANIFEST_BYTES)
        if inflater.unconsumed_tail:
            raise ManifestError("snapshot is larger than the decompressed size limit")
        doc = json.loads(text)
    except (zlib.error, ValueError, RecursionError) as exc:
        raise ManifestError(f"snapshot is not zlib-compressed JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError("snapshot must be a JSON object")
    version = doc.get("format")
    if type(version) is not int or version != FORMAT_VERSION:   # not True, not 1.0
        raise ManifestError(f"unsupported snapshot format {version!r} (this syncd reads {FORMAT_VERSION})")
    raw_entries = _get(doc, "entries", list)
    if len(raw_entries) > MAX_ENTRIES:
        raise ManifestError(f"snapshot has {len(raw_entries)} entries; the limit is {MAX_ENTRIES}")
    entries: dict[str, Entry] = {}
    for raw in raw_entries:
        entry = entry_from_json(raw)
        if entry.path in entries:
            raise ManifestError(f"duplicate path in snapshot: {entry.path!r}")
        entries[entry.path] = entry
    validate_entries(entries)
    parent = doc.get("parent")
    if parent is not None and not is_content_id(parent):
        raise ManifestError("snapshot parent is not a valid id")
    return Snapshot(
        volume=_get(doc, "volume", str), owner=_get(doc, "owner", str), seq=_nonneg(doc.get("seq"), "seq"),
        parent=parent, created=float(_get(doc, "created", (int, float))), writer=_get(doc, "writer", str),
        message=str(doc.get("message", "")), entries=entries,
    )


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ManifestError(f"snapshot field {key!r} is missing or has the wrong type")
    return value


def _nonneg(value: object, what: str, limit: int = MAX_FILE_SIZE) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ManifestError(f"{what} must be an integer in [0, {limit}], not {value!r}")
    return value


def entry_from_json(raw: object) -> Entry:
    if not isinstance(raw, dict):
        raise ManifestError("snapshot entry must be an object")
    path, kind = raw.get("path"), raw.get("type")
    if not isinstance(path, str) or not isinstance(kind, str) or kind not in KINDS:
        raise ManifestError(f"snapshot entry has a bad path or type: {str(raw)[:200]}")
    mode = _nonneg(raw.get("mode"), "mode", 0o7777)
    mtime = raw.get("mtime_ns")
    if not isinstance(mtime, int) or isinstance(mtime, bool) or abs(mtime) > 1 << 62:
        raise ManifestError(f"{path!r}: bad mtime_ns")
    if kind == "symlink":
        target = raw.get("target")
        if not isinstance(target, str):
            raise ManifestError(f"{path!r}: symlink without a target")
        return Entry(path, "symlink", mode, mtime, target=target)
    if kind == "dir":
        return Entry(path, "dir", mode, mtime)
    chunks_raw = raw.get("chunks")
    if not isinstance(chunks_raw, list):
        raise ManifestError(f"{path!r}: file without a chunk list")
    chunks = tuple(_ref_from_json(path, c) for c in chunks_raw)
    return Entry(path, "file", mode, mtime, _nonneg(raw.get("size"), f"{path!r} size"), chunks)


def _ref_from_json(path: str, raw: object) -> ChunkRef:
    if not isinstance(raw, list) or len(raw) not in (2, 4, 5) or not is_content_id(raw[0]):
        raise ManifestError(f"{path!r}: malformed chunk reference {str(raw)[:120]}")
    size = _nonneg(raw[1], f"{path!r} chunk size", MAX_CHUNK_SIZE)
    if size == 0:
        raise ManifestError(f"{path!r}: empty chunk")
    if len(raw) == 2:
        return ChunkRef(raw[0], size)
    if not is_content_id(raw[2]):
        raise ManifestError(f"{path!r}: malformed pack id")
    offset = _nonneg(raw[3], f"{path!r} pack offset")
    if len(raw) == 4:
        return ChunkRef(raw[0], size, raw[2], offset)
    stored = _nonneg(raw[4], f"{path!r} stored size", MAX_COMPRESSED)
    if not 0 < stored < size or size > MAX_COMPRESSED:
        raise ManifestError(f"{path!r}: a compressed chunk must be at most {MAX_COMPRESSED} bytes and shrink")
    return ChunkRef(raw[0], size, raw[2], offset, stored)


# ---------------------------------------------------------------- validation

def check_path(path: object) -> str:
    """A relative POSIX path with no empty, '.' or '..' components, storable on Linux.

    Components are at most NAME_MAX (255) bytes and none is a reserved
    ``.syncd-tmp-*`` name (hydrate's temporary files, which FORMAT.md reserves):
    both are refused here, before any byte of the snapshot is written, rather
    than half-way through a hydrate.
    """
    if (not isinstance(path, str) or not path or len(path) > MAX_PATH or path.startswith("/")
            or "\x00" in path):
        raise ManifestError(f"unsafe path in snapshot: {str(path)[:200]!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ManifestError(f"unsafe path in snapshot: {path!r}")
        if part.startswith(RESERVED_PREFIX):
            raise ManifestError(f"reserved name in snapshot: {path[:200]!r}")
        try:
            size = len(part.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError as exc:
            raise ManifestError(f"path in snapshot is not a file name: {path[:200]!r}") from exc
        if size > MAX_NAME:
            raise ManifestError(f"path component of {size} bytes (the limit is {MAX_NAME}): {path[:200]!r}")
    return path


def symlink_stays_inside(path: str, target: str) -> bool:
    """True when a symlink at ``path`` pointing to ``target`` resolves inside the volume (lexically)."""
    if not target or target.startswith("/") or "\x00" in target or len(target) >= MAX_PATH:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved != ".." and not resolved.startswith("../")


MAX_LINK_FOLLOWS = 40   # the kernel's limit per path lookup (MAXSYMLINKS)


class _Node:
    """A directory position while resolving: an entry of the snapshot, or ``virtual`` levels below one.

    Components the snapshot does not have (and files, treated like
    directories to stay on the safe side) cannot hold symlinks, so below them
    only the depth matters: ``..`` climbs back one level. A node without an
    entry but with children is a directory the children imply.
    """

    __slots__ = ("children", "entry", "parent")

    def __init__(self, parent: _Node | None, entry: Entry | None) -> None:
        self.parent, self.entry = parent, entry
        self.children: dict[str, _Node] = {}


_Pos = tuple[_Node, int]                 # (deepest real node, virtual levels below it)


class _Resolver:
    """Resolves every symlink of a snapshot once, in time linear in the total size of paths and targets.

    Each link's resolution is memoised with the number of links it follows
    (the kernel counts every follow of one lookup against MAXSYMLINKS = 40),
    so following a link a second time costs one step, not its whole target
    again: a farm of links that each repeat another (``z -> y/y/y/...``,
    ``y -> a/a/.../../..``) costs the sum of their sizes, not their product.
    A link that is being resolved and is reached again is a loop; a
    resolution that needs more than 40 follows (or nests deeper) is refused
    like a loop, since the kernel would fail it with ELOOP.
    """

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self.root = _Node(None, None)
        for path in sorted(entries, key=len):
            node = self.root
            for part in path.split("/"):
                node = node.children.get(part) or node.children.setdefault(part, _Node(node, None))
            node.entry = entries[path]
        self._memo: dict[int, tuple[_Pos, int] | None] = {}
        self._active: set[int] = set()

    def node(self, path: str) -> _Node:
        node = self.root
        for part in path.split("/"):
            node = node.children[part]
        return node

    def link(self, node: _Node) -> tuple[_Pos, int] | None:
        """Where the symlink at ``node`` leads and how many follows that took; None if it escapes or loops."""
        key = id(node)
        if key in self._memo:
            return self._memo[key]
        if key in self._active or len(self._active) > MAX_LINK_FOLLOWS:
            return None
        assert node.entry is not None and node.parent is not None
        target = node.entry.target or ""
        self._active.add(key)
        try:
            found = None if target.startswith("/") else self.walk((node.parent, 0), target)
        finally:
            self._active.discard(key)
        result = None if found is None or found[1] + 1 > MAX_LINK_FOLLOWS else (found[0], found[1] + 1)
        self._memo[key] = result
        return result

    def walk(self, pos: _Pos, target: str) -> tuple[_Pos, int] | None:
        node, virtual = pos
        follows = 0
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if virtual:
                    virtual -= 1
                elif node.parent is None:
                    return None             # above the volume's root
                else:
                    node = node.parent
                continue
            child = node.children.get(part) if not virtual else None
            if child is None or (child.entry is not None and child.entry.kind == "file"):
                virtual += 1
            elif child.entry is None or child.entry.kind == "dir":    # None: a parent implied by its children
                node = child
            else:
                resolved = self.link(child)
                if resolved is None:
                    return None
                (node, virtual), used = resolved
                follows += used
                if follows > MAX_LINK_FOLLOWS:
                    return None
        return (node, virtual), follows


def escaping_symlinks(entries: Mapping[str, Entry]) -> list[str]:
    """Symlinks that lead out of the volume, alone or by way of other symlinks (or loop).

    Each link may stay inside on its own and still escape through another
    (``a -> d/e``, ``d/e -> ..``, ``x -> a/..``), so a lexical check of each
    target alone is not enough: targets are resolved through the snapshot's
    own links (see :class:`_Resolver`; linear time, Linux's limits).
    """
    links = [p for p, e in entries.items() if e.kind == "symlink"]
    if not links:
        return []
    resolver = _Resolver(entries)
    return [p for p in links if not symlink_stays_inside(p, entries[p].target or "")
            or resolver.link(resolver.node(p)) is None]


def validate_entries(entries: Mapping[str, Entry]) -> None:
    """Raise ManifestError unless ``entries`` is a safe, self-consistent tree."""
    for path, e in entries.items():
        check_path(path)
        if e.path != path:
            raise ManifestError(f"entry {e.path!r} filed under {path!r}")
        parent = posixpath.dirname(path)
        if parent and (parent not in entries or entries[parent].kind != "dir"):
            raise ManifestError(f"{path!r}: parent {parent!r} is not a directory in the snapshot")
        if e.kind == "symlink" and not symlink_stays_inside(path, e.target or ""):
            raise ManifestError(f"{path!r}: symlink target {e.target!r} leaves the volume")
        if e.kind == "file" and sum(c.size for c in e.chunks) != e.size:
            raise ManifestError(f"{path!r}: chunks add up to {sum(c.size for c in e.chunks)}, not {e.size}")
    escaping = escaping_symlinks(entries)
    if escaping:
        raise ManifestError(f"{escaping[0]!r}: symlink leads out of the volume through other symlinks")


# ---------------------------------------------------------------- merging

Changes = dict[str, Entry | None]


def diff(base: Mapping[str, Entry], ours: Mapping[str, Entry]) -> Changes:
    """Per-path changes from ``base`` to ``ours``; None marks a deletion."""
    changes: Changes = {p: e for p, e in ours.items() if not e.same_content(base.get(p))}
    changes.update({p: None for p in base if p not in ours})
    return changes


def apply(theirs: Mapping[str, Entry], changes: Changes, base: Mapping[str, Entry]) -> dict[str, Entry]:
    """Replay ``changes`` on ``theirs``; ours win per path, the tree stays valid.

    O((n + c) log n): the paths below a file we wrote are found by bisecting
    one sorted list of keys, not by scanning every entry per change.
    """
    result = dict(theirs)
    for path, entry in changes.items():
        if entry is None:
            result.pop(path, None)
        else:
            result[path] = entry
    replaced = [p for p, e in changes.items() if e is not None and e.kind != "dir"]
    if replaced:                   # a file we wrote replaces any tree of theirs under it
        keys = sorted(result)
        for path in replaced:
            lo = bisect.bisect_left(keys, path + "/")
            hi = bisect.bisect_left(keys, path + "0")     # '0' is the character after '/'
            for other in keys[lo:hi]:
                result.pop(other, None)
    _add_missing_parents(result, [base, theirs])
    return result


def merge(base: Mapping[str, Entry], ours: Mapping[str, Entry], theirs: Mapping[str, Entry]) -> dict[str, Entry]:
    return apply(theirs, diff(base, ours), base)


def _add_missing_parents(entries: dict[str, Entry], sources: Iterable[Mapping[str, Entry]]) -> None:
    """Make every ancestor of every path a directory; a later write beats a file in the way."""
    sources = list(sources)
    for path in sorted(entries):
        parent = posixpath.dirname(path)
        while parent and (parent not in entries or entries[parent].kind != "dir"):
            known = next((s[parent] for s in sources if parent in s and s[parent].kind == "dir"), None)
            entries[parent] = known or Entry(parent, "dir", 0o755, 0)
            parent = posixpath.dirname(parent)
