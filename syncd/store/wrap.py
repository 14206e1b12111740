"""Wrappers that add one concern each to any :class:`ObjectStore`.

They implement the same protocol and are stacked in ``engine.py``, outermost
first: ``Counting(Retrying(Limiting(S3Store)))``. So a count is one logical
operation the caller asked for, a retry re-enters the limiter (a backing-off
request holds no connection slot while it sleeps), and the backend only moves
bytes. Each wrapper also passes ``get_stream`` through (see store.py): the
limiter holds its slot until the stream is closed, the retrier retries opening
it (not a body that fails half-way), the counter counts it as one GET. So
does ``read_into`` (base.py): the limiter holds a slot for the read, the
retrier retries it while no byte of the body reached the sink (a body
half-written is the caller's to repeat), the counter counts one GET and its
body's bytes.

Retry policy, decided by exception class alone: ``TransientStoreError``
(throttling, 5xx, connection refused or reset, timeouts, bodies cut short) is
retried with full-jitter exponential backoff (``base_delay`` doubling up to
``max_delay``) for at least ``attempts`` attempts and, once the store has
answered this process at least once, until ``deadline`` seconds have passed
since the operation's first attempt (``SYNCD_STORE_DEADLINE``): so a store or
S3 gateway that restarts for a few seconds is ridden out, while a store that
never answered (a mistyped endpoint, DNS, TLS) is reported after ``attempts``
tries instead of being waited for. Past both, the last error is re-raised as
one line naming the operation, the attempts and the time. Every other error
(NotFound, PreconditionFailed, StoreError) is final at once.

Conditional PUTs are retried too: if an attempt did land and its answer was
lost, a later attempt fails its precondition. That 412 is raised as
``UnsurePrecondition`` (a PreconditionFailed): callers that only care about
"someone else wrote it" handle it as before, and the commit point's advance
(engine/volumes.py) checks whether it was its own write that landed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from syncd.errors import PreconditionFailed, StoreError, TransientStoreError, UnsurePrecondition
from syncd.store.base import Blob, BlobStream, ObjectInfo, ObjectStore, open_stream, read_into
from syncd.store.rangeread import Sink

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryingStore:
    def __init__(self, inner: ObjectStore, attempts: int = 6, base_delay: float = 0.1,
                 max_delay: float = 5.0, deadline: float = 0.0) -> None:
        self.inner, self.attempts, self.base_delay, self.max_delay = inner, attempts, base_delay, max_delay
        self.deadline = deadline
        self.retries = 0
        self.answered = False    # the store answered once: a failure to reach it now is an outage

    async def call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` under this policy (also for a backend's own request: the bucket check, reach.py)."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await op()
            except PreconditionFailed as exc:
                self.answered = True
                if attempt > 1 and not isinstance(exc, UnsurePrecondition):  # an earlier try may have landed
                    raise UnsurePrecondition(str(exc)) from exc
                raise
            except TransientStoreError as exc:
                elapsed = time.monotonic() - started
                window = self.deadline if self.answered else 0.0
                if attempt >= self.attempts and elapsed >= window:
                    raise TransientStoreError(f"{what}: gave up after {attempt} attempts in {elapsed:.1f} s: "
                                              f"{exc}") from exc
                self.retries += 1
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, 20)))
                if attempt >= self.attempts:       # only the deadline keeps us here: do not sleep past it
                    delay = min(delay, window - elapsed)
                log.info("retrying %s in %.2fs after %s", what, delay, exc)
                await asyncio.sleep(delay)
                continue
            except StoreError:
                self.answered = True
                raise
            self.answered = True
            return result

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        return await self.call(f"GET {key}", lambda: self.inner.get(key, start, end))

    @contextlib.asynccontextmanager
    async def get_stream(self, key: str, start: int | None = None,
                         end: int | None = None) -> AsyncIterator[BlobStream]:
        async with contextlib.AsyncExitStack() as stack:
            yield await self.call(f"GET {key}", lambda: stack.enter_async_context(
                open_stream(self.inner, key, start, end)))

    async def read_into(self, key: str, start: int | None, end: int | None, sink: Sink) -> bool:
        """Retried while no byte reached ``sink`` (as a stream's opening); after that, final."""
        watched = _CountedSink(sink)

        async def attempt() -> bool:
            try:
                return await read_into(self.inner, key, start, end, watched)
            except TransientStoreError as exc:
                if watched.began:
                    raise _HalfWay(exc) from exc
                raise

        try:
            return await self.call(f"GET {key}", attempt)
        except _HalfWay as half:
            raise half.error from half.error.__cause__

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        return await self.call(f"PUT {key}", lambda: self.inner.put(
            key, data, if_none_match=if_none_match, if_match=if_match))

    async def head(self, key: str) -> ObjectInfo:
        return await self.call(f"HEAD {key}", lambda: self.inner.head(key))

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        items = await self.call(f"LIST {prefix}", lambda: _collect(self.inner.list_objects(prefix)))
        for item in items:
            yield item

    async def list_prefixes(self, prefix: str) -> list[str]:
        return await self.call(f"LIST {prefix}", lambda: self.inner.list_prefixes(prefix))

    async def delete(self, keys: list[str]) -> None:
        await self.call(f"DELETE {len(keys)} keys", lambda: self.inner.delete(keys))

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        return await self.call(f"ABORT-UPLOADS {prefix}", lambda: self.inner.abort_stale_uploads(prefix, older_than))

    async def close(self) -> None:
        await self.inner.close()


async def _collect(items: AsyncIterator[ObjectInfo]) -> list[ObjectInfo]:
    return [item async for item in items]


class LimitingStore:
    """At most ``limit`` requests in flight against ``inner``."""

    def __init__(self, inner: ObjectStore, limit: int) -> None:
        self.inner = inner
        self._sem = asyncio.Semaphore(limit)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        async with self._sem:
            return await self.inner.get(key, start, end)

    @contextlib.asynccontextmanager
    async def get_stream(self, key: str, start: int | None = None,
                         end: int | None = None) -> AsyncIterator[BlobStream]:
        async with self._sem, open_stream(self.inner, key, start, end) as stream:
            yield stream

    async def read_into(self, key: str, start: int | None, end: int | None, sink: Sink) -> bool:
        async with self._sem:
            return await read_into(self.inner, key, start, end, sink)

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        async with self._sem:
            return await self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)

    async def head(self, key: str) -> ObjectInfo:
        async with self._sem:
            return await self.inner.head(key)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        async with self._sem:
            items = await _collect(self.inner.list_objects(prefix))
        for item in items:
            yield item

    async def list_prefixes(self, prefix: str) -> list[str]:
        async with self._sem:
            return await self.inner.list_prefixes(prefix)

    async def delete(self, keys: list[str]) -> None:
        async with self._sem:
            await self.inner.delete(keys)

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        async with self._sem:
            return await self.inner.abort_stale_uploads(prefix, older_than)

    async def close(self) -> None:
        await self.inner.close()


