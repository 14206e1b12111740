"""Hydrate: make a local directory match a snapshot of a volume.

A format-2 snapshot is hydrated as a walk of its trees, one directory at a
time (hydratewalk.py; which subtrees are entered at all: hydratescope.py),
so memory follows the largest directory and the configured windows, never
the volume. A format-1 snapshot (one object listing every entry) and an
empty volume are planned whole, as they always were: read the snapshot,
scan the directory (removing temporary files a killed hydrate left), plan
(hydrateplan.py), refuse on conflicts, execute, save the index.

Either way the order never leaves a half-made path visible: clear what is in
the way, create directories, write files (temporary name, then rename), make
symlinks, delete what the snapshot dropped, set directories' times, and
record the new state in the local index.

Transfers (``_Run``): small files live in packs, so files are grouped by pack
and each group is fetched with one ranged GET and written in one
worker-thread call that opens each directory once (fs.write_small_many); in
``ref`` mode (below) the cache then records where each chunk sits in the file
written, in one transaction per group, instead of a copy of its bytes.
Large files are preallocated and their chunks fetched in parallel and written
with ``pwrite`` at their offsets; each chunk holds its size from the byte
budget from fetch until it is on disk, which bounds memory however large the
file. All fetches go through the single-flight fetcher (cache, gateways, store).
With ``SYNCD_CACHE_LARGE=ref`` (the default) a large file's chunks are not
copied into the chunk cache: once the file is published, the cache records
where each chunk sits in it, so the bytes hit the disk once (cache.py). A chunk
that neither the cache nor a gateway holds is then streamed from the store
straight into its place in the file, hashed on the way (fetch.py): no
chunk-sized buffer, which measured 3x faster than buffering (BENCHMARKS.md);
those writes go through one writer thread per hydrate (fewer thread wake-ups
than a pool thread per write: ~10% less CPU per GiB, BENCHMARKS.md). With either
store backend the store's reading thread itself receives, hashes and
``pwrite``s each 256 KiB buffer instead (store/rangeread.py: no per-piece
buffers, no hand-offs; the profile in BENCHMARKS.md).

Processes share: a large file is looked up in the cache and downloaded under a lock file
per file in the cache directory (data/flight.py), so of several hydrates of one volume on
one worker, in one process or many, the first downloads and the others copy its file.

Fewer, larger requests: a large file's consecutive chunks share packs
(upload.py), and chunks that lie back to back in one pack and in the file are
streamed as one run with one ranged GET of up to ``SYNCD_LARGE_PACK_SIZE``
(fetch.coalesce / stream_run, every chunk verified alone); up to ``STREAMS``
runs at once, each holding ``STREAM_HOLD`` of the byte budget (a streamed run
holds a batch, not its whole size), so peak memory is bounded by configuration
whatever the file size. Warm hydrates: chunks that a file on this worker holds
(cache references) are copied in the kernel with ``copy_file_range`` (a reflink
where the file system shares blocks); a copy from a file whose stat
fingerprint still matches the one recorded when it was published is taken as
it is, any other is verified over an ``mmap`` of the copy before the file is
published (localcopy.py, the trust model in data/stamp.py); the first copy
stays the cache's reference.

If anything fails part-way, the index is still saved with every path finished
so far, so the next hydrate resumes instead of downloading again. If the
process was killed, the index holds what was written before the last batch of
rows; files replaced after it look locally changed, and the plan recognises
them by hashing (see hydrateplan.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from syncd.data import flight as flight_lock
from syncd.data import localcopy, stamp
from syncd.data.cache import Located
from syncd.data.fetch import coalesce
from syncd.engine.hydrateplan import Plan, plan_hydrate
from syncd.engine.hydratescope import scope_of
from syncd.engine.hydratewalk import HydrateWalk, conflict_error, settle_plan
from syncd.engine.progress import NoProgress, Progress
from syncd.engine.wiring import Engine
from syncd.format.manifest import ChunkRef, Entry, Snapshot
from syncd.limits import gather_all, in_thread
from syncd.local import fs as localfs
from syncd.local.index import LocalIndex, Tracked
from syncd.local.scan import LocalFile, from_stat, scan

OPEN_FILES = 16
STREAMS = 4               # pack runs streamed at once (32 MiB each: 4 measured best, BENCHMARKS.md)
STREAM_HOLD = 4 << 20     # budget a streamed run holds: the batch being written and the next piece
REF_MIN = 16 << 10        # smaller chunks of small files are not cached: a cache row costs ~10-30 us of
                          # CPU (cachedb.py), more than reading so few bytes from their pack again


@dataclass
class HydrateResult:
    volume: str
    snapshot: str | None
    seq: int
    files_written: int = 0
    bytes_written: int = 0
    unchanged: int = 0
    adopted: int = 0
    deleted: int = 0
    kept_local: list[str] = field(default_factory=list)


async def hydrate(engine: Engine, volume: str, target: Path, *, snapshot_id: str | None = None,
                  overwrite: bool = False, progress: Progress | None = None,
                  changed: Collection[str] | None = None, owner: localfs.Owner = None) -> HydrateResult:
    """``changed``: if given, the only local paths that may differ from the index (the agent's
    watcher); otherwise a walk finds them (delta.py) when the index is exactly at a snapshot.
    ``owner``: the (uid, gid) to give what is written (the agent's tasks of another uid; fs.py)."""
    try:
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise localfs.local_error(target, exc, "create") from exc
    async with engine.index.locked(volume, target):
        head = await engine.repo.head(volume)
        sid = snapshot_id or head.snapshot
        snap = await engine.repo.header(volume, sid) if sid else None
        result = HydrateResult(volume, sid, snap.seq if snap else 0)
        run = _Run(engine, volume, target, progress or NoProgress(), result, owner)
        try:
            if snap is None or snap.root is None:
                await _hydrate_whole(engine, volume, target, sid, overwrite, run)
            else:
                await _hydrate_walk(engine, volume, target, snap, sid, overwrite, changed, run)
        finally:
            run.close()
        return result


async def _hydrate_walk(engine: Engine, volume: str, target: Path, snap: Snapshot, sid: str | None,
                        overwrite: bool, changed: Collection[str] | None, run: _Run) -> None:
    scope = await scope_of(engine, volume, target, snap, changed)
    async with HydrateWalk(engine, volume, target, scope, run, run.result, overwrite, sid) as walk:
        walk.progress_total = snap.stats.bytes if scope.old is None and snap.stats is not None else 0
        if not overwrite:
            await walk.check()
        complete = False
        try:
            await walk.hydrate()
            complete = not walk.late_conflicts
        finally:
            await walk.save(complete)
        if walk.late_conflicts:
            raise conflict_error(target, volume, walk.late_conflicts, "they appeared while hydrating; "
                                 "commit them first, move them away, or hydrate with --overwrite")


async def _hydrate_whole(engine: Engine, volume: str, target: Path, sid: str | None, overwrite: bool,
                         run: _Run) -> None:
    """A format-1 snapshot (or none): planned whole, as format 1 is read whole."""
    leftovers: list[str] = []
    full = await engine.repo.snapshot(volume, sid) if sid else None
    desired = dict(full.entries) if full else {}
    index = await engine.index.load(volume, target)
    local = await scan(target, leftovers)
    for path in leftovers:
        await in_thread(localfs.remove_at, target, path)
    plan = plan_hydrate(desired, index, local, overwrite)
    await settle(plan, target, volume, overwrite, "commit them first, move them away, or hydrate with --overwrite")
    run.result.unchanged, run.result.kept_local = len(plan.keep), plan.kept_local
    run.done.update(plan.keep)
    try:
        await run.execute(plan)
    finally:
        complete = not run.failed
        await engine.index.save(volume, target, LocalIndex(
            sid if complete else index.snapshot, run.result.seq if complete else index.seq,
            run.done if complete else {**index.files, **run.done}), exact=complete)


async def settle(plan: Plan, target: Path, volume: str, overwrite: bool, advice: str) -> None:
    """Hash the same-size local files the plan must verify; refuse (LocalConflict) before any
    byte is written if a local path differs and ``overwrite`` is off. Shared by hydrate and get."""
    if plan.verify:
        await in_thread(settle_plan, plan, target, overwrite)
    if plan.conflicts:
        raise conflict_error(target, volume, plan.conflicts, advice)


class _Run:
    """The transfers of a hydrate: a whole plan (``execute``), or, for the walk, windows of small
    files (``write_small``) and single large files (``write_large``) that return what they wrote."""

    def __init__(self, engine: Engine, volume: str, root: Path, progress: Progress,
                 result: HydrateResult, owner: localfs.Owner = None) -> None:
        self.engine, self.volume, self.root, self.progress, self.result = engine, volume, root, progress, result
        self.owner = owner
        self.done: dict[str, Tracked] = {}
        self.failed = True
        self.record: Callable[[Entry, LocalFile], None] | None = None
        self._files = asyncio.Semaphore(OPEN_FILES)
        self._streams = asyncio.Semaphore(STREAMS)
        self._by_ref = engine.config.cache_large == "ref"
        self._root_path = str(root.absolute())   # what the cache's references name
        self._uses: Counter[str] = Counter()   # chunks of the large files being written (once: streamed)
        self._writer: ThreadPoolExecutor | None = None  # streamed chunk writes, see write_large

    def _record(self, entry: Entry, st: LocalFile) -> None:
        self.done[entry.path] = Tracked(entry, st.fingerprint if entry.kind == "file" else None)

    def close(self) -> None:
        if self._writer is not None:   # every write was awaited: nothing is left to join
            self._writer.shutdown(wait=False)
            self._writer = None

    def is_small(self, entry: Entry) -> bool:
        """Written with its pack's other files (one GET, one thread call), not chunk by chunk.
        (A large file's chunks may share a pack too: that is the large path.)"""
        return not entry.chunks or (len(entry.chunks) == 1 and entry.chunks[0].pack is not None
                                    and entry.size < self.engine.config.pack_threshold)

    async def execute(self, plan: Plan) -> None:
        for path in plan.clear:
            await in_thread(localfs.remove_at, self.root, path, True)
        dirs = sorted((e for e in plan.create + plan.meta if e.kind == "dir"), key=lambda e: e.path)
        made = await in_thread(self._make_dirs, dirs)  # one thread hop for every directory
        for entry, st in zip(dirs, made):
            self._record(entry, st)
        for entry in (e for e in plan.meta if e.kind == "file"):
            self._record(entry, await in_thread(localfs.set_meta, self.root, entry.path, entry, self.owner))
            self.result.adopted += 1
        files = [e for e in plan.create if e.kind == "file"]
        self.progress.start(sum(e.size for e in files), f"hydrate {self.volume}")
        large = [e for e in files if not self.is_small(e)]
        self._uses = Counter(ref.id for entry in large for ref in entry.chunks)
        self.record = self._record     # as each batch lands: a failure keeps what was done
        try:
            await gather_all([self.write_small([e for e in files if self.is_small(e)]),
                              *(self._write_large_counted(e) for e in large)])
        finally:
            self.record = None
        for entry in (e for e in plan.create if e.kind == "symlink"):
            self._record(entry, await in_thread(localfs.make_symlink, self.root, entry.path, entry, self.owner))
        for path in plan.delete:
            await in_thread(localfs.remove_at, self.root, path)
            self.result.deleted += 1
        await in_thread(self._set_dir_mtimes, dirs)
        self.failed = False

    def _make_dirs(self, dirs: list[Entry]) -> list[LocalFile]:
        return [localfs.make_dir(self.root, entry.path, entry, self.owner) for entry in dirs]

    def _set_dir_mtimes(self, dirs: list[Entry]) -> None:
        for entry in reversed(dirs):
            localfs.set_dir_mtime(self.root, entry.path, entry.mtime_ns)

    async def write_small(self, files: list[Entry]) -> list[tuple[Entry, LocalFile]]:
        """Small files (``is_small``), grouped by pack: one ranged GET and one thread call each."""
        groups: dict[str, list[Entry]] = defaultdict(list)
        for entry in files:
            groups[(entry.chunks[0].pack or "") if entry.chunks else ""].append(entry)
        done = await gather_all(self._write_group(pack, members) for pack, members in groups.items())
        return [pair for part in done for pair in part]

    async def _write_group(self, pack: str, entries: list[Entry]) -> list[tuple[Entry, LocalFile]]:
        """Files whose bytes all sit in one pack: one ranged GET, one thread batch. In ``ref``
        mode the chunks fetched are cached as references into the files written (put_located)."""
        out: list[tuple[Entry, LocalFile]] = []
        cache = self.engine.cache if self._by_ref else None
        for batch in _batches(entries, self.engine.config.pack_size):
            size = sum(e.size for e in batch)
            held = await self.engine.budget.acquire(size)
            cached: set[str] = set()
            try:
                refs = [c for e in batch for c in e.chunks]
                data = await self.engine.fetcher.get_packed(self.volume, pack, refs, cache_bytes=cache is None,
                                                            from_cache=cached) if refs else {}
                files = [(e, data[e.chunks[0].id] if len(e.chunks) == 1 else b"".join(data[c.id] for c in e.chunks))
                         for e in batch]
                del data
                stats, located = await in_thread(self._write_batch, files, None if cache is None else cached)
            finally:
                await self.engine.budget.release(held)
            if cache is not None:
                await cache.put_located(located)
            for entry, local in zip(batch, stats):
                out.append((entry, local))
                if self.record is not None:
                    self.record(entry, local)
            self.result.files_written += len(batch)
            self.result.bytes_written += size
            self.progress.advance(size)
        return out

    def _write_batch(self, files: list[tuple[Entry, bytes]],
                     cached: set[str] | None) -> tuple[list[LocalFile], dict[str, Located]]:
        """Worker thread: write the files (fs.write_small_many), and say where the chunks of each
        sit in it with its fingerprint (stamp.py), for the cache (``cached``: the ids it had;
        None: no references), except those below ``REF_MIN``."""
        stats = localfs.write_small_many(self.root, files, self.owner)
        located: dict[str, Located] = {}
        for (entry, _), st in zip(files, stats):
            if cached is None or entry.size < REF_MIN:
                continue
            fingerprint = stamp.pinned(st, entry.size, entry.mtime_ns)
            offset = 0
            for ref in entry.chunks:
                if ref.id not in cached and ref.size >= REF_MIN:
                    located[ref.id] = Located(f"{self._root_path}/{entry.path}", offset, ref.size, fingerprint)
                offset += ref.size
        return [from_stat(st) for st in stats], located

    async def write_large(self, entry: Entry) -> LocalFile:
        """One large file, chunk by chunk (see the module docstring); its stat once published."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="syncd-write")
        self._uses.update(ref.id for ref in entry.chunks)
        try:
            return await self._write_large(entry)
        finally:
            self._uses.subtract(ref.id for ref in entry.chunks)

    async def _write_large_counted(self, entry: Entry) -> list[tuple[Entry, LocalFile]]:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="syncd-write")
        st = await self._write_large(entry)
        if self.record is not None:
            self.record(entry, st)
        return [(entry, st)]

    async def _write_large(self, entry: Entry) -> LocalFile:
        offsets, offset = [], 0
        for ref in entry.chunks:
            offsets.append(offset)
            offset += ref.size
        async with self._files, contextlib.AsyncExitStack() as flight:
            found = await self._locate(entry, flight)
            tmp = await in_thread(localfs.open_tmp, self.root, entry.path, entry.size, self.owner,
                                  undo=localfs.abandon_tmp)
            try:
                copied = await self._copy_local(tmp.fd, entry.chunks, offsets, found)
                await gather_all(self._write_piece(tmp.fd, tmp.final, piece)
                                 for piece in self._pieces(entry.chunks, offsets, copied))
            except BaseException:
                await in_thread(localfs.abandon_tmp, tmp)
                raise
            st = await in_thread(localfs.finish_tmp, tmp, entry)
            if self._by_ref and self.engine.cache is not None:  # chunks copied locally keep their source
                fingerprint = stamp.pinned(tmp.stat, entry.size, entry.mtime_ns) if tmp.stat else None
                await self.engine.cache.put_refs(tmp.final.absolute(), fingerprint, {
                    ref.id: (off, ref.size) for ref, off in zip(entry.chunks, offsets) if ref.id not in copied})
        self.result.files_written += 1
        self.result.bytes_written += entry.size
        return st

    async def _locate(self, entry: Entry, flight: contextlib.AsyncExitStack) -> dict[str, Located]:
        """The cache references of the file's chunks, looked up under the file's cross-process
        lock (data/flight.py): if some are missing, ``flight`` keeps the lock while this hydrate
        downloads them and until the cache references its copy; if none are, it lets go at once."""
        cache = self.engine.cache
        if not self._by_ref or cache is None:
            return {}
        await flight.enter_async_context(flight_lock.exclusive(cache.directory,
                                                               flight_lock.key(r.id for r in entry.chunks)))
        found = await cache.locate({ref.id for ref in entry.chunks})
        if all(ref.id in found for ref in entry.chunks):
            await flight.aclose()   # another hydrate holds the bytes: copy them side by side
        return found

    async def _copy_local(self, fd: int, refs: tuple[ChunkRef, ...], offsets: list[int],
                          found: dict[str, Located]) -> set[str]:
        """Chunks a file on this worker already holds (cache references): copied in the kernel,
        trusted on the source's fingerprint or verified over the copy (localcopy.py). Returns
        the ids placed."""
        cache = self.engine.cache
        if not self._by_ref or cache is None:
            return set()
        copies = [localcopy.Copy(ref.id, ref.size, at.path, at.offset, off, at.fingerprint)
                  for ref, off in zip(refs, offsets) if (at := found.get(ref.id)) and at.size == ref.size]
        if not copies:
            return set()
        result = await in_thread(localcopy.place, fd, copies)
        placed = result.ids
        if result.stale:
            await cache.drop(result.stale)
        done = sum(ref.size for ref in refs if ref.id in placed)
        cache.stats.hits += len(placed)
        cache.stats.trusted += result.trusted
        self.engine.fetcher.bytes_by_source["cache"] += done
        self.progress.advance(done)
        return placed

    def _pieces(self, refs: tuple[ChunkRef, ...], offsets: list[int],
                copied: set[str]) -> list[tuple[int, list[ChunkRef]]]:
        """What is left to fetch, as (file offset, chunks): runs of chunks that lie back to back
        in one pack and in the file are read with one GET (fetch.coalesce, from a gateway or
        the store), when they are used once; every other chunk alone."""
        out: list[tuple[int, list[ChunkRef]]] = []
        segment: list[tuple[int, ChunkRef]] = []
        runs_ok = self._by_ref
        for ref, off in [*zip(refs, offsets), (None, -1)]:
            if ref is not None and ref.id in copied:
                continue
            if ref is not None and runs_ok and self._uses[ref.id] == 1 and \
                    (not segment or segment[-1][0] + segment[-1][1].size == off):
                segment.append((off, ref))
                continue
            if segment:
                start = segment[0][0]
                for run in coalesce([r for _, r in segment], self.engine.config.large_pack_size):
                    out.append((start, run))
                    start += sum(r.size for r in run)
                segment = []
            if ref is not None:
                if runs_ok and self._uses[ref.id] == 1:
                    segment.append((off, ref))
                else:
                    out.append((off, [ref]))
        return out

    async def _write_piece(self, fd: int, final: Path, piece: tuple[int, list[ChunkRef]]) -> None:
        offset, refs = piece
        if len(refs) == 1:
            await self._write_chunk(fd, final, refs[0], offset)
            return
        size = sum(r.size for r in refs)
        async with self._streams:  # a streamed run holds a batch or two, not its whole size
            held = await self.engine.budget.acquire(min(size, STREAM_HOLD))
            try:
                await self.engine.fetcher.stream_run(self.volume, refs, lambda pos, pieces: in_thread(
                    localfs.pwritev_all, fd, pieces, offset + pos, final, pool=self._writer),
                    lambda pos, view: localfs.pwrite_all(fd, view, offset + pos, final))
            finally:
                await self.engine.budget.release(held)
        self.progress.advance(size)

    async def _write_chunk(self, fd: int, final: Path, ref: ChunkRef, offset: int) -> None:
        """A chunk used once in this hydrate (ref mode) is streamed from the store into place
        unless the cache or a gateway has it; one used more often goes through the
        single-flight fetcher and the cache's bytes."""
        held = await self.engine.budget.acquire(ref.size)
        try:
            fetcher = self.engine.fetcher

            def write_sync(pos: int, view: memoryview) -> None:
                localfs.pwrite_all(fd, view, offset + pos, final)

            if self._by_ref and self._uses[ref.id] == 1:
                if not await fetcher.place_nearby(self.volume, ref, write_sync):
                    await fetcher.stream_from_store(self.volume, ref, lambda pos, pieces: in_thread(
                        localfs.pwritev_all, fd, pieces, offset + pos, final, pool=self._writer), write_sync)
            else:
                data = await fetcher.get(self.volume, ref, cache_bytes=not self._by_ref)
                await in_thread(localfs.pwrite_all, fd, data, offset, final)
        finally:
            await self.engine.budget.release(held)
        self.progress.advance(ref.size)


def _batches(entries: list[Entry], limit: int) -> list[list[Entry]]:
    out: list[list[Entry]] = [[]]
    size = 0
    for entry in sorted(entries, key=lambda e: e.chunks[0].offset if e.chunks else 0):
        if out[-1] and size + entry.size > limit:
            out.append([])
            size = 0
        out[-1].append(entry)
        size += entry.size
    return out

