"""The engine: volumes moved between the store and local directories.

The volume operations (commit, hydrate, edit, restore, rename) over the byte path in
``syncd.data`` (fetch, cache, upload, local copies, the gateway client), which imports
nothing of the engine.

    wiring.py       ``Engine`` and ``open_engine``: the one place that stacks store, wrappers, cache, fetcher
    volumes.py      ``VolumeRepo``: HEAD (and prune's lease), snapshots v1/v2, build/publish, list_dir/lookup/diff, upgrade
    trees.py        format v2 trees: verified cached reads, incremental building, tree diff
    hydrateplan.py  what a hydrate must do (pure planning over snapshot, index and scan)
    hydrate.py      snapshot -> local directory
    commit.py       local directory -> new snapshot, with conflict retry
    restore.py, transfer.py  restore an old snapshot; ``put``/``get`` of single paths
    edit.py         server-side reads and edits of a snapshot: ls, read by range, rm/cp/mv/write batches
    editview.py     the View a batch edits (snapshot trees + changes so far) and the edit operations
    diff.py         ``syncd diff``: added/removed/modified paths between two snapshots
    rename.py       ``volume rename``: copy the latest content to a new name, delete the old
    progress.py     the progress protocol the CLI implements
"""

from syncd.engine.wiring import Engine, open_engine

__all__ = ["Engine", "open_engine"]
