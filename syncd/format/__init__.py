"""The on-S3 format (docs/FORMAT.md): pure functions and data, no I/O.

    chunking.py  split bytes into chunks and name them by xxh3-128
    manifest.py  entries and v1 snapshots: validation, (de)serialisation, diff and per-path merge
    tree.py      format v2: canonical JSON, directory trees and snapshots naming a root tree
    layout.py    names and keys: volume names, the key of every object under a volume's prefix

Nothing here imports any other part of syncd except ``syncd.errors``.
"""
