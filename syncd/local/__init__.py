"""The worker's local file system: everything syncd reads or writes outside S3.

    scan.py   walk a directory into ``LocalFile`` records (stat fingerprints), skipping syncd's temp files
    fs.py     place, replace and remove files safely (temp name + rename, no symlink followed)
    index.py  the local index: what syncd last wrote or committed, so unchanged files are not re-read
    watch.py  change detection for the agent's write-back

Imports the format layer only; never the store or the engine.
"""
