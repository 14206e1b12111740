"""When a local copy of a chunk may be served without hashing it again: stat fingerprints.

A large file's chunks are cached as references into the file a hydrate
published (cache.py). Re-hashing the referenced range on every use costs a
pass over the bytes per warm hydrate (``cp`` pays none), so a reference also
carries the *fingerprint* of the file as it was when its bytes were verified:
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``. git trusts the same
stat data to skip re-reading an unchanged file, and restic to skip re-chunking
one. A reader opens the file, compares ``fstat`` with the recorded
fingerprint before *and after* it copies or reads the range, and trusts the
bytes only if all three agree; otherwise it hashes them, as before.

Why that is sound for changes made through the file system:

* every write, truncate, ``fallocate`` or write fault of a fresh shared
  mapping moves mtime and ctime; a ``utime`` that sets mtime back moves ctime,
  which user space cannot set; a rename over the name, or a copy put in its
  place, is another inode. Any of these after the fingerprint was taken
  makes it differ.
* The fingerprint is taken with ``fstat`` on the descriptor that wrote the
  file, after it was published (the rename moves ctime), never by looking the
  name up again: a file swapped in under the name meanwhile is not ours.
* Until it is published, the temporary file is private (``O_EXCL``, mode
  0600, created by the agent), so nobody else can hold a writable mapping of
  it that was made before the fingerprint; its mode is set after its mtime,
  so a writer that opens it in the moment between sees its write move mtime.
* Racy timestamps (git's term): file systems stamp times with a coarse clock,
  so a write in the same tick as the publish can leave ctime unchanged. A
  hydrate sets mtime to the snapshot's, and a write sets it to now; so the
  recorded mtime must differ from now by more than ``RACY_NS`` (and equal the
  snapshot's, with the expected size) for the fingerprint to be trusted at
  all. A file whose snapshot mtime is "now" is simply verified on every use.

What no fingerprint sees is damage below the file system (a bad disk sector,
a bit flip in the page cache, someone writing the block device): that is what
``syncd cache check`` finds, by hashing every cache entry and reference again
and forgetting the bad ones. Bytes from the store, a gateway or a cache entry
without a trusted fingerprint are always hashed before use.
"""

from __future__ import annotations

import os
import stat
import time

Fingerprint = tuple[int, int, int, int, int]   # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
RACY_NS = 2_000_000_000                        # mtimes this close to now prove nothing (coarse clocks)


def of(st: os.stat_result) -> Fingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def pinned(st: os.stat_result, size: int, mtime_ns: int) -> Fingerprint | None:
    """The fingerprint to record for a file just published with ``size`` and ``mtime_ns``, or None
    when it cannot vouch for the bytes (already changed, or its mtime is racy)."""
    if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_mtime_ns != mtime_ns:
        return None
    if abs(time.time_ns() - mtime_ns) < RACY_NS:
        return None
    return of(st)


def holds(fd: int, fingerprint: Fingerprint | None) -> bool:
    """Whether the open file ``fd`` still has ``fingerprint`` (False for None)."""
    if fingerprint is None:
        return False
    try:
        return of(os.fstat(fd)) == fingerprint
    except OSError:
        return False
