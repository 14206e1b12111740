"""The on-S3 format (docs/FORMAT.md): pure functions and data, no I/O.

    chunking.py  split bytes into chunks and name them by xxh3-128
    manifest.py  snapshots: entries, validation, (de)serialisation, diff and per-path merge
    layout.py    names and keys: volume names, the key of every object under a volume's prefix

Nothing here imports any other part of syncd except ``syncd.errors``.
"""
