"""syncd: persistent volumes for compute workflows, kept in object storage.

The package face: ``from syncd import volume`` is all task code needs. The layers, top to
bottom (each imports only those below it; ``pyproject.toml``'s import contract checks it)::

    cli/                 the ``syncd`` command
    agent/  sdk/         the sidecar; what task code imports    (gateway/ sits here too)
    maint/               prune, check, reachability
    engine/              cache, fetch, hydrate, commit, upload, volume repository, wiring
    local/  store/       the worker's file system; the object store seam and its wrappers
    format/              chunking, manifests, keys: pure
    config, errors, limits   shared by every layer

The names are imported on first use (PEP 562): ``python -m syncd hydrate`` imports
this package too, and the SDK's HTTP client and agent plumbing cost it start-up for
nothing (docs/BENCHMARKS.md, start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.config import Config
    from syncd.errors import SyncdError
    from syncd.sdk import Volume, attached, list_volumes, volume, with_volume  # type: ignore[no-redef]

__version__ = "0.1.0"
__all__ = ["Config", "SyncdError", "Volume", "__version__", "attached", "list_volumes", "volume", "with_volume"]
_HOME = {"Config": "syncd.config", "SyncdError": "syncd.errors", "Volume": "syncd.sdk",
         "attached": "syncd.sdk", "list_volumes": "syncd.sdk", "volume": "syncd.sdk", "with_volume": "syncd.sdk"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'syncd' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
