"""Hydrate: make a local directory match a snapshot of a volume.

Steps: read HEAD and the snapshot, scan the directory (removing temporary
files a killed hydrate left), plan (hydrateplan.py), refuse on conflicts, then execute in an order that never leaves a half-made
path visible: clear what is in the way, create directories, write files
(temporary name, then rename), make symlinks, delete what the snapshot
dropped, and finally record the new state in the local index.

Transfers: small files live in packs, so files are grouped by pack and each
group is fetched with one ranged GET and written in one worker-thread batch.
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
stays the cache's reference. Directories are created, and their times set, in one thread hop each.

If anything fails part-way, the index is still saved with every path finished
so far, so the next hydrate resumes instead of downloading again. If the
process was killed, the index is the old one; files already replaced then look
locally changed, and the plan recognises them by hashing (see hydrateplan.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter, defaultdict
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from syncd.data import flight as flight_lock
from syncd.data import localcopy, stamp
from syncd.data.cache import Located
from syncd.data.fetch import coalesce
from syncd.engine.hydrateplan import Plan, plan_hydrate
from syncd.engine.hydratescope import scoped
from syncd.engine.progress import NoProgress, Progress
from syncd.engine.wiring import Engine
from syncd.errors import LocalConflict, LocalIOError
from syncd.format.chunking import content_id
from syncd.format.manifest import ChunkRef, Entry
from syncd.limits import gather_all, in_thread
from syncd.local import fs as localfs
from syncd.local.index import LocalIndex, Tracked
from syncd.local.scan import LocalFile, scan

OPEN_FILES = 16
STREAMS = 4               # pack runs streamed at once (32 MiB each: 4 measured best, BENCHMARKS.md)
STREAM_HOLD = 4 << 20     # budget a streamed run holds: the batch being written and the next piece


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
    watcher); otherwise a walk finds them (delta.py). Either way, when the index holds the exact
    state of a snapshot, only the tree diff and those paths are planned (hydratescope.py).
    ``owner``: the (uid, gid) to give what is written (the agent's tasks of another uid; fs.py)."""
    try:
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise localfs.local_error(target, exc, "create") from exc
    async with engine.index.locked(volume, target):
        head = await engine.repo.head(volume)
        sid = snapshot_id or head.snapshot
        snap = await engine.repo.header(volume, sid) if sid else None
        leftovers: list[str] = []
        scope = await scoped(engine, volume, target, snap, changed, leftovers)
        if scope is None:
            leftovers = []
            full = await engine.repo.snapshot(volume, sid) if sid else None
            desired = dict(full.entries) if full else {}
            index = await engine.index.load(volume, target)
            local = await scan(target, leftovers)
        else:
            desired, index, local = scope
        for path in leftovers:
            await in_thread(localfs.remove_at, target, path)
        plan = plan_hydrate(desired, index, local, overwrite)
        await settle(plan, target, volume, overwrite, "commit them first, move them away, or hydrate with --overwrite")
        result = HydrateResult(volume, sid, snap.seq if snap else 0, unchanged=len(plan.keep),
                               kept_local=plan.kept_local)
        run = _Run(engine, volume, target, progress or NoProgress(), result, owner)
        run.done.update(plan.keep)
        try:
            await run.execute(plan)
        finally:
            await _save(engine, volume, target, index, run, scope is None, sid, result.seq)
        return result


async def settle(plan: Plan, target: Path, volume: str, overwrite: bool, advice: str) -> None:
    """Hash the same-size local files the plan must verify; refuse (LocalConflict) before any
    byte is written if a local path differs and ``overwrite`` is off. Shared by hydrate and get."""
    if plan.verify:
        equal, different = await in_thread(_verify_local, target, plan.verify)
        plan.meta += equal
        if overwrite:
            plan.create += different
        else:
            plan.conflicts += [e.path for e in different]
        plan.verify = []
    if plan.conflicts:
        shown = ", ".join(plan.conflicts[:5]) + (" ..." if len(plan.conflicts) > 5 else "")
        raise LocalConflict(f"{len(plan.conflicts)} local path(s) in {target} differ from volume "
                            f"{volume!r} and would be overwritten: {shown} ({advice})", plan.conflicts)


