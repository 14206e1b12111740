"""Names and keys: where a volume's objects live in the bucket. Pure.

A volume of owner ``o`` named ``v`` occupies exactly the keys below
``<prefix>/o/v/`` (see docs/FORMAT.md)::

    HEAD                          the commit point (JSON), advanced with If-Match
    PRUNED                        prune's horizon: history may end below this seq
    snapshots/<id>                immutable manifests, named by content id
    chunks/<id[:2]>/<id>          one chunk of a large file
    packs/<id>                    small files' contents, concatenated
    trees/<id>                    format v2: directory trees, compressed and concatenated
    index/<xx>/<id>               format v3: where chunks with ids starting xx are (a hint)

Names are validated before any key is built, so no name can reach outside its
owner's prefix: a name is 1-63 characters of ``A-Z a-z 0-9 . _ -``, starts with
a letter or digit, and is not ``.`` or ``..``. Every pattern is applied with
``re.fullmatch``: ``^...$`` with ``re.match`` also accepts a name followed by
one ``"\n"`` (``$`` matches before a final newline), which once let
``avol\n`` become a second volume listed as ``avol``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from syncd.errors import InvalidName
from syncd.format.chunking import is_content_id
from syncd.format.manifest import ChunkRef

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")   # always with fullmatch: "$" matches before a final "\n"
_SHARD = re.compile(r"[0-9a-f]{2}")
NAME_RULE = "1-63 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"


def validate_name(name: object, what: str = "volume") -> str:
    """Return ``name`` if it is a valid volume or owner name, else raise InvalidName."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None or name in (".", ".."):
        raise InvalidName(f"invalid {what} name {name!r}: use {NAME_RULE}")
    return name


def normalize_volume_name(name: str) -> str:
    """Accept the SDK's ``"/my_volume"`` spelling: one leading '/' is dropped."""
    if isinstance(name, str) and name.startswith("/") and not name.startswith("//"):
        name = name[1:]
    return validate_name(name)


@dataclass(frozen=True)
class Layout:
    """Key arithmetic for one owner under one bucket prefix."""

    prefix: str
    owner: str

    def __post_init__(self) -> None:
        validate_name(self.owner, "owner")
        if self.prefix and any(p in ("", ".", "..") for p in self.prefix.split("/")):
            raise InvalidName(f"invalid key prefix {self.prefix!r}")

    @property
    def owner_prefix(self) -> str:
        return f"{self.prefix}/{self.owner}/" if self.prefix else f"{self.owner}/"

    def volume_prefix(self, volume: str) -> str:
        return f"{self.owner_prefix}{validate_name(volume)}/"

    def head(self, volume: str) -> str:
        return self.volume_prefix(volume) + "HEAD"

    def pruned(self, volume: str) -> str:
        return self.volume_prefix(volume) + "PRUNED"

    def snapshot(self, volume: str, snapshot_id: str) -> str:
        return self.volume_prefix(volume) + "snapshots/" + _checked(snapshot_id)

    def chunk(self, volume: str, chunk_id: str) -> str:
        return self.volume_prefix(volume) + f"chunks/{_checked(chunk_id)[:2]}/{chunk_id}"

    def pack(self, volume: str, pack_id: str) -> str:
        return self.volume_prefix(volume) + "packs/" + _checked(pack_id)

    def tree_pack(self, volume: str, pack_id: str) -> str:
        return self.volume_prefix(volume) + "trees/" + _checked(pack_id)

    def index_shard(self, volume: str, shard: str) -> str:
        """The prefix of the chunk index objects for chunk ids starting with ``shard``."""
        if _SHARD.fullmatch(shard) is None:
            raise InvalidName(f"invalid index shard {shard!r}")
        return self.volume_prefix(volume) + f"index/{shard}/"

    def index_object(self, volume: str, shard: str, object_id: str) -> str:
        return self.index_shard(volume, shard) + _checked(object_id)


def _checked(object_id: str) -> str:
    if not is_content_id(object_id):
        raise InvalidName(f"invalid object id {object_id!r}")
    return object_id

def object_key(layout: Layout, volume: str, ref: ChunkRef) -> str:
    """The key holding ``ref``'s bytes: its own chunk object or its pack."""
    return layout.chunk(volume, ref.id) if ref.pack is None else layout.pack(volume, ref.pack)


def shard_of(chunk_id: str) -> str:
    """The chunk index shard of a chunk id: its first two hex digits."""
    return chunk_id[:2]

