"""The ``syncd`` command: one module per command group.

    core.py     parser, command registry, output and exit codes; ``commit`` and ``hydrate``
    volume.py   ``volume create|ls|info|log|rm``, ``put``, ``get``, ``restore``
    agent.py    ``agent``, ``status``
    maint.py    ``volume prune|check``
    gateway.py  ``gateway warm``
    files.py    ``ls``, ``cat``, ``rm``, ``cp``, ``mv``, ``diff``, ``volume rename`` (no mount needed)
    mount.py    ``mount VOLUME DIR``: a lazy FUSE mount
    progress.py rich progress bars
"""

from syncd.cli.core import main, run

__all__ = ["main", "run"]
