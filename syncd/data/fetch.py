"""Where chunk bytes come from: the local cache, then remote sources, then the store.

``ChunkFetcher.get`` resolves one chunk; ``get_packed`` resolves many small
chunks that live in one pack with a single ranged GET covering all of them.
Both are single-flight (one in-flight fetch per chunk id, or per pack range),
so any number of concurrent readers on one worker cause one download.

Every byte that comes back from a remote source or the store is re-hashed
against the chunk id before anyone sees it (the cache verifies its own reads).
A mismatch from the store is retried once (a torn read or a bad proxy), then
raised as IntegrityError, and so is a referenced object or range the store
does not have (a damaged or hostile snapshot); a mismatch from a remote source (a gateway) only
skips that source. Verified bytes are written to the cache best-effort.

Remote sources (``ChunkSource``) are the gateway seam: anything with an async
``fetch(volume, ref)`` and ``fetch_range(volume, pack, start, end)`` returning
verified-or-not bytes, or None to pass. Sources are tried in the order of
their ``weight(key)`` for the object (the chunk id, or the pack id for packed
chunks), highest first: with gateways that is rendezvous hashing, so each
object is fetched through (and cached on) one gateway, and when that one is
down the next in the object's own order takes over. Pack ranges go through the
sources too; every chunk in a range is verified on its own as before.

``stream_run`` is the large-file path of a hydrate in ``ref`` cache mode
(cache.py): one chunk object, or a run of chunks lying back to back in one
pack (``coalesce``: a large file's consecutive chunks share a pack, upload.py),
is streamed (store.open_stream, one GET) into the caller's writer in ~1 MiB
batches, each chunk hashed on the way up to its boundary, never held whole in
memory (or, from a store that reads into sinks, received, hashed and written
buffer by buffer in one worker thread: ``store.read_into``, ``_Verifier``); the caller checks nothing itself, a mismatch or a body cut short is
retried (the whole run, from position 0) and then raised; ``verified`` hears of
each chunk as soon as it passed, so a reader can serve it before the run ends. Reader rule: refs
that name the same pack with ``offset + size`` of one equal to the next's
``offset`` are read with one ranged GET ``[first.offset, last.end)``, at most
``SYNCD_LARGE_PACK_SIZE`` bytes a GET; every chunk is still verified alone.

``place_nearby`` asks only the cache and the remote sources, so the caller can
stream from the store when they have nothing; it writes the chunk into place
itself (the caller's ``write_sync``), and a gateway streams the body into it
buffer by buffer from a reading thread (``fetch_into``, gatewayclient.py), hashed
and written without a copy (the cold fan-out's workers spent ~30% of their CPU
copying gateway bodies into ``bytes`` and allocating buffers for them). A
chunk that does not verify is written again from the next source or the store
before anyone sees the file, as a retried store stream is.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from syncd.data.cache import ChunkCache
from syncd.errors import IntegrityError, NotFound, SyncdError, TransientStoreError
from syncd.format.chunking import hasher, verify
from syncd.format.compress import decompress
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef
from syncd.limits import SingleFlight
from syncd.store.base import Blob, ObjectStore, open_stream, read_into
from syncd.store.rangeread import Unsupported

log = logging.getLogger(__name__)
Writer = Callable[[int, list[bytes]], Awaitable[None]]  # (position in the chunk, pieces)
SyncWriter = Callable[[int, memoryview], None]          # the same, blocking, for a reading thread
Verified = Callable[[int], None]                        # index of a chunk whose bytes were all written and passed
WRITE_BATCH = 1 << 20     # bytes handed to a Writer at once (measured: docs/BENCHMARKS.md)
STREAM_ATTEMPTS = 3       # a body cut short is read again this many times in all


class ChunkSource(Protocol):
    name: str

    def weight(self, key: str) -> int: ...

    async def fetch(self, volume: str, ref: ChunkRef) -> bytes | None: ...

    async def fetch_range(self, volume: str, pack: str, start: int, end: int) -> bytes | None: ...

    # Optional (place_nearby and stream_run use it when present): the bytes of ``refs`` (one chunk,
    # or chunks back to back in one pack) streamed into a rangeread.Sink (begin(size), then
    # write(view) per buffer, in a reading thread); True once delivered whole, None to pass; what
    # the sink raises is raised as it is.
    # async def fetch_into(self, volume: str, refs: Sequence[ChunkRef], sink: Sink) -> bool | None: ...


class ChunkFetcher:
    def __init__(self, store: ObjectStore, layout: Layout, cache: ChunkCache | None,
                 sources: Sequence[ChunkSource] = ()) -> None:
        self.store, self.layout, self.cache, self.sources = store, layout, cache, list(sources)
        self.bytes_by_source: Counter[str] = Counter()
        self.stream_retries = 0  # bodies that broke off half-way and were read again
        self._chunks: SingleFlight[tuple[str, str], bytes] = SingleFlight()
        self._packs: SingleFlight[tuple[str, str, int, int], dict[str, bytes]] = SingleFlight()

    async def get(self, volume: str, ref: ChunkRef, *, cache_bytes: bool = True) -> bytes:
        """One chunk; ``cache_bytes=False`` when the caller will cache a reference instead."""
        data = await self._chunks.do((volume, ref.id), lambda: self._fetch(volume, ref, cache_bytes))
        return _sized(volume, ref, data)

    async def _fetch(self, volume: str, ref: ChunkRef, cache_bytes: bool = True) -> bytes:
        cached = await self._cached(ref)
        if cached is not None:
            return cached
        data = await self._remote(volume, ref)
        if data is None:
            data = await self._from_store(volume, ref)
        if self.cache is not None and cache_bytes:
            await self.cache.put(ref.id, data)
        return data

    async def _cached(self, ref: ChunkRef) -> bytes | None:
        cached = await self.cache.get(ref.id) if self.cache is not None else None
        if cached is not None:
            self.bytes_by_source["cache"] += len(cached)
        return cached

    async def place_nearby(self, volume: str, ref: ChunkRef, write_sync: SyncWriter) -> bool:
        """The chunk from the cache or a remote source, verified, written with ``write_sync``
        (in a worker thread); False when neither has it (the store was not asked). Remote
        sources as in :meth:`_run_nearby`; a source that only returns bytes (``fetch``) has
        them hashed before they are written."""
        cached = await self._cached(ref)
        if cached is not None:
            await asyncio.to_thread(write_sync, 0, memoryview(_sized(volume, ref, cached)))
            return True
        return await self._run_nearby(volume, [ref], write_sync)

    async def _run_nearby(self, volume: str, refs: Sequence[ChunkRef], write_sync: SyncWriter) -> bool:
        """One chunk, or chunks back to back in one pack (``coalesce``), from the remote sources in
        their order for the pack (or the chunk): the first that delivers them verified wins. A
        source that reads into sinks (``fetch_into``: a gateway) streams the bytes through a
        reused buffer, hashed and written as they come (no copy in Python); they land in the
        caller's private file before their hash is known, so a source whose bytes do not
        verify is skipped and the next one (or the store) writes the range again. A run
        holding compressed chunks goes through ``_Decoder``, which writes each chunk only
        once it inflated and verified."""
        first = refs[0]
        for source in self._ranked(first.pack or first.id):
            into = getattr(source, "fetch_into", None)
            if into is None and len(refs) > 1:
                continue
            sink = _sink(volume, first.pack or first.id, None, None, refs, write_sync, strict=False)
            try:
                if into is not None:
                    delivered: bool | None = await into(volume, refs, sink)
                else:
                    data = await source.fetch(volume, first)
                    delivered = None if data is None else await asyncio.to_thread(sink.whole, memoryview(data))
            except _WrongSize:
                delivered = False
            except SyncdError as exc:
                if sink.raised is not None:   # the caller's write failed: not the source's failure
                    raise
                log.info("chunk source %s failed for %s: %s", source.name, first.pack or first.id, exc)
                continue
            if delivered and sink.verified():
                self.bytes_by_source[source.name] += sum(r.size for r in refs)
                return True
            if delivered is not None:
                log.warning("chunk source %s returned bad bytes for %s; skipping it", source.name,
                            (sink.failed or first).id)
        return False

    async def stream_from_store(self, volume: str, ref: ChunkRef, write: Writer,
                                write_sync: SyncWriter | None = None) -> None:
        """Stream one chunk from the store into ``write(position, pieces)``, verified."""
        await self.stream_run(volume, [ref], write, write_sync)

    async def stream_run(self, volume: str, refs: Sequence[ChunkRef], write: Writer,
                         write_sync: SyncWriter | None = None, verified: Verified | None = None) -> None:
        """Stream chunks into ``write(position, pieces)`` with one GET, each verified: from a
        remote source that reads into sinks (a gateway, :meth:`_run_nearby`) when one delivers
        them, else from the store.

        ``refs`` is one chunk, or chunks that lie back to back in one pack (``coalesce``);
        positions count from the first chunk's first byte. Not single-flight and not cached:
        for hydrate, which writes in place and caches a reference. A retry writes from
        position 0 again; a chunk that fails verification twice is an IntegrityError.
        With ``write_sync`` (the same writer, blocking) a store that reads into sinks
        (``read_into``: both backends) receives, hashes and writes each buffer in one worker
        thread, with no per-piece copies; other stores stream into ``write``.
        ``verified(index)`` (the lazy mount's) is called once per chunk, as soon as all its
        bytes were handed to the writer and hashed to its id, before the run ends: in the
        reading thread with ``write_sync``, else on the loop. A chunk reported is final: a
        retry writes its bytes again, but the caller may ignore them. From a remote source
        (whose bad bytes the next source overwrites) the chunks are reported once all passed.
        """
        reported: set[int] = set()

        def once(index: int) -> None:
            if verified is not None and index not in reported:
                reported.add(index)
                verified(index)
        if write_sync is not None and self.sources and await self._run_nearby(volume, refs, write_sync):
            for index in range(len(refs)):
                once(index)
            return
        first, last = refs[0], refs[-1]
        if first.pack is None:
            key, start, end = self.layout.chunk(volume, first.id), None, None
        else:
            key, start, end = self.layout.pack(volume, first.pack), first.offset, last.end
        stream = self._stream_decoded if any(r.stored for r in refs) else self._stream_once
        bad = 0
        for attempt in range(1, STREAM_ATTEMPTS + 1):
            try:
                failed = await stream(volume, key, start, end, refs, write, write_sync, once)
            except TransientStoreError as exc:  # the body broke off: read it again
                if attempt == STREAM_ATTEMPTS:
                    raise
                self.stream_retries += 1
                log.info("reading %s again after %s", key, exc)
                continue
            if failed is None:
                self.bytes_by_source["store"] += sum(r.size for r in refs)
                return
            bad += 1
            log.warning("chunk %s from %s failed verification (attempt %d)", failed.id, key, attempt)
            if bad == 2 or attempt == STREAM_ATTEMPTS:  # as _from_store: a torn read gets one more
                raise _corrupt(volume, failed, key)     # chance, if the attempts are not used up
        raise AssertionError("unreachable")

    async def _stream_once(self, volume: str, key: str, start: int | None, end: int | None,
                           refs: Sequence[ChunkRef], write: Writer,
                           write_sync: SyncWriter | None, verified: Verified) -> ChunkRef | None:
        """One GET; the first chunk whose bytes did not hash to its id, or None."""
        check = _Verifier(volume, key, start, end, refs, on_verified=verified)
        try:
            if await self._read_direct(key, start, end, check, write_sync):
                return check.failed
            check = _Verifier(volume, key, start, end, refs, on_verified=verified)
            position, size = 0, 0
            batch: list[bytes] = []
            async with open_stream(self.store, key, start, end) as stream:
                check.begin(stream.size)
                async for piece in stream.pieces:
                    check.feed(memoryview(piece))
                    batch.append(piece)
                    size += len(piece)
                    if size >= WRITE_BATCH:
                        await write(position, batch)
                        check.report()
                        position, batch, size = position + size, [], 0
                if batch:
                    await write(position, batch)
                    check.report()
        except NotFound as exc:
            raise _missing(volume, key) from exc
        return check.failed

    async def _stream_decoded(self, volume: str, key: str, start: int | None, end: int | None,
                              refs: Sequence[ChunkRef], write: Writer,
                              write_sync: SyncWriter | None, verified: Verified) -> ChunkRef | None:
        """As ``_stream_once`` for a run holding compressed chunks: each chunk's stored bytes are
        collected (one chunk at a time), inflated, verified and written at its plain position."""
        check = _Decoder(volume, key, start, end, refs, on_verified=verified)
        try:
            if await self._read_direct(key, start, end, check, write_sync):
                return check.failed
            check = _Decoder(volume, key, start, end, refs, on_verified=verified)
            async with open_stream(self.store, key, start, end) as stream:
                check.begin(stream.size)
                async for piece in stream.pieces:
                    for index, position, plain in check.take(memoryview(piece)):
                        await write(position, [plain])
                        verified(index)
        except NotFound as exc:
            raise _missing(volume, key) from exc
        return check.failed

    async def _read_direct(self, key: str, start: int | None, end: int | None, check: _Verifier | _Decoder,
                           write_sync: SyncWriter | None) -> bool:
        """One GET received by the store's reading thread straight into ``check`` (which writes
        through ``write_sync``); False when the body must be streamed instead."""
        if write_sync is None:
            return False
        check.write_sync = write_sync
        try:
            return await read_into(self.store, key, start, end, check)
        except Unsupported as exc:
            log.info("reading %s as a stream: %s", key, exc)
            return False

    def _ranked(self, key: str) -> list[ChunkSource]:
        return sorted(self.sources, key=lambda source: source.weight(key), reverse=True)

    async def _remote(self, volume: str, ref: ChunkRef) -> bytes | None:
        for source in self._ranked(ref.pack or ref.id):
            try:
                data = await source.fetch(volume, ref)
            except SyncdError as exc:
                log.info("chunk source %s failed for %s: %s", source.name, ref.id, exc)
                continue
            if data is None:
                continue
            plain = _plain(ref, data)
            if plain is not None and verify(ref.id, plain):
                self.bytes_by_source[source.name] += ref.size
                return plain
            log.warning("chunk source %s returned bad bytes for %s; skipping it", source.name, ref.id)
        return None

    async def _from_store(self, volume: str, ref: ChunkRef) -> bytes:
        if ref.pack is None:
            key, start, end = self.layout.chunk(volume, ref.id), None, None
        else:
            key, start, end = self.layout.pack(volume, ref.pack), ref.offset, ref.end
        for attempt in (1, 2):
            blob = await self._get(volume, key, start, end)
            plain = _plain(ref, blob.data)
            if plain is not None and verify(ref.id, plain):
                self.bytes_by_source["store"] += ref.size
                return plain
            log.warning("chunk %s from %s failed verification (attempt %d)", ref.id, key, attempt)
        raise _corrupt(volume, ref, key)

    async def _get(self, volume: str, key: str, start: int | None, end: int | None) -> Blob:
        """A GET of bytes a snapshot references: their absence means the volume is damaged."""
        try:
            return await self.store.get(key, start, end)
        except NotFound as exc:
            raise _missing(volume, key, "" if start is None else f" (bytes {start}..{end})") from exc

    async def get_packed(self, volume: str, pack: str, refs: Iterable[ChunkRef], *, cache_bytes: bool = True,
                         from_cache: set[str] | None = None) -> dict[str, bytes]:
        """Bytes of every ref (all in ``pack``), keyed by chunk id, with at most one GET.
        ``cache_bytes=False`` when the caller caches references instead (hydrate: the file it
        writes is the copy); ``from_cache`` (if given) receives the ids the cache had."""
        wanted = {r.id: r for r in refs}
        found = await self.cache.get_many(wanted) if self.cache is not None else {}
        self.bytes_by_source["cache"] += sum(len(v) for v in found.values())
        if from_cache is not None:
            from_cache.update(found)
        missing = [r for i, r in wanted.items() if i not in found]
        if missing:
            start = min(r.offset for r in missing)
            end = max(r.end for r in missing)
            fetched = await self._packs.do(
                (volume, pack, start, end), lambda: self._fetch_range(volume, pack, start, end, missing, cache_bytes))
            found.update({r.id: fetched[r.id] for r in missing})
        for ref in wanted.values():
            _sized(volume, ref, found[ref.id])
        return found

    async def _fetch_range(self, volume: str, pack: str, start: int, end: int,
                           refs: list[ChunkRef], cache_bytes: bool = True) -> dict[str, bytes]:
        source, data = await self._range(volume, pack, start, end)
        out, bad = self._split(source, data, start, refs)
        if bad and source != "store":  # a bad gateway answer: the store's range, once
            log.warning("pack %s range from %s failed verification; reading the store", pack, source)
            blob = await self._get(volume, self.layout.pack(volume, pack), start, end)
            good, bad = self._split("store", blob.data, start, bad)
            out.update(good)
        for ref in bad:  # torn range or a corrupt pack: fall back to this chunk alone
            out[ref.id] = await self._from_store(volume, ref)
        if self.cache is not None and cache_bytes:
            await self.cache.put_many(out)
        return out

    def _split(self, source: str, data: bytes, start: int,
               refs: list[ChunkRef]) -> tuple[dict[str, bytes], list[ChunkRef]]:
        """Cut a pack range into verified chunks (credited to ``source``) and refs that failed."""
        view = memoryview(data)
        good: dict[str, bytes] = {}
        bad: list[ChunkRef] = []
        for ref in refs:
            piece = view[ref.offset - start:ref.end - start]
            plain = _plain(ref, piece)
            if plain is not None and verify(ref.id, plain):
                good[ref.id] = bytes(plain)
                self.bytes_by_source[source] += ref.size
            else:
                bad.append(ref)
        return good, bad

    async def _range(self, volume: str, pack: str, start: int, end: int) -> tuple[str, bytes]:
        """Bytes ``[start, end)`` of a pack, from the first source that has them, else the store."""
        for source in self._ranked(pack):
            try:
                data = await source.fetch_range(volume, pack, start, end)
            except SyncdError as exc:
                log.info("chunk source %s failed for pack %s: %s", source.name, pack, exc)
                continue
            if data is not None and len(data) == end - start:
                return source.name, data
        blob = await self._get(volume, self.layout.pack(volume, pack), start, end)
        return "store", blob.data


class _WrongSize(Exception):
    """A remote source's body is not the size asked for (refused before a byte is written)."""


