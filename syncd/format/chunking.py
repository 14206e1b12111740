"""Naming and splitting content. Pure: no I/O.

Every stored object is named by the xxh3-128 of its bytes, written as 32
lowercase hex digits. xxh3 hashes at several GB/s per core, so naming costs far
less than moving the bytes; it is not a cryptographic hash, which is fine
because ids name content inside one owner's volume and are re-verified on
every read, they never authorise anything.

Files are split at fixed offsets (``chunk_size``, 8 MiB by default). Fixed
boundaries make ranged transfers trivially parallel and make an in-place edit
of a large file (a checkpoint, a database page) touch at most two chunks. We
do not use content-defined chunking: it would find shifted data after an
insertion, but large model and dataset files are rewritten in place or whole,
and a rolling hash costs CPU on every byte in Python.
"""

from __future__ import annotations

import re
from typing import Protocol

import xxhash

ID_LENGTH = 32
_ID = re.compile(r"[0-9a-f]{32}")


def content_id(data: bytes | bytearray | memoryview) -> str:
    """The id of ``data``: xxh3-128, 32 lowercase hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def hexdigest(self) -> str: ...


def hasher() -> Hasher:
    """An incremental :func:`content_id`: ``update`` piece by piece, then ``hexdigest``."""
    h: Hasher = xxhash.xxh3_128()
    return h


def is_content_id(text: object) -> bool:
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def verify(expected_id: str, data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` hashes to ``expected_id``."""
    return content_id(data) == expected_id


def spans(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each chunk of a ``size``-byte file; empty files have none."""
    if size < 0 or chunk_size <= 0:
        raise ValueError("size must be >= 0 and chunk_size > 0")
    return [(off, min(chunk_size, size - off)) for off in range(0, size, chunk_size)]
