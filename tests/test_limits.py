"""in_thread on a caller's executor (hydrate's single writer thread) keeps its cancellation promise."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from syncd.limits import in_thread


async def test_cancelled_step_on_a_pool_returns_only_after_the_step_finished() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def step() -> str:
        started.set()
        release.wait(10)
        finished.append(threading.current_thread().name)
        return "written"

    with ThreadPoolExecutor(1, thread_name_prefix="syncd-write") as pool:
        task = asyncio.ensure_future(in_thread(step, pool=pool))
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()  # a cleanup after the cancel could still race the step
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(finished) == 1 and finished[0].startswith("syncd-write")
