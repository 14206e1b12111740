"""Server-side edits: read and change a volume's files without a local copy.

Reading. ``tree`` reads one snapshot's entries (the latest, or a named one);
``listdir``/``stat`` answer from it. ``read`` streams a file's bytes chunk by
chunk through ``engine.fetcher`` -- the cache, then the gateways, then the
store, every chunk re-hashed against its id -- and fetches only the chunks
that overlap the byte range asked for, so reading the footer of a 10 GiB file
costs one or two chunk GETs.

Writing. An edit is a list of operations (write a file, mkdir, rm, cp, mv).
:class:`Batch` collects them; ``publish`` replays them on the volume's latest
snapshot, one after the other, and advances HEAD with ``If-Match`` through
``VolumeRepo.publish``. If another writer moved HEAD meanwhile, the same
operations are replayed on the new latest snapshot (each operation is a
per-path change applied with ``manifest.apply``, exactly as a commit's changes
are), so concurrent edits of different paths both survive and nothing is lost.
A batch of any number of operations is one snapshot; a single CLI or SDK call
is a batch of one.

New file bytes go through the commit path's :class:`Uploader` (dedup against
the latest snapshot's chunks, small files packed, large ones chunked, the
byte budget bounding memory) before anything is published. ``cp`` and ``mv``
only copy entries: the chunks are shared, no file data moves.

Only the small functions marked *snapshot access* below (``tree``,
``_children``, ``parent_of``, ``_publish``) and ``Tree.entries`` (a path ->
Entry mapping; callers outside this module use ``entry_at``/``lookup``/
``children``) know how a snapshot is stored, so a new snapshot format changes
them and nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from syncd.engine.commit import MAX_ATTEMPTS
from syncd.engine.upload import Uploader
from syncd.engine.volumes import Head
from syncd.engine.wiring import Engine
from syncd.errors import CommitConflict, ConfigError, NotFound, PreconditionFailed, SnapshotNotFound, VolumeNotFound
from syncd.format.chunking import content_id
from syncd.format.layout import object_key
from syncd.format.manifest import Changes, ChunkRef, Entry, apply, check_path, diff

ROOT = Entry("", "dir", 0o755, 0)   # the volume root, which a snapshot does not list
PREFETCH = 2                        # chunks fetched ahead of a streaming reader


def normalize_path(path: str | None) -> str:
    """'' for the whole volume, else a checked relative path ('/a/b/' -> 'a/b')."""
    text = (path or "").strip("/")
    return "" if text in ("", ".") else check_path(text)


def inside(path: str, root: str) -> bool:
    return not root or path == root or path.startswith(root + "/")


@dataclass(frozen=True)
class Tree:
    volume: str
    head: Head
    snapshot: str | None
    entries: Mapping[str, Entry]


@dataclass
class EditResult:
    volume: str
    snapshot: str | None
    seq: int
    changed: int
    attempts: int
    message: str


# ---------------------------------------------------------------- snapshot access

async def tree(engine: Engine, volume: str, snapshot_id: str | None = None) -> Tree:
    """The entries of ``snapshot_id`` (default: the latest snapshot) of ``volume``."""
    head = await engine.repo.head(volume)
    sid = snapshot_id or head.snapshot
    snap = await engine.repo.snapshot(volume, sid) if sid else None
    return Tree(volume, head, sid, snap.entries if snap else {})


def _children(entries: Mapping[str, Entry], path: str, recursive: bool) -> list[Entry]:
    prefix = path + "/" if path else ""
    return sorted((e for p, e in entries.items() if p.startswith(prefix)
                   and (recursive or "/" not in p[len(prefix):])), key=lambda e: e.path)


async def parent_of(engine: Engine, volume: str, snapshot_id: str | None) -> str | None:
    return (await engine.repo.snapshot(volume, snapshot_id)).parent if snapshot_id else None


async def _publish(engine: Engine, head: Head, entries: Mapping[str, Entry], message: str) -> Head:
    return await engine.repo.publish(head, entries, message)


# ---------------------------------------------------------------- reading

def entry_at(t: Tree, path: str) -> Entry | None:
    """The entry at ``path`` (the root for ''), or None."""
    path = normalize_path(path)
    return ROOT if not path else t.entries.get(path)


def lookup(t: Tree, path: str) -> Entry:
    path = normalize_path(path)
    if not path:
        return ROOT
    entry = t.entries.get(path)
    if entry is None:
        raise SnapshotNotFound(f"volume {t.volume!r} has nothing at {path!r}"
                               + (f" in snapshot {t.snapshot}" if t.snapshot != t.head.snapshot else ""))
    return entry


async def stat(engine: Engine, volume: str, path: str, snapshot_id: str | None = None) -> Entry:
    return lookup(await tree(engine, volume, snapshot_id), path)


def children(t: Tree, path: str, recursive: bool = False) -> list[Entry]:
    """The entries below directory ``path``; a file's listing is the file itself."""
    entry = lookup(t, path)
    if entry.kind != "dir":
        return [entry]
    return _children(t.entries, normalize_path(path), recursive)