class CountingStore:
    """Counts operations and bytes, so tests can say "zero GETs on a cache hit"."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: collections.Counter[str] = collections.Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.keys: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        self.calls.clear()
        self.keys.clear()
        self.bytes_in = self.bytes_out = 0

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        self.calls["get"] += 1
        self.keys[key] += 1
        blob = await self.inner.get(key, start, end)
        self.bytes_in += len(blob.data)
        return blob

    @contextlib.asynccontextmanager
    async def get_stream(self, key: str, start: int | None = None,
                         end: int | None = None) -> AsyncIterator[BlobStream]:
        self.calls["get"] += 1
        self.keys[key] += 1
        async with open_stream(self.inner, key, start, end) as stream:
            yield BlobStream(stream.size, stream.etag, self._counted(stream.pieces))

    async def read_into(self, key: str, start: int | None, end: int | None, sink: Sink) -> bool:
        counted = _CountedSink(sink)
        try:
            done = await read_into(self.inner, key, start, end, counted)
        except BaseException:
            done = True   # the GET was made, whatever became of it
            raise
        finally:
            self.bytes_in += counted.size
            if done:
                self.calls["get"] += 1
                self.keys[key] += 1
        return done

    async def _counted(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for piece in pieces:
            self.bytes_in += len(piece)
            yield piece

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        self.calls["put"] += 1
        self.bytes_out += len(data)
        return await self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)

    async def head(self, key: str) -> ObjectInfo:
        self.calls["head"] += 1
        return await self.inner.head(key)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        self.calls["list"] += 1
        async for item in self.inner.list_objects(prefix):
            yield item

    async def list_prefixes(self, prefix: str) -> list[str]:
        self.calls["list"] += 1
        return await self.inner.list_prefixes(prefix)

    async def delete(self, keys: list[str]) -> None:
        self.calls["delete"] += 1
        await self.inner.delete(keys)

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        self.calls["abort_uploads"] += 1
        return await self.inner.abort_stale_uploads(prefix, older_than)

    async def close(self) -> None:
        await self.inner.close()


class _CountedSink:
    """A sink that remembers whether a body began and its size (read from the loop afterwards)."""

    def __init__(self, inner: Sink) -> None:
        self.inner, self.size, self.began = inner, 0, False

    def begin(self, size: int) -> None:
        self.began = True
        self.inner.begin(size)
        self.size = size

    def write(self, view: memoryview) -> None:
        self.inner.write(view)


class _HalfWay(Exception):
    """A transient failure after the body began: not the retrier's to repeat."""

    def __init__(self, error: TransientStoreError) -> None:
        super().__init__(str(error))
        self.error = error
