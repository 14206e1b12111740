"""What task code imports: ``volume()``, ``Volume``, workflow attach helpers, Covalent hooks.

    volume.py    ``Volume`` (a path under the volume root), ``volume()``, ``AgentClient``
    workflow.py  ``with_volume`` / ``attached``: mount before a task, commit after it
    covalent.py  Covalent: ``dispatch(workflow, volume=v)``, hooks, ``volume_electron`` (optional extra)
    direct.py    a blocking engine for the file methods and fsspec (no agent needed)
    fsspec.py    ``syncd://VOLUME/PATH`` for fsspec, pandas, pyarrow (optional extra)
"""

from syncd.sdk.volume import AgentClient, Volume, list_volumes, volume
from syncd.sdk.workflow import attached, with_volume

__all__ = ["AgentClient", "Volume", "attached", "list_volumes", "volume", "with_volume"]
