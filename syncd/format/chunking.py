"""Naming and splitting content. Pure: no I/O.

Every stored object is named by the xxh3-128 of its bytes, written as 32
lowercase hex digits. xxh3 hashes at several GB/s per core, so naming costs far
less than moving the bytes; it is not a cryptographic hash, which is fine
because ids name content inside one owner's volume and are re-verified on
every read, they never authorise anything.

Where files are cut (format 3, docs/FORMAT.md section 4): a file below the pack
threshold is one chunk; a larger one is cut at *content-defined* points by
FastCDC 2020 (Xia et al.; normalization level 1, the gear table of FORMAT.md
appendix A), with a minimum, average and maximum chunk size derived from
``SYNCD_CHUNK_SIZE`` (the average: 512 KiB; min = avg / 4, max = avg * 4).
A cut point depends only on the bytes just before it, so inserting or deleting
bytes moves the cuts near the edit and nowhere else: an insertion of one byte
at 100 MiB re-uploads one or two chunks, where fixed 8 MiB chunks re-uploaded
every chunk after the edit (issue 21 measured 208 MiB for a 256 MiB file).
The average was chosen by measurement (FORMAT.md section 14): 512 KiB keeps a
1 MiB overwrite at about 2 MiB uploaded (restic, 1 MiB average, uploads 2 MiB),
and consecutive chunks still travel in 32 MiB packs read with one ranged GET,
so hydrate throughput does not depend on the chunk size.

The gear hash runs in C (PyPI ``pyfastcdc``, Cython, about 2 GB/s a core) with
the GIL released; :meth:`Chunker.cut` finds the complete chunks at the start of
a buffer, so a reader can feed a file window by window and get exactly the cuts
of the whole file at once (a cut needs ``max`` bytes after the chunk's start,
or the end of the file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

import xxhash
from pyfastcdc import FastCDC

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


CDC_AVERAGE = 512 << 10         # the default average chunk size (SYNCD_CHUNK_SIZE)
MIN_AVERAGE, MAX_AVERAGE = 64 << 10, 4 << 20     # pyfastcdc's bounds: max = 4 * avg <= 16 MiB


@dataclass(frozen=True)
class Chunker:
    """Cut points for files of ``threshold`` bytes or more: FastCDC 2020, ``avg`` / 4 .. ``avg`` * 4."""

    avg: int = CDC_AVERAGE
    threshold: int = 1 << 20
    _cdc: FastCDC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not MIN_AVERAGE <= self.avg <= MAX_AVERAGE:
            raise ValueError(f"the average chunk size must be {MIN_AVERAGE}..{MAX_AVERAGE} bytes")
        object.__setattr__(self, "_cdc", FastCDC(self.avg, min_size=self.min, max_size=self.max,
                                                 normalized_chunking=1))

    @property
    def min(self) -> int:
        return self.avg // 4

    @property
    def max(self) -> int:
        return self.avg * 4

    def whole(self, size: int) -> bool:
        """Is a file of ``size`` bytes one chunk (a small file, packed)?"""
        return size < self.threshold

    def cut(self, view: memoryview, eof: bool) -> list[int]:
        """Lengths of the complete chunks at the start of ``view`` (a file's bytes from a cut point).

        Without ``eof`` a chunk is complete only when ``max`` bytes follow its start (a cut
        never looks further), so feeding a file window by window cuts it exactly as a whole.
        With ``eof`` every byte of ``view`` is cut.
        """
        out: list[int] = []
        limit = len(view)
        for chunk in self._cdc.cut_buf(view):
            if not eof and limit - chunk.offset < self.max:
                break
            out.append(chunk.length)
        return out
