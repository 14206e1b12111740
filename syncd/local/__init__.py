"""The worker's local file system: everything syncd reads or writes outside S3.

    dirfd.py  reach paths in a directory tasks share without following any symlink (descriptor walks)
    scan.py   walk a directory into ``LocalFile`` records (stat fingerprints), skipping syncd's temp files
    fs.py     place, replace and remove files safely (temp name + rename, no symlink followed)
    index.py  the local index: what syncd last wrote or committed, so unchanged files are not re-read
    watch.py  change detection for the agent's write-back: inotify, one walk at start, then events
    poll.py   the polling fallback (no inotify, watch limit reached, or asked for)
    watchsettings.py  the settings both watchers read (so poll.py needs nothing of watch.py)
    changes.py  what a walk would find, from the index plus the changed paths the watcher names
    mountdir.py  create and check SYNCD_ROOT and the agent's mount directories

Imports the format layer only; never the store or the engine.
"""
