"""Volumes in the bucket: the commit point, snapshots, listing and deletion.

The commit point ``HEAD`` is a small JSON object naming the latest snapshot and
its sequence number. It is the only mutable object of a volume and is only
ever changed with a conditional write: created with ``If-None-Match: *`` (so
two creators cannot both win) and advanced with ``If-Match: <etag read>`` (so
an advance based on a stale read fails with PreconditionFailed instead of
silently discarding another writer's snapshot). Snapshots are immutable and
named by content id, so putting one twice is harmless.

A volume exists exactly when its HEAD exists. Deletion removes HEAD first (the
volume disappears atomically for readers) and then every other key under the
volume's prefix.

Formats. Every snapshot written is format 3 (format 2 plus compressed chunks
and the chunk index): a small header naming a root tree (format/tree.py,
engine/trees.py); a v2 volume moves to v3 on its next commit or with
``syncd volume upgrade``, which rewrites no tree. Format-1 snapshots (one zlib object
listing every entry) stay readable: the first byte tells them apart (a v2
snapshot is canonical JSON and starts with ``{``, a v1 one is a zlib stream).
A commit onto a v1 snapshot writes a v2 one, and :meth:`VolumeRepo.upgrade`
does the same without a local directory (``syncd volume upgrade``); chunks and
packs are shared by both formats, so nothing else is rewritten.

The lease. Prune takes a lease in HEAD before it deletes chunks and packs
(:meth:`VolumeRepo.take_lease`, a conditional write that also bumps
``epoch``); a writer that finds an unexpired lease waits for it to go before
advancing, and a writer whose HEAD read predates a prune (the epoch moved)
re-checks the objects it reuses. docs/FORMAT.md, section 9, gives the proof.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from syncd.data.cache import ChunkCache
from syncd.engine.trees import Builder, Built, TreePool, TreeStore, diff_trees, upload_packs
from syncd.errors import (
    ManifestError,
    NotFound,
    PreconditionFailed,
    SnapshotNotFound,
    UnsurePrecondition,
    VolumeNotFound,
)
from syncd.format import manifest, tree
from syncd.format.chunking import is_content_id
from syncd.format.layout import Layout, validate_name
from syncd.format.manifest import Changes, Entry, Snapshot
from syncd.store.base import ObjectStore, put_immutable

log = logging.getLogger(__name__)
HEAD_FORMAT = 3
LANDED_WALK = 1000     # headers read back from HEAD to find a snapshot whose advance lost its answer
HEAD_FORMATS = (1, 2, 3)


def writer_id() -> str:
    """Who wrote a snapshot (informational): host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Head:
    volume: str
    snapshot: str | None
    seq: int
    etag: str
    created: float
    updated: float
    epoch: int = 0                  # how many prunes took the lease so far
    lease: str | None = None        # who holds the prune lease (None: nobody)
    lease_expires: float = 0.0
    format: int = 3                 # the HEAD object's own format (1, 2 or 3)

    def leased(self, now: float | None = None) -> bool:
        return self.lease is not None and (time.time() if now is None else now) < self.lease_expires


def encode_head(volume: str, snapshot: str | None, seq: int, created: float, epoch: int = 0,
                lease: str | None = None, lease_expires: float = 0.0) -> bytes:
    doc = {"format": HEAD_FORMAT, "volume": volume, "snapshot": snapshot, "seq": seq,
           "created": created, "updated": time.time(), "epoch": epoch,
           "lease": None if lease is None else {"holder": lease, "expires": lease_expires}}
    return json.dumps(doc, separators=(",", ":")).encode()


async def wait_lease_free(repo: VolumeRepo, head: Head) -> Head:
    """``head``, or a later one read once prune's lease in it is gone or expired."""
    delay = 0.25
    while head.leased():
        await asyncio.sleep(min(delay, max(0.0, head.lease_expires - time.time()) + 0.01))
        delay = min(delay * 2, 5.0)
        head = await repo.head(head.volume)
    return head


