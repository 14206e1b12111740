"""``from syncd.covalent import dispatch``: the Covalent attach-once API under the name users type.

The product page attaches a volume once, at dispatch::

    import covalent as ct
    from syncd import volume
    from syncd.covalent import dispatch, get_result

    my_volume = volume("my-volume")
    dispatch_id = dispatch(workflow, volume=my_volume)("model-1a-small", "model-3c-small")
    result = get_result(dispatch_id, wait=True)

This module only re-exports :mod:`syncd.sdk.covalent`, which stays the implementation
(the hooks, ``volume_electron``, how the graph is given them). It sits at the top of the
layers, beside ``syncd.cli`` (``pyproject.toml``), since it imports the SDK. Importing it
does not import covalent: that happens on first use, so ``import syncd.covalent`` works
without the ``covalent`` extra and fails with covalent's own ImportError only when called.
"""

from syncd.sdk.covalent import (
    attach_to_graph,
    commit_hook,
    dispatch,
    get_result,
    mount_hook,
    volume_electron,
    volume_hooks,
)

__all__ = ["attach_to_graph", "commit_hook", "dispatch", "get_result", "mount_hook", "volume_electron", "volume_hooks"]
