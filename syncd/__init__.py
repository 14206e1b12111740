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
"""

from syncd.config import Config
from syncd.errors import SyncdError
from syncd.sdk import Volume, attached, list_volumes, volume, with_volume

__version__ = "0.1.0"
__all__ = ["Config", "SyncdError", "Volume", "__version__", "attached", "list_volumes", "volume", "with_volume"]