def _strict_json(data: bytes) -> object:
    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("duplicate key")
        return out

    def no_constant(text: str) -> object:
        raise ValueError(f"{text} is not JSON")

    return json.loads(data.decode("utf-8"), object_pairs_hook=unique, parse_constant=no_constant)


def decode_head(volume: str, data: bytes, etag: str) -> Head:
    try:
        doc = _strict_json(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ManifestError(f"HEAD of {volume!r} is not JSON") from exc
    if not isinstance(doc, dict) or type(doc.get("format")) is not int or doc.get("format") not in HEAD_FORMATS:
        raise ManifestError(f"HEAD of {volume!r} has unsupported format "
                            f"{doc.get('format') if isinstance(doc, dict) else doc!r}")
    snap, seq, epoch = doc.get("snapshot"), doc.get("seq"), doc.get("epoch", 0)
    if snap is not None and not is_content_id(snap):
        raise ManifestError(f"HEAD of {volume!r} names an invalid snapshot id")
    if type(seq) is not int or seq < 0 or type(epoch) is not int or epoch < 0:
        raise ManifestError(f"HEAD of {volume!r} has an invalid seq or epoch")
    lease, expires = doc.get("lease"), 0.0
    if lease is not None:
        if (not isinstance(lease, dict) or not isinstance(lease.get("holder"), str)
                or type(lease.get("expires")) not in (int, float)):
            raise ManifestError(f"HEAD of {volume!r} has an invalid lease")
        lease, expires = lease["holder"], float(lease["expires"])
    return Head(volume, snap, seq, etag, float(doc.get("created", 0)), float(doc.get("updated", 0)),
                epoch, lease, expires, doc["format"])


class VolumeRepo:
    def __init__(self, store: ObjectStore, layout: Layout, snapshot_cache: int = 16,
                 cache: ChunkCache | None = None, tree_pool: TreePool | None = None) -> None:
        self.store, self.layout = store, layout
        self.trees = TreeStore(store, layout, disk=cache, pool=tree_pool)
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        self._snapshot_cache = snapshot_cache

    async def head(self, volume: str) -> Head:
        try:
            blob = await self.store.get(self.layout.head(volume))
        except NotFound as exc:
            raise VolumeNotFound(f"volume {volume!r} does not exist (owner {self.layout.owner!r})") from exc
        return decode_head(volume, blob.data, blob.etag)

    async def create(self, volume: str, *, exist_ok: bool = True) -> tuple[Head, bool]:
        """Create ``volume`` if missing. Returns ``(head, created)``."""
        validate_name(volume)
        now = time.time()
        try:
            etag = await self.store.put(self.layout.head(volume), encode_head(volume, None, 0, now),
                                        if_none_match=True)
        except PreconditionFailed:
            if not exist_ok:
                raise
            return await self.head(volume), False
        return Head(volume, None, 0, etag, now, now), True

    async def exists(self, volume: str) -> bool:
        try:
            await self.store.head(self.layout.head(volume))
        except NotFound:
            return False
        return True

    async def header(self, volume: str, snapshot_id: str) -> Snapshot:
        """A snapshot without reading its trees: v2 entries stay empty (v1 ones come with it)."""
        cached = self._snapshots.get(snapshot_id)
        if cached is not None:
            self._snapshots.move_to_end(snapshot_id)
            return cached
        try:
            blob = await self.store.get(self.layout.snapshot(volume, snapshot_id))
        except NotFound as exc:
            raise SnapshotNotFound(f"volume {volume!r} has no snapshot {snapshot_id}") from exc
        try:
            if blob.data[:1] == b"{":
                snap = tree.decode_snapshot(blob.data, snapshot_id)
            else:
                snap = manifest.decode(blob.data, snapshot_id)
        except ManifestError as exc:
            raise ManifestError(f"volume {volume!r}: snapshot {snapshot_id}: {exc}") from exc
        if snap.volume != volume or snap.owner != self.layout.owner:
            raise ManifestError(f"snapshot {snapshot_id} belongs to {snap.owner}/{snap.volume}, "
                                f"not {self.layout.owner}/{volume}")
        self._snapshots[snapshot_id] = snap
        while len(self._snapshots) > self._snapshot_cache:
            self._snapshots.popitem(last=False)
        return snap

    async def snapshot(self, volume: str, snapshot_id: str) -> Snapshot:
        """A snapshot with every entry, validated as a whole (what a hydrate writes)."""
        snap = await self.header(volume, snapshot_id)
        if snap.root is None:
            return snap
        try:
            entries = await self.trees.flat(volume, snap.root)
            manifest.validate_entries(entries)
        except ManifestError as exc:
            raise ManifestError(f"volume {volume!r}: snapshot {snapshot_id}: {exc}") from exc
        return replace(snap, entries=entries)

    async def lookup(self, volume: str, snapshot_id: str, path: str) -> Entry | None:
        """The entry at ``path`` of a snapshot, reading only the trees on its path (v2)."""
        snap = await self.header(volume, snapshot_id)
        path = path.strip("/")
        if snap.root is None:
            return snap.entries.get(path)
        item = await self.trees.lookup(volume, snap.root, path) if path else None
        return None if item is None else tree.with_path(item, path.rpartition("/")[0])

    async def list_dir(self, volume: str, snapshot_id: str, path: str = "") -> list[Entry] | None:
        """The entries of directory ``path`` ('' = the root), sorted by name bytes; None if no such dir.

        For a v2 snapshot this reads the trees on ``path`` and nothing else.
        A symlink entry is returned as recorded: a reader that follows it must
        resolve it within the volume itself (docs/FORMAT.md, section 6).
        """
        snap = await self.header(volume, snapshot_id)
        path = path.strip("/")
        if snap.root is not None:
            return await self.trees.list_dir(volume, snap.root, path)
        if path and (path not in snap.entries or snap.entries[path].kind != "dir"):
            return None
        prefix = path + "/" if path else ""
        found = [e for p, e in snap.entries.items() if p.startswith(prefix) and "/" not in p[len(prefix):]]
        return sorted(found, key=lambda e: tree.name_bytes(e.path))

    async def diff(self, volume: str, old_id: str | None, new_id: str | None) -> Changes:
        """Per-path changes from snapshot ``old_id`` to ``new_id`` (None = empty), like manifest.diff.

        Between two v2 snapshots only the subtrees whose ids differ are read.
        """
        old = await self.header(volume, old_id) if old_id else None
        new = await self.header(volume, new_id) if new_id else None
        if (old is None or old.root is not None) and (new is None or new.root is not None):
            return await diff_trees(self.trees, volume, old.root if old else None, new.root if new else None)
        flat_old = (await self.snapshot(volume, old_id)).entries if old_id else {}
        flat_new = (await self.snapshot(volume, new_id)).entries if new_id else {}
        return manifest.diff(flat_old, flat_new)

    def forget(self, snapshot_ids: list[str]) -> None:
        """Drop snapshots from the in-memory cache (prune deleted them)."""
        for sid in snapshot_ids:
            self._snapshots.pop(sid, None)

    async def latest(self, volume: str) -> tuple[Head, Snapshot | None]:
        head = await self.head(volume)
        return head, (await self.snapshot(volume, head.snapshot) if head.snapshot else None)

    async def build(self, volume: str, theirs: Snapshot | None, changes: Changes,
                    base: Mapping[str, Entry]) -> Built:
        """The trees of ``theirs`` with ``changes`` replayed (manifest.apply's rules), not yet uploaded.

        On a v2 snapshot only the trees on changed paths are read and written;
        on a v1 one (or for a full list of entries) every tree is built once.
        """
        if theirs is not None and theirs.root is None:
            merged = manifest.apply(theirs.entries, changes, base)
            builder = Builder(self.trees, volume, None, base)
            await builder.apply(dict(merged))
        else:
            builder = Builder(self.trees, volume, theirs.root if theirs else None, base)
            await builder.apply(changes)
        return await builder.finish()

    async def put_snapshot(self, volume: str, snap: Snapshot) -> str:
        """Store ``snap``; one given as entries (no root) is stored as v2 trees first."""
        if snap.root is None:
            manifest.validate_entries(snap.entries)
            built = await self.build(volume, None, dict(snap.entries), {})
            await upload_packs(self.store, self.layout, volume, built)
            snap = replace(snap, entries={}, format=tree.FORMAT_WRITE, root=built.root, stats=built.stats)
        snapshot_id, data = tree.encode_snapshot(snap)
        await put_immutable(self.store, self.layout.snapshot(volume, snapshot_id), data)
        return snapshot_id

    async def publish(self, head: Head, entries: Mapping[str, Entry], message: str = "") -> Head:
        """Store ``entries`` (the whole tree) as the successor of ``head`` and advance HEAD to it."""
        return await self.publish_built(head, await self.build(head.volume, None, dict(entries), {}), message)

    async def publish_built(self, head: Head, built: Built, message: str = "") -> Head:
        """Upload ``built``'s trees and a snapshot naming them, then advance HEAD from ``head``.

        Raises PreconditionFailed if another writer advanced HEAD meanwhile;
        the caller re-reads HEAD, rebuilds on the new latest and calls again.
        """
        await upload_packs(self.store, self.layout, head.volume, built)
        snap = Snapshot(head.volume, self.layout.owner, head.seq + 1, head.snapshot, time.time(), writer_id(),
                        {}, message, tree.FORMAT_WRITE, built.root, built.stats)
        snapshot_id = await self.put_snapshot(head.volume, snap)
        return await self.advance(head, snapshot_id, head.seq + 1)

    async def advance(self, head: Head, snapshot_id: str, seq: int) -> Head:
        """Point HEAD at ``snapshot_id`` if nobody moved it since ``head`` was read (an expired lease goes).

        A retried PUT that fails its precondition (UnsurePrecondition) may have
        landed on an earlier attempt whose answer was lost, and HEAD may have
        moved on since: then the snapshot is published and the caller must not
        publish the same changes again or tell its user to retry. So HEAD is
        read again and, if ``snapshot_id`` is on its history at ``seq``, that is
        returned (with the HEAD's current etag, which a further advance from it
        would fail on and re-read: safe). Otherwise PreconditionFailed as ever."""
        try:
            etag = await self.store.put(self.layout.head(head.volume),
                                        encode_head(head.volume, snapshot_id, seq, head.created, head.epoch),
                                        if_match=head.etag)
        except UnsurePrecondition:
            now = await self.head(head.volume)
            if await self._holds(now, snapshot_id, seq):
                log.info("volume %r: snapshot %s had landed (its answer was lost)", head.volume, snapshot_id)
                return replace(now, snapshot=snapshot_id, seq=seq)
            raise
        return Head(head.volume, snapshot_id, seq, etag, head.created, time.time(), head.epoch)

    async def _holds(self, head: Head, snapshot_id: str, seq: int) -> bool:
        """Is ``snapshot_id`` the snapshot at ``seq`` on ``head``'s history? Reads one header per
        snapshot published since (others' commits in the meantime), at most ``LANDED_WALK``."""
        current, at = head.snapshot, head.seq
        while current is not None and at > seq and head.seq - at < LANDED_WALK:
            try:
                snap = await self.header(head.volume, current)
            except SnapshotNotFound:      # pruned meanwhile: not ours to claim
                return False
            current, at = snap.parent, snap.seq - 1
        return current == snapshot_id and at == seq

    async def upgrade(self, volume: str, message: str = "upgrade to format 3") -> tuple[Head, bool]:
        """Move a v1 or v2 volume to v3: one new snapshot; True if one was written.

        A v1 snapshot's entries are written as trees; a v2 snapshot keeps its trees
        (a v3 snapshot may name v2 trees: they hold no compressed chunk), so only the
        snapshot and HEAD are new. No chunk is copied. (The chunk index is built by
        ``syncd volume upgrade`` itself, maint/reindex.py.)
        """
        while True:
            head = await self.head(volume)
            current = await self.header(volume, head.snapshot) if head.snapshot else None
            if current is not None and current.format == tree.FORMAT_WRITE:
                return head, False
            try:
                if current is None:        # empty: only HEAD itself is rewritten in the new format
                    if head.format == HEAD_FORMAT:
                        return head, False
                    etag = await self.store.put(self.layout.head(volume),
                                                encode_head(volume, None, 0, head.created, head.epoch),
                                                if_match=head.etag)
                    return replace(head, etag=etag, format=HEAD_FORMAT), False
                head = await wait_lease_free(self, head)
                if current.root is None:
                    return await self.publish(head, current.entries, message), True
                snap = Snapshot(volume, self.layout.owner, head.seq + 1, head.snapshot, time.time(), writer_id(),
                                {}, message, tree.FORMAT_WRITE, current.root, current.stats)
                return await self.advance(head, await self.put_snapshot(volume, snap), head.seq + 1), True
            except PreconditionFailed:
                continue

    async def take_lease(self, head: Head, holder: str, seconds: float) -> Head:
        """Prune's lease: PreconditionFailed if HEAD moved since ``head`` was read."""
        expires = time.time() + seconds
        epoch = head.epoch + 1
        etag = await self.store.put(self.layout.head(head.volume),
                                    encode_head(head.volume, head.snapshot, head.seq, head.created, epoch,
                                                holder, expires), if_match=head.etag)
        return Head(head.volume, head.snapshot, head.seq, etag, head.created, time.time(), epoch, holder, expires)

    async def release_lease(self, head: Head) -> None:
        """Give the lease back; if HEAD moved (the lease expired and a writer advanced), nothing to do."""
        try:
            await self.store.put(self.layout.head(head.volume),
                                 encode_head(head.volume, head.snapshot, head.seq, head.created, head.epoch),
                                 if_match=head.etag)
        except PreconditionFailed:
            pass

    async def names(self) -> list[str]:
        prefixes = await self.store.list_prefixes(self.layout.owner_prefix)
        names = [p[len(self.layout.owner_prefix):].rstrip("/") for p in prefixes]
        out = []
        for name in names:
            try:
                validate_name(name)
            except Exception:
                continue
            if await self.exists(name):
                out.append(name)
        return out

    async def delete(self, volume: str) -> int:
        """Delete the volume and all its objects; returns how many objects were removed."""
        head_key = self.layout.head(volume)
        if not await self.exists(volume):
            raise VolumeNotFound(f"volume {volume!r} does not exist")
        await self.store.delete([head_key])
        keys = [o.key async for o in self.store.list_objects(self.layout.volume_prefix(volume))]
        await self.store.delete(keys)
        return len(keys) + 1

    async def abort_stale_uploads(self, volume: str, older_than: float) -> int:
        """Abort ``volume``'s unfinished multipart uploads started over ``older_than`` seconds ago."""
        return await self.store.abort_stale_uploads(self.layout.volume_prefix(volume), older_than)

    async def history(self, volume: str, limit: int | None = None,
                      entries: bool = True) -> list[tuple[str, Snapshot]]:
        """Snapshots from newest to oldest, following parent links.

        With ``entries=False`` only the headers are read (v2 entries stay
        empty; ``total_files``/``total_bytes`` still work): what ``volume log`` needs.

        The walk ends at the first snapshot without a parent or whose parent
        is gone (pruned: see prune.py; ``syncd volume check`` tells a pruned
        end of history from a lost snapshot).
        """
        head = await self.head(volume)
        out: list[tuple[str, Snapshot]] = []
        current = head.snapshot
        while current is not None and (limit is None or len(out) < limit):
            try:
                snap = await (self.snapshot if entries else self.header)(volume, current)
            except SnapshotNotFound:
                if not out:
                    raise
                break
            out.append((current, snap))
            current = snap.parent
        return out
