"""Commit from the mount: the upper layer and the inode table turned into per-path changes.

What changed. A commit walks the part of the inode table (tree.py) the
kernel has seen. A directory that was never listed and still sits where the
snapshot has it holds exactly what the snapshot holds there, so the walk does
not enter it (nothing is read for it); a never-listed directory that was
renamed is listed (and walked) so its entries move. Each walked node becomes
an entry at its current path:

* a file never written keeps its snapshot chunk list (a rename is free);
* a written file whose ``version`` has not moved since the last commit reuses
  the chunk list that commit uploaded;
* any other written file: a lower chunk that is still whole and untouched is
  reused without reading it; every other range, up to the next such chunk, is
  read through data.py and cut by content (data/chunkread.py, as
  engine/commit.py cuts a local file, with a cut forced where the kept chunk
  begins), hashed and handed to the engine's ``Uploader`` (packs, compression,
  only chunks the volume lacks are PUT, memory bounded by the byte budget). The
  uploader knows the chunks of the files being committed (their lower and last
  committed versions) and asks the volume's chunk index for the others, so a
  file rewritten through a temporary name uploads only what changed. If the file's version moved while it was
  read, it is read again (three times), then left at its last committed
  version -- a snapshot never holds bytes a file never held as a whole.

Our changes are ``diff(base, ours)`` over the walked territory only. ``base``
is what this mount last synced there: the entries of the last commit's walk,
plus the snapshot entries of every node listed since (tree.py's ``fresh``:
a directory listed after the last commit was not entered by it, so it held
the snapshot's content then). A node listed during a commit that the walk did
not reach (the kernel listed a directory the walk had skipped) waits for the
next commit. No map of the whole volume is ever built.

Publishing. The changes are applied to the trees of the snapshot HEAD names
(``VolumeRepo.build``: only the trees on changed paths are read and written)
and HEAD is advanced with ``publish_built`` (``If-Match``); on a lost race
HEAD is re-read and the same changes rebuilt on the new latest, as
engine/commit.py does: disjoint changes of two writers both survive, on the
same path the later commit wins. Symlinks that would lead out of the volume
are left out, as in an eager commit (the whole new tree is read for that
check only when a change involves a symlink, as engine/commit.py does).

Prune. While prune holds its lease in HEAD the commit waits, as an eager
commit does (docs/FORMAT.md, section 9); if a prune ran after the commit first
read HEAD (the epoch moved), the objects it reuses without uploading them are
checked again and the commit fails with CommitConflict if one is gone (an
eager commit re-reads the files using it instead; a mount can do that only
for written files, whose bytes are in the upper layer).

HEAD moves in one conditional PUT after the snapshot object is stored, so a
mount process killed at any point leaves either the old or the new snapshot,
never half a commit. Writes not yet committed live in the upper layer of the
dead process and are lost with it; ``fsync`` commits, so what an ``fsync``
returned for is in the bucket.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from syncd.data.chunkread import StreamCutter
from syncd.data.upload import Uploader
from syncd.engine.commit import UNSTABLE_RETRIES, needs_link_check, wait_for_lease
from syncd.engine.volumes import Head
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, NotFound, PreconditionFailed
from syncd.format.layout import object_key
from syncd.format.manifest import Changes, ChunkRef, Entry, diff, escaping_symlinks
from syncd.mount.data import Data
from syncd.mount.listing import TreeListing
from syncd.mount.tree import Fresh, Node, Tree

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 30
READ_STEP = 4 << 20       # bytes of a dirty range read from the upper layer at once


@dataclass
class MountCommit:
    volume: str
    snapshot: str | None
    seq: int
    changed: int = 0
    uploaded_bytes: int = 0
    files_read: int = 0
    attempts: int = 0
    skipped: int = 0


class Publisher:
    def __init__(self, engine: Engine, volume: str, tree: Tree, data: Data, head: Head) -> None:
        self.engine, self.volume, self.tree, self.data = engine, volume, tree, data
        self.head = head
        self.base: dict[str, Entry] = {}    # the last commit's walk (see the module docstring)
        self.synced = head.snapshot   # the snapshot the namespace shows
        self.lock = asyncio.Lock()
        self.clean_at = tree.changes
        self.commits = 0
        self.last_error: str | None = None
        self.last_commit_at: float | None = None   # wall-clock time of the last commit that changed it
        self.dirty_since: float | None = None      # monotonic; kept by the write-back loop (process.py)
        self.started_ns = 0     # wall clock when the last successful commit began (aside.py's note)

    @property
    def dirty(self) -> bool:
        return self.tree.changes != self.clean_at

    async def commit(self, message: str = "") -> MountCommit:
        async with self.lock:
            result = await self._commit(message)
        if result.changed:
            self.last_commit_at = time.time()
        return result

    async def _walk(self) -> tuple[list[tuple[str, Node]], dict[str, Entry], set[str], list[Fresh]]:
        """The walked nodes, the base of their paths, the paths of directories not entered,
        and the listed nodes taken into that base (given back if the commit fails)."""
        skipped: set[str] = set()

        def descend(node: Node, path: str) -> bool:
            if node.children is None and node.lower_path == path:
                skipped.add(path)
                return False
            return True

        nodes = [(path, node) async for path, node in self.tree.walk(descend=descend)]
        walked = {id(node) for _, node in nodes}
        fresh, self.tree.fresh = self.tree.fresh, []
        base = dict(self.base)
        used: list[Fresh] = []
        later: list[Fresh] = []
        for listed in fresh:
            node, lower, entry = listed          # entry.path is its bare name in directory ``lower``
            if id(node) in walked or not node.attached:
                path = f"{lower}/{entry.path}" if lower else entry.path
                if path not in base:
                    base[path] = replace(entry, path=path)
                used.append(listed)
            else:
                later.append(listed)
        self.tree.fresh[:0] = later
        return nodes, base, skipped, used

    async def _commit(self, message: str) -> MountCommit:
        mark, started_ns = self.tree.changes, time.time_ns()
        nodes, base, skipped, used = await self._walk()
        try:
            result, ours = await self._publish(nodes, base, skipped, message)
        except BaseException:
            self.tree.fresh[:0] = used          # still unsynced: the next commit's base needs them
            raise
        self.base = ours
        self.clean_at = mark
        self.started_ns = started_ns
        self.commits += 1
        return result

    async def _publish(self, nodes: list[tuple[str, Node]], base: dict[str, Entry], skipped: set[str],
                       message: str) -> tuple[MountCommit, dict[str, Entry]]:
        read = [(p, n) for p, n in nodes if n.kind == "file" and n.upper
                and not (n.committed is not None and n.committed[0] == n.version)]
        known = _locations([n.chunks for _, n in read], [base[p].chunks for p, _ in read if p in base])
        uploader = self.engine.uploader(self.volume, known)
        result = MountCommit(self.volume, self.head.snapshot, self.head.seq)
        try:
            ours, pending = await self._entries(nodes, base, uploader, result)
            await uploader.finish()
        except BaseException:
            await uploader.abort()
            raise
        for path, (node, version) in pending.items():
            entry = ours[path]
            ours[path] = Entry(path, "file", entry.mode, entry.mtime_ns, entry.size,
                               tuple(uploader.location(c.id) for c in entry.chunks))
        result.uploaded_bytes = uploader.uploaded_bytes
        changes = {p: e for p, e in diff(base, ours).items() if e is not None or not _inside(p, skipped)}
        result.changed = len(changes)
        if changes:
            uploaded = set(uploader.new) - uploader.existed
            await self._advance(changes, base, message, result, uploaded, uploader.indexed | uploader.existed)
        for path, (node, version) in pending.items():
            node.committed = (version, ours[path])     # only once HEAD holds it: else read again
        return result, ours

    async def _advance(self, changes: Changes, base: Mapping[str, Entry], message: str,
                       result: MountCommit, uploaded: set[str], unsure: set[str]) -> None:
        """``unsure``: chunks reused on the chunk index's or a PUT's word, old and perhaps
        unreferenced: checked after the first HEAD read free of prune's lease."""
        repo = self.engine.repo
        head = await wait_for_lease(self.engine, await repo.head(self.volume))
        await self._check_reused(changes, uploaded, unsure)
        checked_epoch = head.epoch
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result.attempts = attempt
            head = await wait_for_lease(self.engine, head)
            if head.epoch != checked_epoch:      # a prune ran: is what we reuse still there?
                await self._check_reused(changes, uploaded)
                checked_epoch = head.epoch
            theirs = await repo.header(self.volume, head.snapshot) if head.snapshot else None
            attempt_changes = dict(changes)
            built = await repo.build(self.volume, theirs, attempt_changes, base)
            if needs_link_check(attempt_changes, base, theirs):
                escaping = escaping_symlinks(await repo.trees.flat(self.volume, built.root))
                for path in escaping:
                    log.warning("volume %r: leaving out symlink %r: it leads out of the volume", self.volume, path)
                    attempt_changes[path] = None
                if escaping:
                    built = await repo.build(self.volume, theirs, attempt_changes, base)
            based_on = head.snapshot
            if theirs is not None and theirs.root is not None and built.root.id == theirs.root.id:
                self.head = head                 # nothing left to change: HEAD already holds ours
                result.snapshot, result.seq = head.snapshot, head.seq
                return
            try:
                head = await repo.publish_built(head, built, message)
            except PreconditionFailed:
                await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** min(attempt, 6))))
                head = await repo.head(self.volume)
                continue
            if based_on == self.synced:
                self.synced = head.snapshot   # else others' changes are in HEAD but not in our tree
            self.head = head
            result.snapshot, result.seq = head.snapshot, head.seq
            return
        raise CommitConflict(f"volume {self.volume!r}: the commit point moved {MAX_ATTEMPTS} times "
                             "while the mount tried to advance it; try again")

    async def _check_reused(self, changes: Changes, uploaded: set[str], only: set[str] | None = None) -> None:
        keys = {object_key(self.engine.layout, self.volume, ref)
                for entry in changes.values() if entry is not None for ref in entry.chunks
                if ref.id not in uploaded and (only is None or ref.id in only)}

        async def gone(key: str) -> bool:
            try:
                await self.engine.store.head(key)
            except NotFound:
                return True
            return False

        flags = await asyncio.gather(*(gone(k) for k in keys))
        if any(flags):
            raise CommitConflict(f"volume {self.volume!r}: a prune deleted objects this commit reuses "
                                 f"({sum(flags)}); try again")

    async def _entries(self, nodes: list[tuple[str, Node]], base: Mapping[str, Entry], uploader: Uploader,
                       result: MountCommit) -> tuple[dict[str, Entry], dict[str, tuple[Node, int]]]:
        ours: dict[str, Entry] = {}
        pending: dict[str, tuple[Node, int]] = {}
        for path, node in nodes:
            if node.kind == "dir":
                ours[path] = Entry(path, "dir", node.mode, node.mtime_ns)
            elif node.kind == "symlink":
                ours[path] = Entry(path, "symlink", node.mode, node.mtime_ns, target=node.target)
            elif not node.upper:
                ours[path] = Entry(path, "file", node.mode, node.mtime_ns, node.size, node.chunks)
            elif node.committed is not None and node.committed[0] == node.version:
                done = node.committed[1]
                ours[path] = Entry(path, "file", node.mode, node.mtime_ns, done.size, done.chunks)
            else:
                read = await self._read_file(node, uploader, result)
                if read is None:
                    result.skipped += 1
                    if path in base:
                        ours[path] = base[path]
                    continue
                refs, version = read
                ours[path] = Entry(path, "file", node.mode, node.mtime_ns, sum(r.size for r in refs), refs)
                pending[path] = (node, version)
        return ours, pending

    async def _read_file(self, node: Node, uploader: Uploader,
                         result: MountCommit) -> tuple[tuple[ChunkRef, ...], int] | None:
        """The file's chunks: each lower chunk still whole and untouched is kept without reading
        it; every other range, up to the next such chunk, is read and cut by content."""
        chunker = self.engine.chunker
        for _ in range(UNSTABLE_RETRIES):
            version, size = node.version, node.size
            starts = self.data.starts(node)
            keep = {starts[i]: c for i, c in enumerate(node.chunks)
                    if i not in node.present and starts[i] + c.size <= min(node.lower_limit, size)
                    and (not chunker.whole(size) or c.size == size)}
            bounds = sorted(keep)
            refs: list[ChunkRef] = []
            pos = 0
            try:
                while pos < size:
                    ref = keep.get(pos)
                    if ref is not None:
                        refs.append(ref)
                        pos += ref.size
                        continue
                    after = bisect.bisect_right(bounds, pos)
                    stop = bounds[after] if after < len(bounds) else size
                    refs += await self._cut(node, pos, stop, size, uploader)
                    pos = stop
            finally:
                uploader.end_group(node)
            if node.version == version:
                result.files_read += 1
                return tuple(refs), version
        return None

    async def _cut(self, node: Node, start: int, stop: int, size: int, uploader: Uploader) -> list[ChunkRef]:
        """Read bytes [start, stop) of the file and cut them by content, a cut forced at ``stop``
        (where a kept lower chunk begins, or the end), so a one-chunk edit uploads about one chunk."""
        chunker = self.engine.chunker
        cutter = StreamCutter(chunker, whole_file=(start, stop) == (0, size))
        small = chunker.whole(size)
        out: list[ChunkRef] = []

        async def add(pieces: list[tuple[bytes, str]]) -> None:
            for data, chunk_id in pieces:
                held = await self.engine.budget.acquire(len(data))
                await uploader.add(chunk_id, data, held, small, group=node)
                out.append(ChunkRef(chunk_id, len(data)))

        pos = start
        while pos < stop:
            data = bytes(await self.data.read(node, pos, min(READ_STEP, stop - pos)))   # a copy: a
            if not data:                  # view may lie in a chunk buffer the mount reuses
                break                     # truncated meanwhile: the version check reads it again
            pos += len(data)
            await add(await asyncio.to_thread(cutter.feed, data))
        await add(await asyncio.to_thread(cutter.finish))
        return out

    async def reload(self) -> list[Node]:
        """Commit, then move the namespace to the latest snapshot. Returns the nodes that
        left it (for the kernel's caches); open files keep their node and content."""
        async with self.lock:
            for _ in range(MAX_ATTEMPTS):
                if self.dirty:
                    await self._commit("mount: before reload")
                head = await self.engine.repo.head(self.volume)
                listing = (await TreeListing.open(self.engine.repo, self.volume, head.snapshot)
                           if head.snapshot != self.synced else None)
                if not self.dirty:
                    break     # from here the rebase's first walk does no I/O: nothing slips in
            else:
                raise CommitConflict(f"volume {self.volume!r}: writes kept arriving during the reload")
            if listing is None:
                return []
            mark = self.tree.changes
            gone = await self.tree.rebase(listing)
            self.head, self.base, self.synced = head, {}, head.snapshot
            self.clean_at = mark + 1       # changes made while the rebase listed: still to commit
            return gone


def _locations(*groups: Iterable[Iterable[ChunkRef]]) -> dict[str, ChunkRef]:
    known: dict[str, ChunkRef] = {}
    for group in groups:
        for refs in group:
            for ref in refs:
                known.setdefault(ref.id, ref)
    return known


def _inside(path: str, dirs: set[str]) -> bool:
    """Is ``path`` below one of ``dirs`` (directories the walk did not enter)?"""
    while "/" in path:
        path = path.rpartition("/")[0]
        if path in dirs:
            return True
    return "" in dirs
