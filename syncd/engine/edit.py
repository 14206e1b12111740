"""Server-side edits: read and change a volume's files without a local copy.

Reading (format v2: docs/FORMAT.md). A snapshot is a tree of content-addressed
directory objects, and every read here touches only the trees it needs:
``stat``/``entry`` walk the trees on one path (``VolumeRepo.lookup``),
``listdir`` reads those plus the directory's own tree (``VolumeRepo.list_dir``),
and a recursive listing loads the subtree below the path and nothing above or
beside it. So answering ``syncd ls VOL dir7`` costs depth + 1 tree reads in a
volume of any size (and the TreeStore's cache makes a second look free).
``read`` streams a file's bytes chunk by chunk through ``engine.fetcher`` --
the cache, then the gateways, then the store, every chunk re-hashed against
its id -- and fetches only the chunks that overlap the byte range asked for,
so reading the footer of a 10 GiB file costs one or two chunk GETs.

Writing. An edit is a list of operations (write a file, mkdir, rm, cp, mv).
:class:`Batch` collects them; ``publish`` runs them, one after the other, on a
:class:`View` of the latest snapshot: the snapshot's trees plus the changes
the earlier operations made. An operation looks up only the paths it touches
(a recursive rm/cp/mv lists the one subtree it moves), and its changes are
explicit per path (removing or overwriting a directory lists everything below
it as removed; writing below a missing directory creates it), so the batch's
net changes are a ``Changes`` map like a commit's. ``VolumeRepo.build``
replays them on the snapshot's trees -- only the trees on changed paths are
read and rewritten -- and ``publish_built`` advances HEAD with ``If-Match``.
If another writer moved HEAD meanwhile, the operations run again on a view of
the new latest snapshot and the build is redone there, so concurrent edits of
different paths both survive and nothing is lost. A batch whose net changes
are empty makes no snapshot. A batch of any number of operations is one
snapshot; a single CLI or SDK call is a batch of one.

New file bytes are cut by content exactly as a commit cuts them
(data/chunkread.py) and go through the commit path's :class:`Uploader` (small
files packed, large ones in large packs, compressed where it pays, the byte
budget bounding memory) before anything is published; the chunks of the file
being replaced are known to it and every other chunk is looked up in the
volume's chunk index, so writing bytes the volume already holds anywhere
uploads nothing. Chunks reused on the index's word (or on a PUT's "already
exists") are checked to exist after a HEAD read free of prune's lease, before
the first publish; the chunks of the replaced files again if a prune ran
since (the epoch moved), as commit.py does. ``cp`` and ``mv`` only copy entries: the
chunks are shared, no file data moves.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from syncd.data.chunkread import WINDOW, StreamCutter
from syncd.data.upload import Uploader
from syncd.engine.commit import MAX_ATTEMPTS, wait_for_lease
from syncd.engine.editview import ROOT, Op, View, op_copy, op_mkdir, op_remove, subtree
from syncd.engine.trees import Built
from syncd.engine.volumes import Head
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, ConfigError, NotFound, PreconditionFailed, SnapshotNotFound, VolumeNotFound
from syncd.format.layout import object_key
from syncd.format.manifest import ChunkRef, Entry, check_path

PREFETCH = 2                        # chunks fetched ahead of a streaming reader


def normalize_path(path: str | None) -> str:
    """'' for the whole volume, else a checked relative path ('/a/b/' -> 'a/b')."""
    text = (path or "").strip("/")
    return "" if text in ("", ".") else check_path(text)


def _by_path(entries: dict[str, Entry]) -> list[Entry]:
    return [entries[p] for p in sorted(entries)]


@dataclass(frozen=True)
class Tree:
    """One snapshot of a volume (the latest, or a named one); nothing of its trees is read yet."""

    volume: str
    head: Head
    snapshot: str | None


@dataclass
class EditResult:
    volume: str
    snapshot: str | None
    seq: int
    changed: int
    attempts: int
    message: str
    trees_written: int = 0


# ---------------------------------------------------------------- snapshot access

async def tree(engine: Engine, volume: str, snapshot_id: str | None = None) -> Tree:
    """``snapshot_id`` (default: the latest snapshot) of ``volume``: HEAD and the header only."""
    head = await engine.repo.head(volume)
    sid = snapshot_id or head.snapshot
    if sid:
        await engine.repo.header(volume, sid)     # SnapshotNotFound if there is no such snapshot
    return Tree(volume, head, sid)


async def parent_of(engine: Engine, volume: str, snapshot_id: str | None) -> str | None:
    return (await engine.repo.header(volume, snapshot_id)).parent if snapshot_id else None


async def _publish(engine: Engine, head: Head, built: Built, message: str) -> Head:
    return await engine.repo.publish_built(head, built, message)


# ---------------------------------------------------------------- reading

async def entry_at(engine: Engine, t: Tree, path: str) -> Entry | None:
    """The entry at ``path`` (the root for ''), or None; reads the trees on ``path`` only."""
    path = normalize_path(path)
    if not path:
        return ROOT
    return await engine.repo.lookup(t.volume, t.snapshot, path) if t.snapshot else None


async def lookup(engine: Engine, t: Tree, path: str) -> Entry:
    found = await entry_at(engine, t, path)
    if found is None:
        raise SnapshotNotFound(f"volume {t.volume!r} has nothing at {normalize_path(path)!r}"
                               + (f" in snapshot {t.snapshot}" if t.snapshot != t.head.snapshot else ""))
    return found


async def entry(engine: Engine, volume: str, path: str, snapshot_id: str | None = None) -> Entry | None:
    return await entry_at(engine, await tree(engine, volume, snapshot_id), path)


async def stat(engine: Engine, volume: str, path: str, snapshot_id: str | None = None) -> Entry:
    return await lookup(engine, await tree(engine, volume, snapshot_id), path)


async def children(engine: Engine, t: Tree, path: str, recursive: bool = False) -> list[Entry]:
    """The entries below directory ``path`` sorted by path; a file's listing is the file itself."""
    top = await lookup(engine, t, path)
    if top.kind != "dir":
        return [top]
    if t.snapshot is None:
        return []
    path = normalize_path(path)
    if recursive:
        return _by_path(await subtree(engine, t.volume, t.snapshot, path))
    listed = await engine.repo.list_dir(t.volume, t.snapshot, path) or []
    return sorted(listed, key=lambda e: e.path)