class _Verifier:
    """Hashes a run's bytes as they pass, up to each chunk's boundary, and checks each chunk.

    The sink of a direct read (``store.read_into``, a source's ``fetch_into``): ``begin``
    refuses a body of the wrong size before any byte is written (``strict``: as a damaged
    snapshot, IntegrityError; else, from a remote source, ``_WrongSize``), ``write`` hashes a
    buffer and then hands it to the caller's blocking writer, in the reading thread, while the
    bytes are still in the CPU cache.
    """

    def __init__(self, volume: str, key: str, start: int | None, end: int | None,
                 refs: Sequence[ChunkRef], write_sync: SyncWriter | None = None, strict: bool = True,
                 on_verified: Verified | None = None) -> None:
        self.volume, self.key, self.start, self.end, self.refs = volume, key, start, end, refs
        self.bounds = _bounds(refs)
        self.index, self.done, self.position = 0, 0, 0
        self.digest = hasher()
        self.failed: ChunkRef | None = None
        self.write_sync, self.strict = write_sync, strict
        self.raised: BaseException | None = None   # what the caller's writer raised
        self.on_verified = on_verified
        self.passed: list[int] = []   # chunks that hashed right, not yet reported

    def begin(self, size: int) -> None:
        if size != self.bounds[-1]:  # as _sized: never write past the chunks' place
            if not self.strict:
                raise _WrongSize(f"{size} bytes for {self.key}, not {self.bounds[-1]}")
            raise _wrong_size(self.volume, self.refs[0], size) if len(self.refs) == 1 else \
                _missing(self.volume, self.key, f" (bytes {self.start}..{self.end})")

    def feed(self, view: memoryview) -> None:
        while view:  # hash up to each chunk boundary, then check that chunk
            take = min(len(view), self.bounds[self.index] - self.done)
            self.digest.update(view[:take])
            self.done += take
            view = view[take:]
            if self.done == self.bounds[self.index]:
                if self.digest.hexdigest() == self.refs[self.index].id:
                    self.passed.append(self.index)
                elif self.failed is None:
                    self.failed = self.refs[self.index]
                self.index, self.digest = self.index + 1, hasher()

    def report(self) -> None:
        """Tell ``on_verified`` of the chunks that passed, once their last bytes were written."""
        if self.on_verified is not None:
            for index in self.passed:
                self.on_verified(index)
        self.passed.clear()

    def write(self, view: memoryview) -> None:
        self.feed(view)
        self._pass_on(view)

    def whole(self, view: memoryview) -> bool:
        """A body in one piece (one chunk): hashed first, written only if it is the chunk."""
        if len(self.refs) != 1 or len(view) != self.bounds[-1] or not verify(self.refs[0].id, view):
            return False
        self.index, self.done = 1, len(view)
        self._pass_on(view)
        return True

    def _pass_on(self, view: memoryview) -> None:
        assert self.write_sync is not None
        try:
            self.write_sync(self.position, view)
        except BaseException as exc:
            self.raised = exc
            raise
        self.position += len(view)
        self.report()

    def verified(self) -> bool:
        """Every chunk came whole, and each hashed to its id."""
        return self.failed is None and self.index == len(self.refs)


