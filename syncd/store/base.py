"""The object-store seam: one small async interface that only moves bytes.

Everything above this module (chunk fetching, hydrate, commit, the gateway) is
written against :class:`ObjectStore`; everything below it is one backend.
Backends never hash, cache or retry: those are wrappers in ``storewrap.py``
implementing the same protocol, stacked in ``engine.py``. Backends translate
their own failures into :mod:`syncd.errors` classes, so a wrapper can decide
to retry on the exception class alone.

:func:`put_immutable` is how content-addressed objects (chunks, packs,
snapshots) are written: once, and never trusting a damaged leftover.

``MemoryStore`` is the in-memory backend for pure-logic unit tests; it honours
the same conditional-write semantics as S3 (``If-None-Match: *`` and
``If-Match: <etag>``).

Streaming reads are an optional extra, outside the protocol: a store (or a
wrapper) may offer ``get_stream(key, start, end)``, an async context manager
yielding a :class:`BlobStream` whose pieces arrive as the body does (the
gateway relays bytes to waiting readers before the object is complete).
:func:`open_stream` uses it when present and falls back to one whole-body
``get`` otherwise, so every ObjectStore can be read as a stream.

Reads into a sink are the other optional extra: ``read_into(key, start, end,
sink) -> bool`` receives the body in a worker thread and hands it to
``sink.begin(size)`` / ``sink.write(view)`` (store/rangeread.py), with no
buffer per piece; a store that cannot answers False (or lacks the method:
:func:`read_into` says so) and the caller streams instead. One attempt, no
retry inside: a failure half-way is the caller's to repeat from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from syncd.config import Config
from syncd.errors import ConfigError, NotFound, PreconditionFailed
from syncd.store.rangeread import Sink

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: float = 0.0


@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class BlobStream:
    """A body being received: ``size`` bytes in total, yielded in pieces by ``pieces``."""

    size: int
    etag: str
    pieces: AsyncIterator[bytes]


@runtime_checkable
class ObjectStore(Protocol):
    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        """Bytes of ``key``; with ``start``/``end`` the half-open range [start, end)."""

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        """Store ``data``; returns the new ETag. Raises PreconditionFailed when a condition fails."""

    async def head(self, key: str) -> ObjectInfo:
        """Size and ETag of ``key``; raises NotFound."""

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""

    async def list_prefixes(self, prefix: str) -> list[str]:
        """The distinct ``prefix + name + '/'`` one level below ``prefix``."""

    async def delete(self, keys: list[str]) -> None:
        """Delete ``keys``; missing keys are not an error."""

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        """Abort unfinished multipart uploads under ``prefix`` started more than ``older_than``
        seconds ago (a writer killed mid-upload leaves them, and they cost storage until
        aborted); returns how many were aborted."""

    async def close(self) -> None:
        """Release connections."""


async def put_immutable(store: ObjectStore, key: str, data: bytes) -> bool:
    """PUT a content-addressed object unless it is there; True if this call stored it.

    ``If-None-Match: *`` makes a second writer of the same bytes cost nothing.
    But a 412 only says *an* object is there: a server that does not make PUTs
    atomic (SeaweedFS does not) can keep an empty or truncated object from a
    writer killed mid-PUT, and trusting it would let a snapshot name bytes that
    do not exist. So after a 412 the object's size is checked, and a wrong one
    is overwritten; that is safe, as everyone writes the same bytes to this key.
    """
    try:
        await store.put(key, data, if_none_match=True)
        return True
    except PreconditionFailed:
        pass
    try:
        if (await store.head(key)).size == len(data):
            return False
    except NotFound:
        pass
    log.warning("%s: the stored object is damaged (a writer died mid-upload?); rewriting it", key)
    await store.put(key, data)
    return True


async def read_into(store: ObjectStore, key: str, start: int | None, end: int | None, sink: Sink) -> bool:
    """``store.read_into`` if the store has it; False when the body must be read another way."""
    reader = getattr(store, "read_into", None)
    if reader is None:
        return False
    done: bool = await reader(key, start, end, sink)
    return done


def open_stream(store: ObjectStore, key: str, start: int | None = None,
                end: int | None = None) -> contextlib.AbstractAsyncContextManager[BlobStream]:
    """``store.get_stream`` if the store streams, else one whole-body ``get`` as a single piece."""
    opener = getattr(store, "get_stream", None)
    if opener is not None:
        stream: contextlib.AbstractAsyncContextManager[BlobStream] = opener(key, start, end)
        return stream
    return _whole_body(store, key, start, end)


@contextlib.asynccontextmanager
async def _whole_body(store: ObjectStore, key: str, start: int | None,
                      end: int | None) -> AsyncIterator[BlobStream]:
    blob = await store.get(key, start, end)

    async def one() -> AsyncIterator[bytes]:
        yield blob.data

    yield BlobStream(len(blob.data), blob.etag, one())


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


class MemoryStore:
    """A dict with S3's semantics, for unit tests and dry runs."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str, float]] = {}
        self._lock = asyncio.Lock()

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        try:
            data, etag, _ = self.objects[key]
        except KeyError as exc:
            raise NotFound(key) from exc
        if start is not None or end is not None:
            data = data[start or 0:end]
        return Blob(data, etag)

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        async with self._lock:
            current = self.objects.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(key)
            if if_match is not None and (current is None or current[1] != if_match):
                raise PreconditionFailed(key)
            etag = _etag(bytes(data))
            self.objects[key] = (bytes(data), etag, time.time())
            return etag

    async def head(self, key: str) -> ObjectInfo:
        try:
            data, etag, mtime = self.objects[key]
        except KeyError as exc:
            raise NotFound(key) from exc
        return ObjectInfo(key, len(data), etag, mtime)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                data, etag, mtime = self.objects[key]
                yield ObjectInfo(key, len(data), etag, mtime)

    async def list_prefixes(self, prefix: str) -> list[str]:
        names = {k[len(prefix):].split("/", 1)[0] for k in self.objects if k.startswith(prefix)
                 and "/" in k[len(prefix):]}
        return sorted(prefix + n + "/" for n in names)

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        return 0  # puts are atomic here: there are never unfinished uploads

    async def close(self) -> None:
        return None


def missing_bucket(config: Config) -> ConfigError:
    """The bucket check found no bucket, and this command may not create one (``config.create_bucket``)."""
    return ConfigError(f"bucket {config.bucket!r} does not exist at {config.s3_endpoint or 'AWS S3'}: "
                       "check SYNCD_BUCKET (a command that creates a volume -- volume create, put, "
                       "commit, agent -- creates the bucket too)")
