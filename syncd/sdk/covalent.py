"""Optional Covalent integration (``pip install syncd[covalent]``).

Covalent runs an electron's ``call_before`` hooks, then the electron, then its
``call_after`` hooks, all on the worker that executes the task (see Covalent's
``wrapper_fn``). ``volume_hooks`` returns two ``DepsCall`` hooks: before the
task, mount the volume through that worker's agent (create-or-refer and pull
the latest commits); after it, commit and wait until the writes are durable::

    import covalent as ct
    from syncd.sdk.covalent import volume_electron

    @volume_electron("my-volume")
    def create_new_files(label, volume=None):   # volume: the mounted syncd.Volume
        ...

With ``inject=True`` (the default of ``volume_electron``) the mounted Volume
is passed to the task as the keyword argument ``volume``, so the task needs a
``volume=None`` parameter. Covalent skips ``call_after`` when the task raises;
the agent's background write-back still commits what the task wrote.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from syncd.format.layout import normalize_volume_name
from syncd.sdk.volume import Volume

RETVAL_KEYWORD = "volume"


def _covalent() -> Any:
    return importlib.import_module("covalent")  # optional: only needed when these are used


def mount_hook(name: str) -> Volume:
    return Volume(name).mount()


def commit_hook(name: str, message: str = "covalent task") -> None:
    Volume(name).commit(message)


def volume_hooks(vol: Volume | str, inject: bool = False) -> dict[str, list[Any]]:
    """``call_before``/``call_after`` lists for ``ct.electron`` that attach ``vol``."""
    ct = _covalent()
    name = vol.name if isinstance(vol, Volume) else normalize_volume_name(vol)
    before = ct.DepsCall(mount_hook, args=[name], retval_keyword=RETVAL_KEYWORD if inject else "")
    return {"call_before": [before], "call_after": [ct.DepsCall(commit_hook, args=[name])]}


def volume_electron(vol: Volume | str, inject: bool = True, **electron_args: Any) -> Callable[[Any], Any]:
    """``ct.electron`` with ``vol`` attached; other keyword arguments go to ``ct.electron``."""
    ct = _covalent()
    hooks = volume_hooks(vol, inject)

    def decorate(fn: Callable[..., Any]) -> Any:
        return ct.electron(fn, call_before=hooks["call_before"], call_after=hooks["call_after"],
                           **electron_args)
    return decorate
