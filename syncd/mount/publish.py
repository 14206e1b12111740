"""Commit from the mount: new entries from the lower snapshot plus the upper layer.

A commit walks the inode table (tree.py) and turns every node into a snapshot
entry at its current path:

* a file never written keeps its snapshot chunk list (a rename is free);
* a written file whose ``version`` has not moved since the last commit reuses
  the chunk list that commit uploaded;
* any other written file is read through data.py in ``chunk_size`` spans,
  exactly as engine/commit.py reads a local file: a span that is still a whole
  untouched lower chunk is reused without reading it, the rest is hashed and
  handed to the engine's ``Uploader`` (packs for small files, only chunks the
  volume lacks are PUT, memory bounded by the byte budget). If the file's
  version moved while it was read, it is read again (three times), then left
  at its last committed version -- a snapshot never holds bytes a file never
  held as a whole.

Our changes are ``diff(base, ours)`` where ``base`` is what this mount last
synced (the snapshot it loaded, then each commit it made). They are replayed
on the latest snapshot with ``manifest.apply`` and HEAD is advanced with
``VolumeRepo.publish`` (``If-Match``); on a lost race HEAD is re-read and the
same changes applied again, as engine/commit.py does: disjoint changes of two
writers both survive, on the same path the later commit wins. Symlinks that
would lead out of the volume are left out, as in an eager commit.

HEAD moves in one conditional PUT after the snapshot object is stored, so a
mount process killed at any point leaves either the old or the new snapshot,
never half a commit. Writes not yet committed live in the upper layer of the
dead process and are lost with it; ``fsync`` commits, so what an ``fsync``
returned for is in the bucket.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

from syncd.engine.upload import Uploader
from syncd.engine.volumes import Head
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, PreconditionFailed
from syncd.format.chunking import content_id, spans
from syncd.format.manifest import ChunkRef, Entry, apply, diff, escaping_symlinks
from syncd.mount.data import Data
from syncd.mount.listing import SnapshotListing
from syncd.mount.tree import Node, Tree

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 30
UNSTABLE_RETRIES = 3


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
    def __init__(self, engine: Engine, volume: str, tree: Tree, data: Data, head: Head,
                 base: dict[str, Entry]) -> None:
        self.engine, self.volume, self.tree, self.data = engine, volume, tree, data
        self.head, self.base = head, base
        self.synced = head.snapshot   # the snapshot the namespace shows
        self.lock = asyncio.Lock()
        self.clean_at = tree.changes
        self.commits = 0
        self.last_error: str | None = None

    @property
    def dirty(self) -> bool:
        return self.tree.changes != self.clean_at

    async def commit(self, message: str = "") -> MountCommit:
        async with self.lock:
            return await self._commit(message)

    async def _commit(self, message: str) -> MountCommit:
        mark = self.tree.changes
        uploader = Uploader(self.engine.store, self.engine.layout, self.volume, self.engine.budget,
                            self.engine.config.pack_size, _locations(self.base.values()))
        result = MountCommit(self.volume, self.head.snapshot, self.head.seq)
        try:
            ours, pending = await self._entries(uploader, result)
            await uploader.finish()
        except BaseException:
            await uploader.abort()
            raise
        for path, (node, version) in pending.items():
            entry = ours[path]
            ours[path] = Entry(path, "file", entry.mode, entry.mtime_ns, entry.size,
                               tuple(uploader.location(c.id) for c in entry.chunks))
            node.committed = (version, ours[path])
        result.uploaded_bytes = uploader.uploaded_bytes
        changes = diff(self.base, ours)
        result.changed = len(changes)
        if changes:
            await self._advance(changes, message, result)
        self.base = ours
        self.clean_at = mark
        self.commits += 1
        return result

    async def _advance(self, changes: dict[str, Entry | None], message: str, result: MountCommit) -> None:
        head = await self.engine.repo.head(self.volume)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result.attempts = attempt
            theirs = (await self.engine.repo.snapshot(self.volume, head.snapshot)).entries if head.snapshot else {}
            merged = apply(theirs, changes, self.base)
            for path in escaping_symlinks(merged):
                log.warning("volume %r: leaving out symlink %r: it leads out of the volume", self.volume, path)
                del merged[path]
            based_on = head.snapshot
            try:
                head = await self.engine.repo.publish(head, merged, message)
            except PreconditionFailed:
                await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** min(attempt, 6))))
                head = await self.engine.repo.head(self.volume)
                continue
            if based_on == self.synced:
                self.synced = head.snapshot   # else others' changes are in HEAD but not in our tree
            self.head = head
            result.snapshot, result.seq = head.snapshot, head.seq
            return
        raise CommitConflict(f"volume {self.volume!r}: the commit point moved {MAX_ATTEMPTS} times "
                             "while the mount tried to advance it; try again")

    async def _entries(self, uploader: Uploader,
                       result: MountCommit) -> tuple[dict[str, Entry], dict[str, tuple[Node, int]]]:
        ours: dict[str, Entry] = {}
        pending: dict[str, tuple[Node, int]] = {}
        async for path, node in self.tree.walk():
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
                    if path in self.base:
                        ours[path] = self.base[path]
                    continue
                refs, version = read
                ours[path] = Entry(path, "file", node.mode, node.mtime_ns, sum(r.size for r in refs), refs)
                pending[path] = (node, version)
        return ours, pending

    async def _read_file(self, node: Node, uploader: Uploader,
                         result: MountCommit) -> tuple[tuple[ChunkRef, ...], int] | None:
        config = self.engine.config
        for _ in range(UNSTABLE_RETRIES):
            version, size = node.version, node.size
            starts = self.data.starts(node)
            lower = {(starts[i], c.size): (i, c) for i, c in enumerate(node.chunks)}
            refs: list[ChunkRef] = []
            for offset, length in spans(size, config.chunk_size):
                reuse = lower.get((offset, length))
                if (reuse is not None and reuse[0] not in node.present
                        and offset + length <= node.lower_limit):
                    refs.append(reuse[1])
                    continue
                held = await self.engine.budget.acquire(length)
                try:
                    data = await self.data.read(node, offset, length)
                    chunk_id = await asyncio.to_thread(content_id, data) if length > 1 << 20 else content_id(data)
                except BaseException:
                    await self.engine.budget.release(held)
                    raise
                await uploader.add(chunk_id, data, held, size < config.pack_threshold)
                refs.append(ChunkRef(chunk_id, length))
            if node.version == version:
                result.files_read += 1
                return tuple(refs), version
        return None

    async def reload(self) -> list[Node]:
        """Commit, then move the namespace to the latest snapshot. Returns the nodes that
        left it (for the kernel's caches); open files keep their node and content."""
        async with self.lock:
            for _ in range(MAX_ATTEMPTS):
                if self.dirty:
                    await self._commit("mount: before reload")
                head, snap = await self.engine.repo.latest(self.volume)
                if not self.dirty:
                    break     # from here to the rebase nothing yields to the loop (v1 listing)
            else:
                raise CommitConflict(f"volume {self.volume!r}: writes kept arriving during the reload")
            if head.snapshot == self.synced:
                return []
            entries = dict(snap.entries) if snap else {}
            gone = await self.tree.rebase(SnapshotListing(entries))
            self.head, self.base, self.synced = head, entries, head.snapshot
            self.clean_at = self.tree.changes
            return gone


def _locations(entries: Iterable[Entry]) -> dict[str, ChunkRef]:
    known: dict[str, ChunkRef] = {}
    for entry in entries:
        for ref in entry.chunks:
            known.setdefault(ref.id, ref)
    return known
