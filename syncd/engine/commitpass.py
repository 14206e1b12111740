"""One pass of a commit: changes read, uploaded, built into trees and spooled, as a stream.

The worker thread (commitscan.py) hands over changes in walk order, with the
bytes of small files already read and hashed. Here, on the event loop, each
change becomes an entry: small files' chunks go to an :class:`Uploader`
(packs), large files are read chunk by chunk, renamed files keep their
chunks. Changes are cut into *batches* of ``BATCH_FILES`` changes or
``BATCH_BYTES`` bytes, each with its own Uploader: a batch is done when its
uploads are, and only then are its chunks' locations (pack and offset) known,
so its entries are handed on in order -- fed to the tree :class:`Builder`
(trees.py), which encodes every directory the walk has left and uploads
every full tree pack, and written to the :class:`Spool`, from which the index
rows are written once HEAD names the snapshot, and from which the changes are
replayed on a newer HEAD if another writer got there first. ``SEALED``
batches may be uploading while the next fills. Nothing here holds more than
the open batches, the directories on the walk's path and the budget's bytes.

Chunks are cut by content exactly as every writer cuts them (format 3): a
small file is one chunk, read and hashed in the worker thread; a large one
goes through data/chunkread.py's ``file_chunks`` (FastCDC). Dedupe: a chunk
this commit already stored, or that a row read on the way names (``RECENT``
of them, most recent first), is not stored again; any other chunk is looked
up in the volume's chunk index (one :class:`IndexSession` for the whole pass,
so each shard is listed once) before it is compressed and uploaded. The new
chunks are recorded in the chunk index ``RECORD_AT`` at a time and at the
end of the pass, before HEAD moves; their references go into the local
cache of the index in a worker thread while HEAD moves and the index rows
are written (:meth:`CommitPass.settle`). A chunk reused rather than uploaded by
this commit (a rename's, a dedupe hit's, the chunk index's, or one whose PUT
found the object there) may be one prune is deleting; its object key is kept
in ``suspects`` and HEAD-checked before HEAD is advanced, and again if a
prune ran meanwhile (commit.py) -- a superset of what a one-shot commit
checks, since it does not exclude chunks HEAD's snapshot also references.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from syncd.data.chunkread import file_chunks
from syncd.data.upload import Uploader
from syncd.engine.commitscan import Item, Scan, Step
from syncd.engine.commitspool import IndexWrite, SpoolBatch, tree_changes
from syncd.engine.progress import Progress
from syncd.engine.trees import Builder, Built
from syncd.engine.wiring import Engine
from syncd.errors import LocalIOError
from syncd.format.layout import object_key
from syncd.format.manifest import ChunkRef, Entry, Snapshot, symlink_stays_inside
from syncd.limits import in_thread
from syncd.local import dirdigest
from syncd.local.dirfd import open_file
from syncd.local.indexrows import Fingerprint, Tracked, entry_term, term
from syncd.local.scan import LocalFile, from_stat
from syncd.local.spool import Spool

READ_STEP = 4 << 20       # bytes of small files one worker-thread step reads (and holds of the budget)
BATCH_FILES = 16384       # changes per upload batch
BATCH_BYTES = 32 << 20    # bytes read per upload batch
SEALED = 2                # batches finishing their uploads while the next one fills
RECENT = 65536            # chunk locations remembered for dedupe
READERS = 4               # large files read at once
UNSTABLE_RETRIES = 3
INDEX_BATCH = 20000       # index rows written per transaction
RECORD_AT = 131072        # new chunks recorded in the chunk index at once (<= 256 index objects each time)


@dataclass
class CommitResult:
    volume: str
    snapshot: str | None
    seq: int
    changed: int = 0
    files_read: int = 0
    bytes_read: int = 0
    uploaded_chunks: int = 0
    uploaded_bytes: int = 0
    reused_chunks: int = 0
    merged: bool = False
    attempts: int = 0
    trees_written: int = 0
    tree_bytes: int = 0
    skipped: list[str] = field(default_factory=list)


class _Known(dict[str, ChunkRef]):
    """One batch's view of the remembered chunk locations: a hit is pinned here, so the
    Uploader's later ``location`` finds it even if the shared memory forgot it meanwhile."""

    def __init__(self, recent: OrderedDict[str, ChunkRef]) -> None:
        super().__init__()
        self.recent = recent

    def __contains__(self, chunk_id: object) -> bool:
        if dict.__contains__(self, chunk_id):
            return True
        ref = self.recent.get(chunk_id) if isinstance(chunk_id, str) else None
        if ref is None:
            return False
        self[ref.id] = ref
        return True