async def listdir(engine: Engine, volume: str, path: str = "", recursive: bool = False,
                  snapshot_id: str | None = None) -> list[Entry]:
    return children(await tree(engine, volume, snapshot_id), path, recursive)


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


# ---------------------------------------------------------------- operations (pure)

Op = Callable[[Mapping[str, Entry]], Changes]


def _missing(path: str) -> SnapshotNotFound:
    return SnapshotNotFound(f"nothing at {path!r}")


def op_write(path: str, entry: Entry) -> Op:
    return lambda entries: {path: dataclasses.replace(entry, path=path)}


def op_mkdir(path: str) -> Op:
    def run(entries: Mapping[str, Entry]) -> Changes:
        existing = entries.get(path)
        if existing is not None and existing.kind == "dir":
            return {}
        return {path: Entry(path, "dir", 0o755, time.time_ns())}
    return run


def op_remove(path: str, recursive: bool = False, missing_ok: bool = False) -> Op:
    def run(entries: Mapping[str, Entry]) -> Changes:
        if path and path not in entries:
            if missing_ok:
                return {}
            raise _missing(path)
        below = [p for p in entries if inside(p, path)]
        if not recursive and any(p != path for p in below):
            raise ConfigError(f"{path or '/'!r} is a directory that is not empty (use -r / recursive)")
        return {p: None for p in below}
    return run


def op_copy(src: str, dst: str, remove_source: bool = False) -> Op:
    """``dst`` becomes what ``src`` is (a file or a whole tree); the chunks are shared."""
    if not dst or inside(dst, src):
        raise ConfigError(f"cannot copy {src or '/'!r} into itself ({dst or '/'!r})")

    def run(entries: Mapping[str, Entry]) -> Changes:
        if src and src not in entries:
            raise _missing(src)
        changes: Changes = {p: None for p in entries if inside(p, dst)}
        for p, e in entries.items():
            if inside(p, src) and p != "":
                target = dst + p[len(src):] if src else f"{dst}/{p}"
                changes[target] = dataclasses.replace(e, path=target)
        if remove_source:
            changes.update({p: None for p in entries if inside(p, src)})
        return changes
    return run


def replay(entries: Mapping[str, Entry], ops: list[tuple[Op, Mapping[str, Entry] | None]]) -> dict[str, Entry]:
    """Apply each operation's per-path changes in turn (``base``: where parent dirs come from)."""
    current = dict(entries)
    for op, base in ops:
        current = apply(current, op(current), base if base is not None else current)
    return current


# ---------------------------------------------------------------- batches

