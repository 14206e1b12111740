"""Compressing a chunk where it pays, and undoing it within the format's bounds. Pure: no I/O.

A chunk is stored compressed (format 3, docs/FORMAT.md section 4) only when
zstd makes it at least ``1 / MIN_SAVING`` smaller, and only inside a pack: its
reference then says both sizes, ``[id, size, pack, offset, stored]``, and its id
stays the xxh3 of the plain bytes, so dedupe, caches and verification all see
plain chunks. A chunk object of its own (``chunks/<id>``) is never compressed,
so every object named by a chunk id still hashes to that id whole (what the
gateway verifies).

The decision costs nearly nothing on data that does not compress (model
weights, media, random bytes): before compressing a chunk larger than
``2 * SAMPLE``, its first ``SAMPLE`` bytes are compressed at zstd's fastest
level, and if they do not shrink by ``SAMPLE_SAVING`` the chunk is stored as it
is (measured: 0.25 ms for a 1 MiB chunk of random bytes, against 7 ms to
compress it whole at level 3). Data that passes is compressed whole at
``LEVEL`` and kept if it saved enough; the compressor objects are one per
thread (they are not thread-safe).

Decompression treats the stored bytes as hostile: they must be exactly one
zstd frame (RFC 8878) whose header declares a content size equal to the
reference's plain ``size``, which is itself at most ``MAX_PLAIN`` (16 MiB), and
nothing may follow the frame. Nothing is decompressed beyond the declared size
(zstd refuses output that overruns the declared content size), so a reference
claiming a small chunk cannot make a reader inflate gigabytes.
"""

from __future__ import annotations

import threading

import zstandard

from syncd.errors import IntegrityError
from syncd.format.manifest import MAX_COMPRESSED

LEVEL = 3                 # zstd's default: ~300 MB/s a core, ratios near restic's "auto" mode
MIN_PLAIN = 1024          # smaller chunks are stored as they are (a frame costs ~20 bytes)
MAX_PLAIN = MAX_COMPRESSED  # the largest chunk stored compressed (format bound on decompression)
MIN_SAVING = 8            # keep the compressed form only if it is at least 1/8 smaller
SAMPLE = 64 << 10
SAMPLE_SAVING = 16        # a sample that shrinks by less than 1/16 means: do not try the chunk

_local = threading.local()


def _compressors() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor]:
    pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor] | None = getattr(_local, "pair", None)
    if pair is None:
        pair = (zstandard.ZstdCompressor(level=1, write_content_size=True),
                zstandard.ZstdCompressor(level=LEVEL, write_content_size=True))
        _local.pair = pair
    return pair


def compress(data: bytes | memoryview) -> bytes | None:
    """The stored form of a chunk if compressing it pays, else None (store it plain)."""
    size = len(data)
    if not MIN_PLAIN <= size <= MAX_PLAIN:
        return None
    quick, full = _compressors()
    if size > 2 * SAMPLE:
        probe = quick.compress(data[:SAMPLE])
        if len(probe) > SAMPLE - SAMPLE // SAMPLE_SAVING:
            return None
    packed = full.compress(data)
    return packed if len(packed) <= size - size // MIN_SAVING else None


def decompress(stored: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    """The plain bytes of a compressed chunk of ``size`` bytes; IntegrityError if the stored
    bytes are not exactly one zstd frame declaring that size (nothing beyond it is inflated)."""
    if not 0 < size <= MAX_PLAIN or len(stored) >= size:
        raise IntegrityError(f"{what}: a compressed chunk must be 1..{MAX_PLAIN} bytes and shrink")
    return _inflate(stored, size, what)


def _inflate(stored: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    try:
        declared = zstandard.get_frame_parameters(stored).content_size
        if declared != size:
            raise IntegrityError(f"{what}: the zstd frame declares {declared} bytes, not {size}")
        dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
        if dctx is None:
            dctx = _local.dctx = zstandard.ZstdDecompressor()
        plain = dctx.decompress(stored, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what}: not one zstd frame: {exc}") from exc
    if len(plain) != size:
        raise IntegrityError(f"{what}: inflated to {len(plain)} bytes, not {size}")
    return plain


def pack_object(data: bytes) -> bytes:
    """One zstd frame (content size declared) of a small metadata object (the chunk index)."""
    return _compressors()[1].compress(data)


def inflate_object(stored: bytes, limit: int, what: str) -> bytes:
    """The bytes of one zstd frame that declares a content size of at most ``limit``."""
    try:
        declared = zstandard.get_frame_parameters(stored).content_size
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what}: not a zstd frame: {exc}") from exc
    if not 0 < declared <= limit:
        raise IntegrityError(f"{what}: a zstd frame must declare 1..{limit} bytes, not {declared}")
    return _inflate(stored, declared, what)
