"""A cold hydrate's top directories, made aside under temporary names and renamed whole.

Every file a hydrate writes appears atomically: its bytes go to a temporary
name that is renamed over the real one (fs.py), so nobody ever sees half a
file. On ext4 the rename costs about as much as the rest of a small file's
writing: perf put 7-8% of a cold hydrate's CPU in ``renameat`` (a lookup, an
entry added and one removed), and creating the files under their own names
saved 10-15% of the CPU of a cold hydrate of /usr/share or of 100,000 small
files.

So a cold hydrate (hydratewalk.py: nothing of the target in the index) makes
each directory it creates at the top of the target under a temporary name
(``.syncd-tmp-...``, reserved: never a snapshot's name, skipped by every scan
and commit) and writes everything below it in place, each file under its own
name (``fs.Small.in_place``): nobody can see a half file there, because
nobody knows the directory yet. Once the walk has left the directory and
every write into it is done, it is renamed to its name, whole. A hydrate
killed or failed part-way leaves such directories behind; the next one (a
full walk, the index not being exact) removes them as leftovers, whole, and
writes their contents again. A directory renamed into place keeps its
inodes, so the fingerprints recorded for its files stay true.

If a directory appeared at the name meanwhile (a task made one), the rename
does not replace a non-empty one: the path is reported as a late conflict
and the aside copy stays, to be removed by the next hydrate.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable


class Aside:
    """Which top directories are aside, under which temporary name, and what is pending in them."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}     # top directory -> its temporary name
        self._writes: Counter[str] = Counter()   # top -> writes queued into it and not done
        self._walked: set[str] = set()      # tops the walk has left

    def add(self, top: str, tmp: str) -> None:
        self.names[top] = tmp

    def _top(self, path: str) -> str | None:
        top = path.partition("/")[0]
        return top if top in self.names else None

    def where(self, path: str) -> tuple[str, bool]:
        """``(path on disk now, whether it lies in an aside directory)``."""
        top, sep, rest = path.partition("/")
        tmp = self.names.get(top)
        return (path, False) if tmp is None else (f"{tmp}{sep}{rest}", True)

    def queued(self, path: str) -> None:
        """A write into ``path`` was queued."""
        top = self._top(path)
        if top is not None:
            self._writes[top] += 1

    def written(self, paths: Iterable[str]) -> list[str]:
        """Writes into ``paths`` are done; the tops that are now complete."""
        tops = []
        for path in paths:
            top = self._top(path)
            if top is not None:
                self._writes[top] -= 1
                tops.append(top)
        return self._complete(tops)

    def finished(self, path: str) -> list[str]:
        """The walk left directory ``path``; ``[path]`` if it is an aside top and complete."""
        if path not in self.names:
            return []
        self._walked.add(path)
        return self._complete([path])

    def _complete(self, tops: Iterable[str]) -> list[str]:
        out = []
        for top in set(tops):
            if top in self._walked and self._writes[top] <= 0:
                self._walked.discard(top)
                del self._writes[top]
                out.append(top)
        return out

    def publish(self, root_fd: int, top: str) -> None:
        """Blocking: rename the aside directory ``top`` to its name in the target (``root_fd``);
        OSError if something other than an empty directory is there. Then call ``done``."""
        os.rename(self.names[top], top, src_dir_fd=root_fd, dst_dir_fd=root_fd)

    def done(self, top: str) -> None:
        """``top`` is in place (or given up): its paths are its own again."""
        del self.names[top]
