"""A tree's canonical bytes <-> its items, in C where it pays (msgspec). Pure: no I/O.

docs/FORMAT.md §3 and §5 define a tree and every rejection a reader owes
(§8). Checking them in Python, one dict per entry, cost about 40 us per
entry: a cold ``find`` over 100,000 entries spent 90% of its time here. So
the wire shape is declared once as msgspec structs and msgspec does, in C,
what it can say in types: JSON syntax and UTF-8, no NaN, no lone surrogate,
integers only (``1.0`` and ``true`` are not integers), every field present
and none unknown (``forbid_unknown_fields``; the ``type`` field picks the
struct), the bounds of every integer, ids as 32 lowercase hex digits, tree
references of exactly four elements. What is left for Python is what types
cannot say: one of ``name``/``name_b64``, safe names, strict order, chunk
references of two or four elements whose sizes add up, symlink targets.

**The canonical check** is still "re-encode and compare": the decoded structs
are encoded again by msgspec with keys sorted, and the bytes must equal what
was read. That rejects every other spelling of the same value in one test
(whitespace, key order, duplicate keys, escapes such as ``\\u0061`` or
``\\/``, ``-0``, trailing bytes), as the stdlib check did, at C speed.
msgspec writes strings exactly as ``json.dumps(ensure_ascii=False)`` does
(only ``"``, ``\\`` and U+0000-U+001F escaped; tests/test_tree_codec.py
compares the two on every code point), so a canonical tree written by any
writer re-encodes to itself. Chunk references stay plain lists on the wire
structs: an array-like struct cannot leave out absent trailing fields, and
the re-encode must reproduce ``[id, size]`` as it was.

Encoding builds the same structs from the items and lets msgspec write them,
so the bytes written are the bytes the reader's check expects.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from syncd.errors import ManifestError
from syncd.format.manifest import (
    MAX_CHUNK_SIZE,
    MAX_COMPRESSED,
    MAX_FILE_SIZE,
    MAX_PATH,
    ChunkRef,
    Entry,
    Stats,
    TreeRef,
)

MAX_NAME = 255
MAX_TREE_ENTRIES = 1_000_000
MAX_TREE_BYTES = 256 << 20       # one tree, decompressed
MAX_MTIME = 1 << 62
TREE_FORMATS = (2, 3)            # format 3 adds compressed chunk references [id, size, pack, offset, stored]
WRITE_FORMAT: Literal[3] = 3

_HEX = re.compile(r"[0-9a-f]{32}")
_Id = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}\Z")]
_Mode = Annotated[int, Meta(ge=0, le=0o7777)]
_Mtime = Annotated[int, Meta(ge=-MAX_MTIME, le=MAX_MTIME)]
_Count = Annotated[int, Meta(ge=0, le=MAX_FILE_SIZE)]


class WireRef(Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    id: _Id
    pack: _Id
    offset: _Count
    size: Annotated[int, Meta(ge=1, le=MAX_TREE_BYTES)]


class _File(Struct, tag_field="type", tag="file", forbid_unknown_fields=True, gc=False):
    mode: _Mode
    mtime_ns: _Mtime
    size: _Count
    chunks: list[list[str | int]]
    name: str | UnsetType = UNSET
    name_b64: str | UnsetType = UNSET


class _Dir(Struct, tag_field="type", tag="dir", forbid_unknown_fields=True, gc=False):
    mode: _Mode
    mtime_ns: _Mtime
    tree: WireRef
    files: _Count
    dirs: _Count
    bytes: _Count
    links: _Count
    name: str | UnsetType = UNSET
    name_b64: str | UnsetType = UNSET


class _Link(Struct, tag_field="type", tag="symlink", forbid_unknown_fields=True, gc=False):
    mode: _Mode
    mtime_ns: _Mtime
    name: str | UnsetType = UNSET
    name_b64: str | UnsetType = UNSET
    target: str | UnsetType = UNSET
    target_b64: str | UnsetType = UNSET


class _Tree(Struct, forbid_unknown_fields=True, gc=False):
    format: Literal[2, 3]
    entries: Annotated[list[_File | _Dir | _Link], Meta(max_length=MAX_TREE_ENTRIES)]


_DECODER = msgspec.json.Decoder(_Tree)
_ENCODER = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class TreeItem:
    """One entry of a tree: ``entry.path`` is the bare name; dirs carry their subtree."""

    entry: Entry
    tree: TreeRef | None = None
    stats: Stats | None = None

    @property
    def name(self) -> str:
        return self.entry.path

    def own_stats(self) -> Stats:
        e = self.entry
        if e.kind == "dir":
            return (self.stats or Stats()) + Stats(dirs=1)
        return Stats(files=1, bytes=e.size) if e.kind == "file" else Stats(links=1)


T = TypeVar("T")


def _maker(cls: type[T]) -> Callable[..., T]:
    """A constructor for a frozen, slotted dataclass that sets its slots directly.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` (it must get past its own ``__setattr__``); that
    doubled the cost of each Entry a decode makes. This writes the same slots
    through their descriptors: the object is the same (tests/test_tree_codec.py
    compares the two), and a class that grows a field, a default factory or a
    ``__post_init__`` falls back to its own ``__init__`` (all arguments are passed).
    """
    fields = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    if getattr(cls, "__slots__", None) != fields or hasattr(cls, "__post_init__"):
        return cls
    names: dict[str, Any] = {"new": object.__new__, "cls": cls}
    names.update({f"set_{f}": getattr(cls, f).__set__ for f in fields})
    body = "".join(f"    set_{f}(o, {f})\n" for f in fields)
    exec(f"def make({', '.join(fields)}):\n    o = new(cls)\n{body}    return o\n", names)
    make: Callable[..., T] = names["make"]
    return make


_entry = _maker(Entry)            # (path, kind, mode, mtime_ns, size, chunks, target)
_chunk = _maker(ChunkRef)         # (id, size, pack, offset, stored)
_ref = _maker(TreeRef)            # (id, pack, offset, size)
_stats = _maker(Stats)            # (files, dirs, bytes, links)
_item = _maker(TreeItem)          # (entry, tree, stats)


# ---------------------------------------------------------------- names

def name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def check_name(name: str, what: str) -> str:
    if (not name or "/" in name or "\x00" in name or name == "." or name == ".."
            or (len(name) > MAX_NAME // 4 and len(name_bytes(name)) > MAX_NAME)):
        raise ManifestError(f"{what}: unsafe name {name[:80]!r}")
    return name


def _wire_text(text: str) -> tuple[str | UnsetType, str | UnsetType]:
    """``(plain, b64)``: exactly one is set (b64 for bytes that are not UTF-8)."""
    if text.isascii():
        return text, UNSET
    try:
        text.encode("utf-8")
        return text, UNSET
    except UnicodeEncodeError:
        pass
    try:
        raw = name_bytes(text)
    except UnicodeEncodeError as exc:
        raise ManifestError(f"{text[:80]!r} is neither text nor bytes") from exc
    return UNSET, base64.b64encode(raw).decode("ascii")


def _from_wire(plain: str | UnsetType, b64: str | UnsetType, key: str, what: str) -> str:
    if isinstance(b64, UnsetType):
        if isinstance(plain, UnsetType):
            raise ManifestError(f"{what}: exactly one of {key!r} and {key + '_b64'!r} is required")
        return plain
    if not isinstance(plain, UnsetType):
        raise ManifestError(f"{what}: exactly one of {key!r} and {key + '_b64'!r} is required")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError(f"{what}: bad base64 in {key + '_b64'!r}") from exc
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape")
    raise ManifestError(f"{what}: {key + '_b64'!r} holds valid UTF-8; it must be {key!r}")


# ---------------------------------------------------------------- decode

def _chunks(raw: list[list[str | int]], size: int, what: str, name: str, v3: bool) -> tuple[ChunkRef, ...]:
    out = []
    total = 0
    hexid = _HEX.fullmatch
    for c in raw:
        n = len(c)
        cid, csize = (c[0], c[1]) if n == 4 or n == 2 or (n == 5 and v3) else (None, None)
        if type(cid) is not str or hexid(cid) is None or type(csize) is not int or not 0 < csize <= MAX_CHUNK_SIZE:
            raise ManifestError(f"{what}/{name!r}: malformed chunk reference {str(c)[:120]}")
        if n == 2:
            out.append(_chunk(cid, csize, None, 0, 0))
        else:
            pack, offset = c[2], c[3]
            stored = c[4] if n == 5 else 0
            if type(pack) is not str or hexid(pack) is None or type(offset) is not int \
                    or not 0 <= offset <= MAX_FILE_SIZE or type(stored) is not int \
                    or (n == 5 and not (0 < stored < csize and csize <= MAX_COMPRESSED)):
                raise ManifestError(f"{what}/{name!r}: malformed chunk reference {str(c)[:120]}")
            out.append(_chunk(cid, csize, pack, offset, stored))
        total += csize
    if total != size:
        raise ManifestError(f"{what}/{name!r}: chunks add up to {total}, not {size}")
    return tuple(out)


def _target(e: _Link, where: str) -> str:
    target = _from_wire(e.target, e.target_b64, "target", where)
    if not target or "\x00" in target or target.startswith("/") or (
            len(target) > MAX_PATH // 4 and len(name_bytes(target)) > MAX_PATH):
        raise ManifestError(f"{where}: bad symlink target")
    return target


def decode_items(data: bytes, what: str) -> list[TreeItem]:
    """Validate a tree's bytes (hostile input) into its items, in order.

    ``data`` must already match its id; this checks everything else §8 asks of a tree.
    """
    try:
        doc = _DECODER.decode(data)
        same = _ENCODER.encode(doc) == data
    except msgspec.DecodeError as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    except UnicodeEncodeError as exc:          # cannot happen after a decode; kept as a refusal
        raise ManifestError(f"{what} is not in canonical form") from exc
    if not same:
        raise ManifestError(f"{what} is not in canonical form")
    out: list[TreeItem] = []
    append = out.append
    plain_names = True            # no name_b64: str order is byte order
    v3 = doc.format == 3
    for e in doc.entries:
        if isinstance(e.name_b64, UnsetType) and not isinstance(e.name, UnsetType):
            name = e.name
        else:
            name = _from_wire(e.name, e.name_b64, "name", what)
            plain_names = False
        check_name(name, what)
        if type(e) is _File:
            append(_item(_entry(name, "file", e.mode, e.mtime_ns, e.size, _chunks(e.chunks, e.size, what, name, v3),
                                None), None, None))
        elif type(e) is _Dir:
            t = e.tree
            append(_item(_entry(name, "dir", e.mode, e.mtime_ns, 0, (), None), _ref(t.id, t.pack, t.offset, t.size),
                         _stats(e.files, e.dirs, e.bytes, e.links)))
        elif type(e) is _Link:
            append(_item(_entry(name, "symlink", e.mode, e.mtime_ns, 0, (), _target(e, f"{what}/{name!r}")),
                         None, None))
    _check_order([i.entry.path for i in out], plain_names, what)
    return out


def _check_order(names: list[str], plain: bool, what: str) -> None:
    keys: list[str] | list[bytes] = names if plain else [name_bytes(n) for n in names]
    for i in range(1, len(keys)):
        if not keys[i - 1] < keys[i]:    # type: ignore[operator]
            raise ManifestError(f"{what}: entries are not sorted by name bytes, or repeat")


# ---------------------------------------------------------------- encode

def encode_items(items: list[TreeItem]) -> bytes:
    """Canonical bytes of one tree; ``items`` already sorted by name bytes and unique."""
    wire: list[_File | _Dir | _Link] = []
    append = wire.append
    for item in items:
        e, ref, stats = item.entry, item.tree, item.stats
        name, name_b64 = _wire_text(e.path)
        if e.kind == "file":
            chunks: list[list[str | int]] = [
                [c.id, c.size] if c.pack is None else
                [c.id, c.size, c.pack, c.offset] if not c.stored else [c.id, c.size, c.pack, c.offset, c.stored]
                for c in e.chunks]
            append(_File(e.mode, e.mtime_ns, e.size, chunks, name, name_b64))
        elif e.kind == "symlink":
            target, target_b64 = _wire_text(e.target or "")
            append(_Link(e.mode, e.mtime_ns, name, name_b64, target, target_b64))
        else:
            if ref is None:
                raise ManifestError(f"directory {e.path!r} has no tree")
            s = stats or Stats()
            append(_Dir(e.mode, e.mtime_ns, WireRef(ref.id, ref.pack, ref.offset, ref.size),
                        s.files, s.dirs, s.bytes, s.links, name, name_b64))
    try:
        return _ENCODER.encode(_Tree(WRITE_FORMAT, wire))
    except (UnicodeEncodeError, TypeError, OverflowError) as exc:
        raise ManifestError(f"tree has no canonical encoding: {exc}") from exc
