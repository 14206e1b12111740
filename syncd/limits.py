"""Concurrency primitives: a byte budget and single-flight.

``ByteBudget`` bounds the chunk bytes held in memory at once (s3transfer's
second semaphore): a transfer acquires a chunk's size before fetching it and
releases it once the bytes are on disk. A request larger than the whole budget
is admitted alone rather than deadlocking. Bytes a writer *parks* (chunks in an
open pack, waiting for more before their PUT: data/upload.py) come back only
when it flushes, so when a waiter needs more than the budget minus the parked
bytes -- no PUT finishing could ever serve it -- the budget asks every
registered writer to flush (``relieve``), and only then: flushing earlier would
cut packs short.

``gather_all`` runs awaitables concurrently and, on the first failure, cancels
the rest and waits for them before raising, so no orphan task keeps writing.
``in_thread`` is ``asyncio.to_thread`` for file steps: cancelling it waits for
the thread, so cleanup never races a write still in progress.

``SingleFlight`` runs at most one task per key; later callers await the same
task. The task is shielded, so a cancelled caller does not cancel the fetch
others are waiting on.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from concurrent.futures import Executor
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Reliever(Protocol):
    def relieve(self) -> None:
        """Start the PUTs of every parked byte now (without awaiting them)."""


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.parked = 0                 # of ``used``: held in open packs, back only when flushed
        self._needs: list[int] = []     # what each waiting acquire asks for
        self._writers: weakref.WeakSet[Reliever] = weakref.WeakSet()
        self._cond = asyncio.Condition()

    def register(self, writer: Reliever) -> None:
        """``writer`` parks bytes (``park``/``unpark``) and flushes them on ``relieve``."""
        self._writers.add(writer)

    def park(self, n: int) -> None:
        self.parked += n
        self._relieve_if_stuck()

    def unpark(self, n: int) -> None:
        self.parked -= n

    def _relieve_if_stuck(self) -> None:
        if self._needs and self.limit - self.parked < max(self._needs):
            for writer in list(self._writers):
                writer.relieve()

    def _fits(self, n: int) -> bool:
        if self.used + n <= self.limit:
            return True
        self._relieve_if_stuck()
        return False

    async def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        async with self._cond:
            self._needs.append(n)
            try:
                await self._cond.wait_for(lambda: self._fits(n))
            finally:
                self._needs.remove(n)
            self.used += n
        return n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}
        self.joined = 0

    def __len__(self) -> int:
        return len(self._tasks)

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(fn())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        else:
            self.joined += 1
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: a caller that went away must not leave a warning


async def gather_all(aws: Iterable[Awaitable[V]]) -> list[V]:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def in_thread(fn: Callable[..., V], *args: object, undo: Callable[[V], object] | None = None,
                    pool: Executor | None = None) -> V:
    """``asyncio.to_thread`` that, when cancelled, still waits for the thread to finish.

    A cancelled ``to_thread`` returns at once while its thread runs on, so a
    caller that cleans up after a failure (closing a file descriptor, saving
    the index) could race a write still in progress -- or a later write could
    land in a descriptor number that was closed and reused. File steps run
    through this instead: cancellation takes effect when the step is done,
    and ``undo(result)`` (run in a thread) releases what a step that finished
    anyway acquired, such as an open temporary file. ``pool`` runs the step on
    that executor instead of the default one (hydrate's single writer thread).
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args) if pool is None else
                                 asyncio.get_running_loop().run_in_executor(pool, fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.gather(task, return_exceptions=True)
        if undo is not None and not task.cancelled() and task.exception() is None:
            await asyncio.to_thread(undo, task.result())
        raise