async def _save(engine: Engine, volume: str, target: Path, index: LocalIndex, run: _Run, full: bool,
                sid: str | None, seq: int) -> None:
    """Record what the run did. Complete: the rows of the snapshot, exactly. Failed half-way:
    the old snapshot, the rows of what was done, and no claim of exactness."""
    complete = not run.failed
    if full:
        await engine.index.save(volume, target, LocalIndex(
            sid if complete else index.snapshot, seq if complete else index.seq,
            run.done if complete else {**index.files, **run.done}), exact=complete)
        return
    rows: dict[str, Tracked | None] = {p: t for p, t in run.done.items() if index.files.get(p) != t}
    if complete:
        rows.update({p: None for p in index.files if p not in run.done})
    await engine.index.update(volume, target, sid if complete else index.snapshot,
                              seq if complete else index.seq, rows, exact=complete)


def _verify_local(root: Path, entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """Split same-size local files into (already equal, different) by hashing them."""
    equal: list[Entry] = []
    different: list[Entry] = []
    for entry in entries:
        try:
            with os.fdopen(localfs.open_read(root, entry.path), "rb") as f:
                same = all(content_id(f.read(ref.size)) == ref.id for ref in entry.chunks)
        except (OSError, LocalIOError):
            same = False
        (equal if same else different).append(entry)
    return equal, different


class _Run:
    def __init__(self, engine: Engine, volume: str, root: Path, progress: Progress,
                 result: HydrateResult, owner: localfs.Owner = None) -> None:
        self.engine, self.volume, self.root, self.progress, self.result = engine, volume, root, progress, result
        self.owner = owner
        self.done: dict[str, Tracked] = {}
        self.failed = True
        self._files = asyncio.Semaphore(OPEN_FILES)
        self._streams = asyncio.Semaphore(STREAMS)
        self._by_ref = engine.config.cache_large == "ref"
        self._uses: Counter[str] = Counter()
        self._writer: ThreadPoolExecutor | None = None  # streamed chunk writes, see _write_files

    def _record(self, entry: Entry, st: LocalFile) -> None:
        self.done[entry.path] = Tracked(entry, st.fingerprint if entry.kind == "file" else None)

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
        await self._write_files(files)
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

    async def _write_files(self, files: list[Entry]) -> None:
        groups: dict[str, list[Entry]] = defaultdict(list)
        large: list[Entry] = []
        small = self.engine.config.pack_threshold
        for entry in files:  # a large file's chunks may share a pack too: that is the large path
            if len(entry.chunks) == 1 and entry.chunks[0].pack is not None and entry.size < small:
                groups[entry.chunks[0].pack or ""].append(entry)
            elif not entry.chunks:
                groups[""].append(entry)
            else:
                large.append(entry)
        self._uses = Counter(ref.id for entry in large for ref in entry.chunks)
        tasks = [self._write_group(pack, members) for pack, members in groups.items()]
        tasks += [self._write_large(entry) for entry in large]
        # One thread for all streamed chunk writes: while chunks stream in it takes batch after
        # batch without sleeping in between, where the default pool woke a thread per batch.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="syncd-write") if large else None
        try:
            await gather_all(tasks)
        finally:  # gather_all waited for every write, so nothing is left to join
            if self._writer is not None:
                self._writer.shutdown(wait=False)

    async def _write_group(self, pack: str, entries: list[Entry]) -> None:
        """Files whose bytes all sit in one pack: one ranged GET, one thread batch."""
        for batch in _batches(entries, self.engine.config.pack_size):
            size = sum(e.size for e in batch)
            held = await self.engine.budget.acquire(size)
            try:
                refs = [c for e in batch for c in e.chunks]
                data = await self.engine.fetcher.get_packed(self.volume, pack, refs) if refs else {}
                stats = await in_thread(self._write_batch, batch, data)
            finally:
                await self.engine.budget.release(held)
            for entry, st in zip(batch, stats):
                self._record(entry, st)
            self.result.files_written += len(batch)
            self.result.bytes_written += size
            self.progress.advance(size)

    def _write_batch(self, batch: list[Entry], data: dict[str, bytes]) -> list[LocalFile]:
        return [localfs.write_small(self.root, e.path, e, b"".join(data[c.id] for c in e.chunks), self.owner)
                for e in batch]

    async def _write_large(self, entry: Entry) -> None:
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
        self._record(entry, st)
        self.result.files_written += 1
        self.result.bytes_written += entry.size

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