async def listing(engine: Engine, volume: str, path: str = "", recursive: bool = False,
                  snapshot_id: str | None = None) -> tuple[Tree, Entry, list[Entry]]:
    """The snapshot, the entry at ``path`` and its listing (SnapshotNotFound if nothing is there)."""
    t = await tree(engine, volume, snapshot_id)
    top = await lookup(engine, t, path)
    return t, top, await children(engine, t, path, recursive) if top.kind == "dir" else [top]


async def listdir(engine: Engine, volume: str, path: str = "", recursive: bool = False,
                  snapshot_id: str | None = None) -> list[Entry]:
    return (await listing(engine, volume, path, recursive, snapshot_id))[2]

def _file(volume: str, entry: Entry) -> Entry:
    if entry.kind != "file":
        raise ConfigError(f"volume {volume!r}: {entry.path or '/'!r} is a {entry.kind}, not a file")
    return entry


async def read(engine: Engine, volume: str, entry: Entry, start: int = 0,
               end: int | None = None) -> AsyncIterator[bytes]:
    """Bytes ``[start, end)`` of the file ``entry``, streamed one verified chunk at a time."""
    _file(volume, entry)
    end = entry.size if end is None else min(end, entry.size)
    wanted: list[tuple[ChunkRef, int, int]] = []   # (chunk, first byte wanted, end) within it
    offset = 0
    for ref in entry.chunks:
        lo, hi = max(start - offset, 0), min(end - offset, ref.size)
        if lo < hi:
            wanted.append((ref, lo, hi))
        offset += ref.size
    pending: list[asyncio.Task[bytes]] = []
    try:
        for i, (ref, lo, hi) in enumerate(wanted):
            while len(pending) <= PREFETCH and i + len(pending) < len(wanted):
                pending.append(asyncio.ensure_future(engine.fetcher.get(volume, wanted[i + len(pending)][0])))
            data = await pending.pop(0)
            yield data[lo:hi] if (lo, hi) != (0, ref.size) else data
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def read_bytes(engine: Engine, volume: str, entry: Entry, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([piece async for piece in read(engine, volume, entry, start, end)])


# ---------------------------------------------------------------- batches

@dataclass
class Batch:
    """Operations on one volume that become one snapshot when published."""

    engine: Engine
    volume: str
    create: bool = False
    ops: list[Op] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    _uploader: Uploader | None = None
    _seen: Head | None = None           # the HEAD the uploader's known chunks come from
    _reused: set[str] = field(default_factory=set)   # known chunks our files use without a PUT

    async def _upload(self, path: str) -> Uploader:
        """The batch's uploader; it knows the chunks of the file now at ``path`` (no re-upload)."""
        if self._uploader is None or self._seen is None:
            try:
                self._seen = await self.engine.repo.head(self.volume)
            except VolumeNotFound:
                if not self.create:
                    raise
                self._seen, _ = await self.engine.repo.create(self.volume)
            self._uploader = self.engine.uploader(self.volume, {})
        head = self._seen
        current = await self.engine.repo.lookup(self.volume, head.snapshot, path) if head.snapshot else None
        for ref in current.chunks if current is not None else ():
            self._uploader.known.setdefault(ref.id, ref)
        return self._uploader

    def writer(self, path: str, mode: int = 0o644) -> FileWriter:
        return FileWriter(self, normalize_path(path), mode)

    async def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        w = self.writer(path, mode)
        await w.write(data)
        await w.close()

    def add(self, op: Op, words: str) -> None:
        self.ops.append(op)
        self.words.append(words)

    def mkdir(self, path: str) -> None:
        self.add(op_mkdir(normalize_path(path)), f"mkdir {path}")

    def remove(self, path: str, recursive: bool = False, missing_ok: bool = False) -> None:
        self.add(op_remove(normalize_path(path), recursive, missing_ok), f"rm {path}")

    def copy(self, src: str, dst: str) -> None:
        self.add(op_copy(normalize_path(src), normalize_path(dst)), f"cp {src} {dst}")

    def move(self, src: str, dst: str) -> None:
        self.add(op_copy(normalize_path(src), normalize_path(dst), remove_source=True), f"mv {src} {dst}")

    async def abort(self) -> None:
        if self._uploader is not None:
            await self._uploader.abort()
        self.ops, self.words = [], []

    async def publish(self, message: str = "") -> EditResult:
        """One snapshot with every operation, run again on the latest until HEAD advances."""
        message = message or "; ".join(self.words)[:500]
        checked: int | None = None          # the epoch of the HEAD our reused chunks were checked under
        if self._uploader is not None:
            await self._uploader.finish()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                head = await wait_for_lease(self.engine, await self.engine.repo.head(self.volume))
            except VolumeNotFound:
                if not self.create:
                    raise
                await self.engine.repo.create(self.volume)
                continue
            if self._uploader is not None and head.epoch != checked:
                await self._check_reused(self._uploader, head, checked is None)
                checked = head.epoch
            view = View(self.engine, self.volume, head.snapshot)
            for op in self.ops:
                await op(view)
            changes = await view.net()
            theirs = await self.engine.repo.header(self.volume, head.snapshot) if head.snapshot else None
            if not changes and theirs is not None:
                return EditResult(self.volume, head.snapshot, head.seq, 0, attempt, message)
            built = await self.engine.repo.build(self.volume, theirs, changes, {})
            if theirs is not None and theirs.root is not None and built.root.id == theirs.root.id:
                return EditResult(self.volume, head.snapshot, head.seq, 0, attempt, message)
            try:
                head = await _publish(self.engine, head, built, message)
            except PreconditionFailed:
                await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** min(attempt, 6))))
                continue
            return EditResult(self.volume, head.snapshot, head.seq, len(changes), attempt, message,
                              built.trees_written)
        raise CommitConflict(f"volume {self.volume!r}: the commit point kept moving; try again")

    async def _check_reused(self, uploader: Uploader, head: Head, first: bool) -> None:
        """After a HEAD read free of prune's lease: do the chunks we reuse without a PUT still exist?

        Chunks whose PUT found them stored and chunks found through the chunk index may be
        old and unreferenced, exactly what a prune deletes, so they are checked before the
        first publish (see commit.py); the chunks of the files we replace are referenced by
        the HEAD we read, and are checked again only if a prune ran since (the epoch moved).
        """
        suspects = uploader.existed | uploader.indexed
        if not first or self._seen is None or head.epoch != self._seen.epoch:
            suspects |= self._reused - set(uploader.new)
        await self._check(uploader, suspects)

    async def _check(self, uploader: Uploader, chunk_ids: set[str]) -> None:
        for chunk_id in chunk_ids:
            try:
                await self.engine.store.head(object_key(self.engine.layout, self.volume, uploader.location(chunk_id)))
            except NotFound as exc:
                raise CommitConflict(f"volume {self.volume!r}: chunk {chunk_id} was pruned while we wrote; "
                                     "try again") from exc