@dataclass
class _Change:
    path: str
    entry: Entry | None
    row: Tracked | None               # the row it replaces
    fingerprint: tuple[int, int, int, int] | None = None
    below_drop: bool = False          # a tree change only: its row goes with its dropped parent's
    large: asyncio.Task[tuple[Entry, Fingerprint] | None] | None = None
    uploaded: bool = False            # its chunks went to the batch's uploader (located when it is done)
    small: LocalFile | None = None    # a small file read by the scan: its entry is made once located ...
    chunk: str | None = None          # ... with this chunk (None: it is empty)


@dataclass
class _Batch:
    uploader: Uploader
    changes: list[_Change] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    bytes: int = 0


class CommitPass:
    def __init__(self, engine: Engine, volume: str, source: Path, result: CommitResult, progress: Progress,
                 excluded: set[str], spool: Spool) -> None:
        self.engine, self.volume, self.source, self.result = engine, volume, source, result
        self.progress, self.excluded, self.spool = progress, excluded, spool
        self.recent: OrderedDict[str, ChunkRef] = OrderedDict()
        self.suspects: set[str] = set()   # keys of objects reused, not uploaded by this commit
        self.ours: set[str] = set()       # ids of the packs (or chunk objects) this commit uploaded
        self.changes = 0
        self.link_check = False           # may a symlink now lead out through others? (commit.py)
        self.theirs_links = True
        self.seed = 0
        self._batch: _Batch | None = None
        self._drains: deque[asyncio.Task[None]] = deque()   # batches uploading, then draining, in order
        self._closed: list[_Batch] = []                      # batches sealed and not drained yet
        self._build_pool = ThreadPoolExecutor(1, thread_name_prefix="syncd-build")
        self._builder: Builder | None = None
        self._readers = asyncio.Semaphore(READERS)
        self._scan: Scan | None = None
        self._closing = contextlib.ExitStack()
        self._session = engine.index_session(volume)    # one view of the chunk index for every batch
        self._unrecorded: dict[str, ChunkRef] = {}        # stored, not yet recorded in the chunk index
        self._held = 0                                    # budget bytes of the step being taken, not handed on
        self._recording: asyncio.Task[None] | None = None  # the last record in the chunk index
        # The new trees go into the in-memory tree cache only for the watcher's commits (small,
        # the next one on the same paths). A walk's commit (the CLI's, a first commit) is read
        # by nothing in its process, and 100,000 files' trees only evicted the cache's others:
        # 10% of that commit's CPU and 30 MiB of its peak (they are in the disk cache either way).
        self._remember_trees = True

    # ------------------------------------------------------------ the pass

    async def run(self, theirs: Snapshot | None, hint: frozenset[str] | None) -> Built:
        """Read every change, upload it, build it on ``theirs``' tree, spool it; the built trees."""
        self.theirs_links = theirs is not None and (theirs.stats is None or theirs.stats.links > 0)
        self._remember_trees = hint is not None
        self._builder = self._new_builder(theirs)
        self.progress.start(0, "commit")
        pool = ThreadPoolExecutor(1, thread_name_prefix="syncd-commit")
        try:
            scan = self._scan = await in_thread(self._open_scan, hint, pool=pool)
            self.seed = scan.seed
            nxt: asyncio.Task[tuple[Step, int]] | None = asyncio.ensure_future(self._step(scan, pool))
            try:
                while nxt is not None:
                    step, kept = await nxt        # the worker thread reads the next step meanwhile
                    nxt = None if step.done else asyncio.ensure_future(self._step(scan, pool))
                    await self._take(step.items, step.drops, kept)
            finally:
                if nxt is not None:
                    nxt.cancel()
                    with contextlib.suppress(BaseException):
                        step, kept = await nxt
                        await self.engine.budget.release(kept)
            await self._seal(final=True)
            while self._drains:
                await self._drains.popleft()
            if self._recording is None:           # no batch was open at the end
                self._recording = asyncio.ensure_future(self._record_chunks())
            built = await self._builder.finish()
            await self._recording
            return built
        except BaseException:
            await self._abandon()
            raise
        finally:
            await in_thread(self._closing.close, pool=pool)
            pool.shutdown(wait=False)
            self._build_pool.shutdown(wait=False)

    async def _step(self, scan: Scan, pool: ThreadPoolExecutor) -> tuple[Step, int]:
        """One step of the scan, holding budget for the bytes it read: (step, bytes held)."""
        grant = await self.engine.budget.acquire(READ_STEP)
        try:
            step = await in_thread(scan.step, grant, pool=pool)
        except BaseException:
            await self.engine.budget.release(grant)
            raise
        kept = min(grant, step.bytes)
        if grant - kept:
            await self.engine.budget.release(grant - kept)
        return step, kept

    def _open_scan(self, hint: frozenset[str] | None) -> Scan:
        reader = self._closing.enter_context(self.engine.index.reader(self.volume, self.source))
        scan = Scan(self.source, reader, hint, self.engine.chunker.threshold, self._excluded)
        self._closing.callback(scan.close)
        return scan

    def _excluded(self, ref: ChunkRef) -> bool:
        return bool(self.excluded) and object_key(self.engine.layout, self.volume, ref) in self.excluded

    def _new_builder(self, theirs: Snapshot | None) -> Builder:
        root = theirs.root if theirs is not None else None

        async def meta(path: str) -> Entry | None:   # a directory theirs lacks and we write below
            rows = await self.engine.index.rows(self.volume, self.source, [path])
            return rows[path].entry if path in rows else None

        return Builder(self.engine.repo.trees, self.volume, root, {}, lookup=meta, remember=self._remember_trees)

    async def _abandon(self) -> None:
        if self._builder is not None:
            self._builder.discard()
        if self._recording is not None:
            self._recording.cancel()
            await asyncio.gather(self._recording, return_exceptions=True)
        for task in self._drains:
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        batches = self._closed + ([self._batch] if self._batch is not None else [])
        for batch in batches:
            for change in batch.changes:
                if change.large is not None:
                    change.large.cancel()
            await batch.uploader.abort()
        self._drains.clear()
        self._closed = []
        self._batch = None

    # ------------------------------------------------------------ changes in, batches out

    async def _take(self, items: list[Item], drops: list[str], held: int) -> None:
        """Turn a step's items into changes of the open batch; ``held``: budget bytes held for
        the bytes read, handed to the uploader with them (what is not handed on is released)."""
        self._held = held
        try:
            await self._take_items(items)
        finally:
            if self._held:
                await self.engine.budget.release(self._held)
        if drops:
            self._open_batch().drops.extend(drops)

    async def _take_items(self, items: list[Item]) -> None:
        small: list[tuple[str, bytes, int]] = []     # the open batch's small files' chunks, handed on at once
        held_left = self._held
        read = 0                                     # small files' bytes, reported to progress at once
        batch = self._open_batch()
        for item in items:
            if batch is not self._batch:
                batch = self._open_batch()
            if item.row is not None and item.row.entry.chunks:    # what the file held: dedupe against it
                self._remember(item.row.entry.chunks)
            if item.skipped:
                self.result.skipped.append(item.path)
                continue
            loc = item.local
            if loc is None:
                self._add(batch, _Change(item.path, None, item.row, below_drop=item.below_drop))
            elif loc.kind == "dir":
                self._add(batch, _Change(item.path, Entry(item.path, "dir", loc.mode, loc.mtime_ns), item.row))
            elif loc.kind == "symlink":
                if symlink_stays_inside(item.path, loc.target or ""):
                    entry = Entry(item.path, "symlink", loc.mode, loc.mtime_ns, target=loc.target)
                    self._add(batch, _Change(item.path, entry, item.row))
                else:
                    self.result.skipped.append(item.path)
            elif item.reuse is not None:
                entry = Entry(item.path, "file", loc.mode, loc.mtime_ns, loc.size, item.reuse.entry.chunks)
                self._add(batch, _Change(item.path, entry, item.row, item.fingerprint))
                self.suspects.update(object_key(self.engine.layout, self.volume, c) for c in entry.chunks)
            elif item.large:
                self.progress.more(loc.size)
                task = asyncio.ensure_future(self._read_large(batch.uploader, item.path))
                self._add(batch, _Change(item.path, None, item.row, large=task, uploaded=True))
            else:
                data = item.data or b""
                if item.chunk is not None:
                    share = min(len(data), held_left)
                    held_left -= share
                    small.append((item.chunk, data, share))
                self._add(batch, _Change(item.path, None, item.row, item.fingerprint, small=loc, chunk=item.chunk))
                self.result.files_read += 1
                self.result.bytes_read += len(data)
                batch.bytes += len(data)
                read += len(data)
            if len(batch.changes) >= BATCH_FILES or batch.bytes >= BATCH_BYTES:
                await self._hand(batch, small)
                small = []
                await self._seal()
        await self._hand(batch, small)
        self.progress.more(read)
        self.progress.advance(read)

    async def _hand(self, batch: _Batch, small: list[tuple[str, bytes, int]]) -> None:
        """The small files' chunks to the batch's uploader, which owns their budget bytes from now."""
        if small:
            self._held -= sum(held for _, _, held in small)
            await batch.uploader.add_small(small)

    def _open_batch(self) -> _Batch:
        if self._batch is None:
            uploader = self.engine.uploader(self.volume, _Known(self.recent), self._session, record=False)
            self._batch = _Batch(uploader)
        return self._batch

    def _add(self, batch: _Batch, change: _Change) -> None:
        batch.changes.append(change)
        self.changes += 1
        entry, row = change.entry, change.row
        if (entry is not None and entry.kind == "symlink") or (row is not None and row.entry.kind == "symlink"):
            self.link_check = True
        elif self.theirs_links and row is not None and row.entry.kind == "dir" and (
                entry is None or entry.kind != "dir"):
            self.link_check = True       # a directory replaced: links through it may now lead elsewhere

    async def _seal(self, final: bool = False) -> None:
        """Close the open batch: its uploads finish and it is drained (in order, in the build
        thread) while the next one fills; at most SEALED wait. ``final``: the last batch, whose
        drain starts recording the new chunks in the chunk index (all of them are stored by
        then), so the record's PUTs overlap the last trees being built."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        self._closed.append(batch)
        previous = self._drains[-1] if self._drains else None
        self._drains.append(asyncio.ensure_future(self._finish_and_drain(batch, previous, final)))
        while len(self._drains) > SEALED:
            await self._drains.popleft()

    async def _finish_and_drain(self, batch: _Batch, previous: asyncio.Future[None] | None, final: bool) -> None:
        for change in batch.changes:
            if change.large is not None and (read := await change.large) is not None:
                change.entry, change.fingerprint = read
        await batch.uploader.finish()
        self._unrecorded.update(batch.uploader.fresh())
        if len(self._unrecorded) >= RECORD_AT:
            await self._record_chunks()
        if previous is not None:
            await asyncio.shield(previous)       # batches are handed on in order
        if final:                                # every batch's uploads are done: record them
            self._recording = asyncio.ensure_future(self._record_chunks())
        await in_thread(self._drain, batch, asyncio.get_running_loop(), pool=self._build_pool)
        self._closed.remove(batch)
        self._remember(batch.uploader.new.values())

    def _drain(self, batch: _Batch, loop: asyncio.AbstractEventLoop) -> None:
        """Build thread: the batch's entries get their chunks' locations and go on to the tree
        builder and the spool, in order."""
        up = batch.uploader
        self.result.uploaded_chunks += up.uploaded_chunks
        self.result.uploaded_bytes += up.uploaded_bytes
        self.result.reused_chunks += up.reused_chunks
        spooled = SpoolBatch(batch.drops)
        feed: list[tuple[str, Entry | None]] = []
        for change in batch.changes:
            entry = change.entry
            if change.small is not None:   # made under its bare name, as the tree holds it (trees._named)
                loc, refs = change.small, (up.location(change.chunk),) if change.chunk is not None else ()
                entry = change.entry = Entry(dirdigest.name_of(change.path), "file", loc.mode, loc.mtime_ns,
                                             loc.size, refs)
                self._note_reuse(refs, up)
            elif change.large is not None and entry is None:
                self.result.skipped.append(change.path)
                continue
            elif entry is not None and change.uploaded and entry.chunks:
                located = tuple(up.location(c.id) for c in entry.chunks)
                entry = change.entry = Entry(entry.path, "file", entry.mode, entry.mtime_ns, entry.size, located)
                self._note_reuse(located, up)
            feed.append((change.path, entry))
            self._spool_change(spooled, change)
        assert self._builder is not None
        self._builder.feed_from_thread(feed, loop)
        self.spool.add(spooled.record())

    async def _record_chunks(self) -> None:
        """The chunks stored so far into the chunk index (before HEAD moves, like every writer:
        a killed commit leaves hints to objects that exist). Recorded ``RECORD_AT`` at a time, not
        per batch: each record writes one index object per shard it touches."""
        fresh, self._unrecorded = self._unrecorded, {}
        if self._session is not None and fresh:
            await self._session.record(fresh.values(), wait=False)

    async def settle(self) -> None:
        """Wait for the local chunk-index cache to take the recorded chunks (it does so while
        HEAD is advanced and the index rows are written)."""
        if self._session is not None:
            await self._session.settle()

    def _remember(self, refs: Iterable[ChunkRef]) -> None:
        for ref in refs:
            if not self._excluded(ref):
                self.recent[ref.id] = ref
                self.recent.move_to_end(ref.id)
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)

    def _note_reuse(self, refs: tuple[ChunkRef, ...], up: Uploader) -> None:
        """Chunks a batch did not upload itself (a dedupe hit, or a PUT that found the object
        there) are suspects, unless an earlier batch of this commit uploaded their object."""
        for ref in refs:
            if ref.id in up.new and ref.id not in up.existed:
                self.ours.add(ref.pack or ref.id)
            elif (ref.pack or ref.id) not in self.ours:
                self.suspects.add(object_key(self.engine.layout, self.volume, ref))

    def _spool_change(self, spooled: SpoolBatch, change: _Change) -> None:
        """A change into its spooled batch: its row and what it moves its parent's digest by."""
        path, entry = change.path, change.entry
        if change.below_drop:
            spooled.build(path)
            return
        moved = -term(self.seed, path, change.row) if change.row is not None else 0
        fp = None
        if entry is not None:
            fp = change.fingerprint if entry.kind == "file" else None
            moved += entry_term(self.seed, path, entry, fp)
        spooled.change(path, entry, fp, moved)

    # ------------------------------------------------------------ replay and large files

    async def replay(self, theirs: Snapshot | None, left_out: set[str]) -> Built:
        """Build the spooled changes again, on ``theirs`` (HEAD moved), without ``left_out``."""
        self.theirs_links = theirs is not None and (theirs.stats is None or theirs.stats.links > 0)
        builder = self._new_builder(theirs)
        batches = self.spool.batches_in_order()
        try:
            while (batch := await in_thread(next, batches, None)) is not None:
                for path, entry in tree_changes(batch):
                    await builder.feed(path, None if path in left_out else entry)
            return await builder.finish()
        except BaseException:
            builder.discard()
            raise
        finally:
            await in_thread(batches.close)

    async def write_index(self, snapshot: str | None, seq: int, exact: bool, left_out: set[str]) -> None:
        """The spooled rows into the index, ``INDEX_BATCH`` at a time (HEAD names ``snapshot``
        now); rows of ``left_out`` paths stay as they were. Only the last write claims ``exact``."""
        await in_thread(self._write_index, snapshot, seq, exact, left_out)

    def _write_index(self, snapshot: str | None, seq: int, exact: bool, left_out: set[str]) -> None:
        index, out = self.engine.index, IndexWrite(left_out)

        def write(final: bool) -> None:
            index.write_rows(self.volume, self.source, snapshot, seq, out.puts, out.deletes, out.digests(),
                             out.drops, exact=exact if final else False)
            out.clear()

        for batch in self.spool.batches_in_order():
            out.take(batch)
            if out.rows >= INDEX_BATCH:
                write(False)
        write(True)

    async def _read_large(self, uploader: Uploader, path: str) -> tuple[Entry, Fingerprint] | None:
        async with self._readers:
            for _ in range(UNSTABLE_RETRIES):
                entry = await self._read_once(uploader, path)
                if entry is not None:
                    return entry
            return None

    async def _read_once(self, uploader: Uploader, path: str) -> tuple[Entry, Fingerprint] | None:
        """One read of a large file, chunk by chunk; None if it changed while we read it."""
        full = self.source / path
        try:   # every component O_NOFOLLOW from the root's descriptor; None: it moved since the walk
            fd = await in_thread(open_file, self.source, path)
        except OSError as exc:
            raise LocalIOError(f"cannot read {full}: {exc.strerror}") from exc
        if fd is None:
            return None
        try:
            before = from_stat(await in_thread(os.fstat, fd))
            small = self.engine.chunker.whole(before.size)
            refs = []   # cut by content (data/chunkread.py), exactly as every writer cuts it
            async for data, chunk_id, held in file_chunks(fd, before.size, self.engine.chunker, self.engine.budget):
                await uploader.add(chunk_id, data, held, small, group=path)
                refs.append(ChunkRef(chunk_id, len(data)))
                self.progress.advance(len(data))
            if sum(r.size for r in refs) != before.size:
                return None          # it shrank while we read it: read again
            after = from_stat(await in_thread(os.fstat, fd))
        finally:
            uploader.end_group(path)
            await in_thread(os.close, fd)
        if after.fingerprint != before.fingerprint:
            return None
        self.result.files_read += 1
        self.result.bytes_read += before.size
        return Entry(path, "file", before.mode, before.mtime_ns, before.size, tuple(refs)), before.fingerprint
