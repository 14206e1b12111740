"""Attaching a volume to workflow tasks and function services.

``attached(vol)`` is a context manager and ``with_volume(vol)`` the same as a
decorator. Entering mounts the volume through the worker's agent (creating it
if needed and pulling every commit made so far, so a task sees what earlier
tasks and dispatches wrote); leaving commits and returns only once the writes
are durable. The commit runs even if the task raised, so what it wrote is
never lost; the task's exception then propagates unchanged.

Parallel tasks of one dispatch on one worker share the agent's single mount;
tasks on other workers commit to the same volume and the conditional HEAD
update merges disjoint writes, so after all tasks ended the volume holds all
of them. A task started after that -- the next dispatch -- mounts and sees
everything::

    my_volume = volume("/my-volume")

    @with_volume(my_volume)
    def create_new_files(label): ...

For a function service, attach once around the initializer and the endpoints
read and write through the same mount (see tests/test_workflow.py).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from syncd.sdk.volume import Volume

P = ParamSpec("P")
R = TypeVar("R")


def _as_volume(vol: Volume | str) -> Volume:
    return vol if isinstance(vol, Volume) else Volume(vol)


@contextlib.contextmanager
def attached(vol: Volume | str, message: str = "task") -> Iterator[Volume]:
    """Mount ``vol`` for the block; commit its writes when the block ends."""
    mounted = _as_volume(vol).mount()
    try:
        yield mounted
    finally:
        mounted.commit(message)


def with_volume(vol: Volume | str, message: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: run the task inside ``attached(vol)``."""
    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with attached(vol, message or str(getattr(fn, "__name__", "task"))):
                return fn(*args, **kwargs)
        return run
    return decorate
