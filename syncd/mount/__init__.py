"""The lazy mount: a volume as a FUSE file system whose bytes arrive on read.

listing.py  what the snapshot holds, one directory at a time (the v1/v2 seam)
tree.py     the inode table: the merged namespace of snapshot and local changes
data.py     file bytes: reads over lower chunks and the upper layer, copy-up
lower.py    lower chunks: verified buffers in bounded memory, runs read ahead with one GET each
publish.py  commit: the listed part of the inode table as changes, built onto HEAD's trees
fs.py       the pyfuse3 Operations over tree and data (the only module importing pyfuse3)
control.py  the mount process's control socket (commit, reload, status)
process.py  running one mount process; stale mount points
spawn.py    the agent's lazy mode: one mount process per lazy volume, resumed after a restart
"""
