"""Directory digests: a walk can tell which directories hold no change without reading the index.

The index (index.py) keeps, besides one row per path, one small number per
directory: the *digest* of its children as syncd last recorded them, the sum
(mod 2**128) of one keyed xxh3-128 per child over what a walk sees of it:

    file     name, inode, size, mtime, ctime    (the stat fingerprint of its row)
    symlink  name, target
    dir      name, mode, mtime

A sum, because it is updated in O(1) per row written (add the new child's
hash, subtract the old one's) inside the transaction that writes the row, so
keeping digests costs what the change costs, and an empty directory is 0 (no
row). A walk (changes.py) computes the same sum over what it finds in each
directory; where the two agree, no child of that directory differs from its
row, and its rows are never read. A directory's own digest does not cover
its subdirectories' contents: each level is compared on its own, so a
1-file change makes exactly one directory disagree. A subdirectory's mtime is
in its parent's sum, so a directory whose entries were created, removed or
renamed makes its parent disagree too, and a commit records the directory's
new mtime when it lists the parent, before it goes into the directory (a
commit emits every change of a directory before those below it).

``VERSION`` names this choice of terms; an index whose digests were summed
with other terms (``volumes.digests`` holds the version) gets them summed
again from its rows, once (index.py).

The hash is keyed with a random seed kept in the database (``meta.digest_seed``),
so task code that shares the volume cannot aim for a collision; a collision
would cost at most that a change is committed by the next walk that sees
another change in the same directory (the agent's watcher does not rely on
digests at all). A row without a fingerprint (a file whose stat is unknown)
hashes to something no walk produces, so its directory is always looked at.
"""

from __future__ import annotations

import struct

import xxhash

MOD = 1 << 128
VERSION = 2          # 1: directories without their mtime
_FP = struct.Struct("<qqqq")


def _h(seed: int, data: bytes) -> int:
    return xxhash.xxh3_128_intdigest(data, seed)


def child_hash(seed: int, name: str, kind: str, mode: int, fingerprint: tuple[int, int, int, int] | None,
               target: str | None, mtime_ns: int = 0) -> int:
    """The digest term of one child (``name`` is its last path component; ``mtime_ns`` counts
    for a directory only)."""
    raw = name.encode("utf-8", "surrogateescape")
    if kind == "file":
        if fingerprint is None:
            return _h(seed, b"?" + raw)            # unknown stat: never equal to a walk's term
        return _h(seed, b"f" + _FP.pack(*fingerprint) + raw)
    if kind == "symlink":
        return _h(seed, b"l" + len(raw).to_bytes(4, "little") + raw + (target or "").encode("utf-8", "surrogateescape"))
    return _h(seed, b"d" + mode.to_bytes(4, "little") + mtime_ns.to_bytes(8, "little", signed=True) + raw)


def parent_of(path: str) -> str:
    """The directory holding ``path`` ('' is the root)."""
    cut = path.rfind("/")
    return path[:cut] if cut >= 0 else ""


def name_of(path: str) -> str:
    return path[path.rfind("/") + 1:]


def to_blob(value: int) -> bytes:
    return (value % MOD).to_bytes(16, "little")


def from_blob(raw: bytes | None) -> int:
    return int.from_bytes(raw, "little") if raw else 0
