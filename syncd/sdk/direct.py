"""Blocking access to the engine from plain code: the SDK's file methods and fsspec.

``Volume.listdir()`` and friends, and the ``syncd://`` filesystem, talk to the
bucket directly (no agent: a notebook or a worker with only configuration).
They are called from synchronous code -- often from threads, or from inside an
event loop the SDK does not own -- so the engine lives on its own event loop in
one daemon thread, opened once per configuration on first use and reused
(its chunk cache and connection pool with it). ``run(coro)`` submits a
coroutine there and blocks for its result; ``iterate(agen)`` turns an async
generator into a blocking iterator one item at a time, so a streamed read
holds at most a few chunks in memory.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from syncd.config import Config
from syncd.engine.wiring import Engine, open_engine
from syncd.store.base import ObjectStore

T = TypeVar("T")


class Direct:
    """One engine on a private event loop; thread-safe blocking calls into it."""

    def __init__(self, config: Config, backend: ObjectStore | None = None) -> None:
        self.config, self._backend = config, backend   # backend: tests put a MemoryStore at the bottom
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="syncd-direct", daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        self._engine: Engine | None = None
        self._lock = asyncio.Lock()

    async def engine(self) -> Engine:
        async with self._lock:
            if self._engine is None:
                self._engine = await self._stack.enter_async_context(open_engine(self.config, backend=self._backend))
            return self._engine

    def run(self, fn: Callable[[Engine], Coroutine[Any, Any, T]]) -> T:
        """``fn(engine)`` on the engine's loop; blocks until it is done."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("syncd: a blocking call from inside the engine's own loop")

        async def call() -> T:
            return await fn(await self.engine())
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def iterate(self, fn: Callable[[Engine], AsyncIterator[T]]) -> Iterator[T]:
        """The items of the async generator ``fn(engine)``, fetched one at a time."""
        holder: list[AsyncIterator[T]] = []

        async def start(engine: Engine) -> None:
            holder.append(fn(engine))
        self.run(start)
        agen = holder[0]

        async def step(engine: Engine) -> tuple[bool, T | None]:
            try:
                return True, await agen.__anext__()
            except StopAsyncIteration:
                return False, None
        try:
            while True:
                more, item = self.run(step)
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            closer = getattr(agen, "aclose", None)
            if closer is not None:
                async def close(engine: Engine) -> None:
                    await closer()
                with contextlib.suppress(Exception):
                    self.run(close)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stack.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


_shared: dict[tuple[int, Config], Direct] = {}   # by process too: a forked child needs its own thread
_shared_lock = threading.Lock()


def direct(config: Config | None = None) -> Direct:
    """The shared engine for ``config`` (default: from the environment)."""
    config = config or Config.from_env()
    with _shared_lock:
        found = _shared.get((os.getpid(), config))
        if found is None:
            found = _shared[(os.getpid(), config)] = Direct(config)
        return found


def release(config: Config) -> None:
    """Close and forget the shared engine for ``config`` (tests; long-lived processes switching stores)."""
    with _shared_lock:
        found = _shared.pop((os.getpid(), config), None)
    if found is not None:
        found.close()


@atexit.register
def _close_all() -> None:
    with _shared_lock:
        for (pid, _), found in _shared.items():
            if pid == os.getpid():
                found.close()
        _shared.clear()