class FileWriter:
    """Bytes of one new file: cut by content, hashed and uploaded as they arrive (data/chunkread.py),
    so a file written here is cut exactly as a commit cuts it and dedupes with it."""

    def __init__(self, batch: Batch, path: str, mode: int) -> None:
        if not path:
            raise ConfigError("cannot write to the volume root")
        self.batch, self.path, self.mode = batch, path, mode
        self.size = 0
        self._cutter = StreamCutter(batch.engine.chunker)
        self._refs: list[ChunkRef] = []
        self._uploader: Uploader | None = None

    async def _get_uploader(self) -> Uploader:
        if self._uploader is None:
            self._uploader = await self.batch._upload(self.path)
        return self._uploader

    async def write(self, data: bytes) -> None:
        if self._cutter.pending() + len(data) < WINDOW:
            self._cutter.feed(data)           # only buffered: nothing to cut yet
            return
        for piece, chunk_id in await asyncio.to_thread(self._cutter.feed, data):
            await self._add(piece, chunk_id, small=False)

    async def _add(self, piece: bytes, chunk_id: str, small: bool) -> None:
        uploader = await self._get_uploader()
        held = await self.batch.engine.budget.acquire(len(piece))
        if chunk_id in uploader.known:
            self.batch._reused.add(chunk_id)
        await uploader.add(chunk_id, piece, held, small, group=self)
        self._refs.append(ChunkRef(chunk_id, len(piece)))
        self.size += len(piece)

    async def close(self) -> None:
        """Queue the file in the batch (its bytes are uploaded by ``publish`` at the latest)."""
        pieces = await asyncio.to_thread(self._cutter.finish)
        small = not self._refs and len(pieces) == 1 and self.batch.engine.chunker.whole(len(pieces[0][0]))
        for piece, chunk_id in pieces:
            await self._add(piece, chunk_id, small)
        uploader = await self._get_uploader()
        uploader.end_group(self)
        refs, path, mode, size = self._refs, self.path, self.mode, self.size

        async def run(view: View) -> None:
            located = tuple(uploader.location(r.id) for r in refs)
            await view.set(path, Entry(path, "file", mode, time.time_ns(), size, located))
        self.batch.add(run, f"put {self.path}")


# ---------------------------------------------------------------- one-shot helpers

async def edit(engine: Engine, volume: str, build: Callable[[Batch], None], message: str = "",
               create: bool = False) -> EditResult:
    batch = Batch(engine, volume, create)
    build(batch)
    return await batch.publish(message)


async def write_file(engine: Engine, volume: str, path: str, chunks: AsyncIterator[bytes],
                     message: str = "", mode: int = 0o644, create: bool = True) -> EditResult:
    batch = Batch(engine, volume, create)
    writer = batch.writer(path, mode)
    try:
        async for piece in chunks:
            await writer.write(piece)
        await writer.close()
    except BaseException:
        await batch.abort()
        raise
    return await batch.publish(message)
