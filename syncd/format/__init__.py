"""The on-S3 format (docs/FORMAT.md): pure functions and data, no I/O.

    chunking.py  name chunks by xxh3-128; where files are cut (FastCDC, content-defined)
    compress.py  zstd per chunk where it pays, and inflating within the format's bounds
    chunkindex.py  the chunk index's objects (format 3): encode, verify, validate
    manifest.py  entries and v1 snapshots: validation, (de)serialisation, diff and per-path merge
    tree.py      formats 2 and 3: canonical JSON, directory trees and snapshots naming a root tree
    treewire.py  a tree's canonical bytes <-> its items (msgspec)
    layout.py    names and keys: volume names, the key of every object under a volume's prefix

Nothing here imports any other part of syncd except ``syncd.errors``.
"""