class _Decoder:
    """A run's stored bytes, cut at each chunk's stored size, inflated where compressed and verified.

    Holds one chunk's stored bytes at a time (format 3 chunks are at most 2 MiB by
    default, 16 MiB compressed by the format's bound), so memory stays bounded
    like the plain path's. ``take`` returns the verified chunks completed by a
    piece, with their indexes and positions in plain bytes; a chunk that does not
    verify is remembered in ``failed`` and not written. Also a sink for
    ``store.read_into``, which tells ``on_verified`` of each chunk once written.
    """

    def __init__(self, volume: str, key: str, start: int | None, end: int | None,
                 refs: Sequence[ChunkRef], write_sync: SyncWriter | None = None, strict: bool = True,
                 on_verified: Verified | None = None) -> None:
        self.volume, self.key, self.start, self.end, self.refs = volume, key, start, end, refs
        self.total = sum(r.stored_size for r in refs)
        self.index, self.position = 0, 0
        self.buffer = bytearray()
        self.failed: ChunkRef | None = None
        self.write_sync, self.strict = write_sync, strict
        self.raised: BaseException | None = None   # what the caller's writer raised
        self.on_verified = on_verified

    def begin(self, size: int) -> None:
        if size != self.total:
            if not self.strict:
                raise _WrongSize(f"{size} bytes for {self.key}, not {self.total}")
            raise _missing(self.volume, self.key, f" (bytes {self.start}..{self.end})")

    def take(self, view: memoryview) -> list[tuple[int, int, bytes]]:
        out = []
        while view and self.index < len(self.refs):
            ref = self.refs[self.index]
            need = ref.stored_size - len(self.buffer)
            self.buffer += view[:need]
            view = view[need:]
            if len(self.buffer) == ref.stored_size:
                plain = _plain(ref, self.buffer)
                if plain is not None and verify(ref.id, plain):
                    out.append((self.index, self.position, bytes(plain)))
                elif self.failed is None:
                    self.failed = ref
                self.position += ref.size
                self.index += 1
                self.buffer = bytearray()
        return out

    def write(self, view: memoryview) -> None:
        assert self.write_sync is not None
        for index, position, plain in self.take(view):
            try:
                self.write_sync(position, memoryview(plain))
            except BaseException as exc:
                self.raised = exc
                raise
            if self.on_verified is not None:
                self.on_verified(index)

    def whole(self, view: memoryview) -> bool:
        """A body in one piece (one chunk's stored bytes): inflated, verified, then written."""
        if len(self.refs) != 1 or len(view) != self.total:
            return False
        self.write(view)
        return self.verified()

    def verified(self) -> bool:
        """Every chunk came whole, and each inflated and hashed to its id."""
        return self.failed is None and self.index == len(self.refs)


