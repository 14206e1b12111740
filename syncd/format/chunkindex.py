"""The chunk index's objects: which chunks a volume holds, and where. Pure: no I/O.

Format 3 (docs/FORMAT.md section 5a). A writer that uploads new chunks also
records where they went, in small immutable objects sharded by the first two
hex digits of the chunk id: ``index/<xx>/<object id>``, where the object id is
the xxh3 of the stored bytes. An object is one zstd frame of the canonical
JSON ``{"chunks":[REF, ...],"format":3}``: chunk references exactly as trees
write them (``[id, size]``, ``[id, size, pack, offset]`` or, compressed,
``[id, size, pack, offset, stored]``), sorted by id, each id starting with the
object's shard.

The index is a hint, never a source of truth: a writer that finds a chunk in
it still checks the object it names exists and holds the range (data/chunkindex.py),
and re-checks before it advances HEAD exactly as for any other reused chunk
(section 11). Everything read from it is hostile input and is bounded here:
at most ``MAX_STORED`` bytes stored, ``MAX_INFLATED`` inflated, ``MAX_ENTRIES``
references, every reference well formed and in its shard; an object that
breaks a rule is refused whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec
from msgspec import Struct

from syncd.errors import IntegrityError, ManifestError
from syncd.format.chunking import content_id, is_content_id
from syncd.format.compress import inflate_object, pack_object
from syncd.format.manifest import MAX_CHUNK_SIZE, MAX_COMPRESSED, MAX_FILE_SIZE, ChunkRef

INDEX_FORMAT: Literal[3] = 3
MAX_STORED = 16 << 20
MAX_INFLATED = 64 << 20
MAX_ENTRIES = 500_000


class _Doc(Struct, forbid_unknown_fields=True, gc=False):
    chunks: list[list[str | int]]
    format: Literal[3]


_DECODER = msgspec.json.Decoder(_Doc)
_ENCODER = msgspec.json.Encoder(order="sorted")


def ref_json(ref: ChunkRef) -> list[str | int]:
    if ref.pack is None:
        return [ref.id, ref.size]
    if not ref.stored:
        return [ref.id, ref.size, ref.pack, ref.offset]
    return [ref.id, ref.size, ref.pack, ref.offset, ref.stored]


def ref_text(ref: ChunkRef) -> str:
    """``ref_json(ref)`` as compact JSON text, written directly (a commit writes one per file,
    twice: the index row, the chunk index cache). Ids and pack ids are content ids (hex,
    checked where they were made or read): nothing to escape."""
    if ref.pack is None:
        return f'["{ref.id}",{ref.size:d}]'
    if not ref.stored:
        return f'["{ref.id}",{ref.size:d},"{ref.pack}",{ref.offset:d}]'
    return f'["{ref.id}",{ref.size:d},"{ref.pack}",{ref.offset:d},{ref.stored:d}]'


def encode_index(refs: Iterable[ChunkRef]) -> list[tuple[str, bytes, list[ChunkRef]]]:
    """``(object id, stored bytes, its refs)`` of the index objects holding ``refs`` (one shard,
    unique ids), split so that none exceeds ``MAX_ENTRIES``."""
    ordered = sorted(refs, key=lambda r: r.id)
    out = []
    for start in range(0, len(ordered), MAX_ENTRIES):
        part = ordered[start:start + MAX_ENTRIES]
        stored = pack_object(_ENCODER.encode(_Doc([ref_json(r) for r in part], INDEX_FORMAT)))
        out.append((content_id(stored), stored, part))
    return out


def _ref(raw: list[str | int], shard: str, what: str) -> ChunkRef:
    n = len(raw)
    if n not in (2, 4, 5):
        raise ManifestError(f"{what}: malformed chunk reference {str(raw)[:120]}")
    cid, size = raw[0], raw[1]
    if not is_content_id(cid) or not isinstance(cid, str) or not cid.startswith(shard) \
            or type(size) is not int or not 0 < size <= MAX_CHUNK_SIZE:
        raise ManifestError(f"{what}: malformed chunk reference {str(raw)[:120]}")
    if n == 2:
        return ChunkRef(cid, size)
    pack, offset = raw[2], raw[3]
    stored = raw[4] if n == 5 else 0
    if not is_content_id(pack) or not isinstance(pack, str) or type(offset) is not int \
            or not 0 <= offset <= MAX_FILE_SIZE or type(stored) is not int \
            or (n == 5 and not (0 < stored < size <= MAX_COMPRESSED)):
        raise ManifestError(f"{what}: malformed chunk reference {str(raw)[:120]}")
    return ChunkRef(cid, size, pack, offset, stored)


def decode_index(stored: bytes, object_id: str, shard: str) -> list[ChunkRef]:
    """Verify and validate one stored index object of ``shard`` (hostile input)."""
    what = f"chunk index object {shard}/{object_id}"
    if len(stored) > MAX_STORED:
        raise ManifestError(f"{what} is larger than {MAX_STORED} bytes")
    if content_id(stored) != object_id:
        raise ManifestError(f"{what} does not match its content hash")
    try:
        doc = _DECODER.decode(inflate_object(stored, MAX_INFLATED, what))
    except (msgspec.DecodeError, IntegrityError) as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    if len(doc.chunks) > MAX_ENTRIES:
        raise ManifestError(f"{what} holds more than {MAX_ENTRIES} references")
    return [_ref(raw, shard, what) for raw in doc.chunks]