@dataclass
class Batch:
    """Operations on one volume that become one snapshot when published."""

    engine: Engine
    volume: str
    create: bool = False
    ops: list[tuple[Op, Mapping[str, Entry] | None]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    _uploader: Uploader | None = None

    async def _upload(self) -> Uploader:
        if self._uploader is None:
            try:
                t = await tree(self.engine, self.volume)
            except VolumeNotFound:
                if not self.create:
                    raise
                await self.engine.repo.create(self.volume)
                t = await tree(self.engine, self.volume)
            known = {r.id: r for e in t.entries.values() for r in e.chunks}
            self._uploader = Uploader(self.engine.store, self.engine.layout, self.volume, self.engine.budget,
                                      self.engine.config.pack_size, known)
        return self._uploader

    def writer(self, path: str, mode: int = 0o644) -> FileWriter:
        return FileWriter(self, normalize_path(path), mode)

    async def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        w = self.writer(path, mode)
        await w.write(data)
        await w.close()

    def add(self, op: Op, words: str, base: Mapping[str, Entry] | None = None) -> None:
        self.ops.append((op, base))
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
        """One snapshot with every operation, replayed on the latest until HEAD advances."""
        message = message or "; ".join(self.words)[:500]
        if self._uploader is not None:
            await self._uploader.finish()
            await self._check_existing(self._uploader)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                t = await tree(self.engine, self.volume)
            except VolumeNotFound:
                if not self.create:
                    raise
                await self.engine.repo.create(self.volume)
                continue
            result = replay(t.entries, self.ops)
            changed = len(diff(t.entries, result))
            if not changed and t.snapshot is not None:
                return EditResult(self.volume, t.snapshot, t.head.seq, 0, attempt, message)
            try:
                head = await _publish(self.engine, t.head, result, message)
            except PreconditionFailed:
                await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** min(attempt, 6))))
                continue
            return EditResult(self.volume, head.snapshot, head.seq, changed, attempt, message)
        raise CommitConflict(f"volume {self.volume!r}: the commit point kept moving; try again")

    async def _check_existing(self, uploader: Uploader) -> None:
        """Chunks whose PUT found them already stored may be ones a prune is deleting (see commit.py)."""
        for chunk_id in uploader.existed:
            try:
                await self.engine.store.head(object_key(self.engine.layout, self.volume, uploader.location(chunk_id)))
            except NotFound as exc:
                raise CommitConflict(f"volume {self.volume!r}: chunk {chunk_id} was pruned while we wrote; "
                                     "try again") from exc


class FileWriter:
    """Bytes of one new file: chunked, hashed and uploaded as they arrive."""

    def __init__(self, batch: Batch, path: str, mode: int) -> None:
        if not path:
            raise ConfigError("cannot write to the volume root")
        self.batch, self.path, self.mode = batch, path, mode
        self.size = 0
        self._buffer = bytearray()
        self._refs: list[ChunkRef] = []
        self._chunk = batch.engine.config.chunk_size

    async def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self._chunk:
            piece = bytes(self._buffer[:self._chunk])
            del self._buffer[:self._chunk]
            await self._add(piece, small=False)

    async def _add(self, piece: bytes, small: bool) -> None:
        uploader = await self.batch._upload()
        held = await self.batch.engine.budget.acquire(len(piece))
        chunk_id = await asyncio.to_thread(content_id, piece) if len(piece) > 1 << 20 else content_id(piece)
        await uploader.add(chunk_id, piece, held, small)
        self._refs.append(ChunkRef(chunk_id, len(piece)))
        self.size += len(piece)

    async def close(self) -> None:
        """Queue the file in the batch (its bytes are uploaded by ``publish`` at the latest)."""
        if self._buffer:
            small = not self._refs and len(self._buffer) < self.batch.engine.config.pack_threshold
            await self._add(bytes(self._buffer), small)
            self._buffer.clear()
        else:
            await self.batch._upload()
        batch, refs = self.batch, self._refs

        def run(entries: Mapping[str, Entry]) -> Changes:
            located = tuple(batch._uploader.location(r.id) for r in refs) if batch._uploader else ()
            return op_write(self.path, Entry(self.path, "file", self.mode, time.time_ns(), self.size, located))(entries)
        batch.add(run, f"put {self.path}")


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