def _sink(volume: str, key: str, start: int | None, end: int | None, refs: Sequence[ChunkRef],
          write_sync: SyncWriter | None, strict: bool) -> _Verifier | _Decoder:
    """The sink for a run's stored bytes: plain runs are hashed as they pass, runs holding a
    compressed chunk are inflated chunk by chunk first."""
    if any(r.stored for r in refs):
        return _Decoder(volume, key, start, end, refs, write_sync, strict)
    return _Verifier(volume, key, start, end, refs, write_sync, strict)


B = TypeVar("B", bytes, bytearray, memoryview)


def _plain(ref: ChunkRef, stored: B) -> B | bytes | None:
    """A chunk's plain bytes from its stored bytes (inflated if compressed); None if they do not inflate."""
    if not ref.stored:
        return stored
    try:
        return decompress(stored, ref.size, f"chunk {ref.id}")
    except IntegrityError:
        return None


def _bounds(refs: Sequence[ChunkRef]) -> list[int]:
    """Where each chunk of a run ends, counted from the run's first byte."""
    out, total = [], 0
    for ref in refs:
        total += ref.size
        out.append(total)
    return out


def coalesce(refs: Sequence[ChunkRef], unit: int) -> list[list[ChunkRef]]:
    """Split ``refs`` (in file order) into runs that one ranged GET can read: chunks that lie
    back to back in one pack, at most ``unit`` bytes a run; every other chunk is a run alone."""
    runs: list[list[ChunkRef]] = []
    for ref in refs:
        run = runs[-1] if runs else None
        if run and ref.pack is not None and run[-1].pack == ref.pack \
                and run[-1].end == ref.offset \
                and sum(r.stored_size for r in run) + ref.stored_size <= unit:
            run.append(ref)
        else:
            runs.append([ref])
    return runs


def _sized(volume: str, ref: ChunkRef, data: bytes) -> bytes:
    """The id vouches for the bytes, not for the size a snapshot claims: check that too.

    Otherwise a hostile reference ``[real id, 4 GiB]`` would fetch the real
    chunk, and the file would be published padded with zeros.
    """
    if len(data) != ref.size:
        raise _wrong_size(volume, ref, len(data))
    return data


def _wrong_size(volume: str, ref: ChunkRef, actual: int) -> IntegrityError:
    return IntegrityError(f"volume {volume!r}: the snapshot says chunk {ref.id} has {ref.size} bytes, "
                          f"but it has {actual}")


def _missing(volume: str, key: str, where: str = "") -> IntegrityError:
    return IntegrityError(f"volume {volume!r}: {key}{where} is referenced by the snapshot "
                          "but missing from the store")


def _corrupt(volume: str, ref: ChunkRef, key: str) -> IntegrityError:
    return IntegrityError(f"chunk {ref.id} of volume {volume!r} is corrupt in the store ({key})")
