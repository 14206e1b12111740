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
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from syncd.errors import ManifestError, NotFound, PreconditionFailed, SnapshotNotFound, VolumeNotFound
from syncd.format import manifest
from syncd.format.chunking import is_content_id
from syncd.format.layout import Layout, validate_name
from syncd.format.manifest import Entry, Snapshot
from syncd.store.base import ObjectStore, put_immutable

HEAD_FORMAT = 1


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


def encode_head(volume: str, snapshot: str | None, seq: int, created: float) -> bytes:
    doc = {"format": HEAD_FORMAT, "volume": volume, "snapshot": snapshot, "seq": seq,
           "created": created, "updated": time.time()}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_head(volume: str, data: bytes, etag: str) -> Head:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"HEAD of {volume!r} is not JSON") from exc
    if not isinstance(doc, dict) or type(doc.get("format")) is not int or doc.get("format") != HEAD_FORMAT:
        raise ManifestError(f"HEAD of {volume!r} has unsupported format {doc.get('format') if isinstance(doc, dict) else doc!r}")
    snap, seq = doc.get("snapshot"), doc.get("seq")
    if snap is not None and not is_content_id(snap):
        raise ManifestError(f"HEAD of {volume!r} names an invalid snapshot id")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ManifestError(f"HEAD of {volume!r} has an invalid seq")
    return Head(volume, snap, seq, etag, float(doc.get("created", 0)), float(doc.get("updated", 0)))


class VolumeRepo:
    def __init__(self, store: ObjectStore, layout: Layout, snapshot_cache: int = 16) -> None:
        self.store, self.layout = store, layout
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

    async def snapshot(self, volume: str, snapshot_id: str) -> Snapshot:
        cached = self._snapshots.get(snapshot_id)
        if cached is not None:
            self._snapshots.move_to_end(snapshot_id)
            return cached
        try:
            blob = await self.store.get(self.layout.snapshot(volume, snapshot_id))
        except NotFound as exc:
            raise SnapshotNotFound(f"volume {volume!r} has no snapshot {snapshot_id}") from exc
        try:
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

    def forget(self, snapshot_ids: list[str]) -> None:
        """Drop snapshots from the in-memory cache (prune deleted them)."""
        for sid in snapshot_ids:
            self._snapshots.pop(sid, None)

    async def latest(self, volume: str) -> tuple[Head, Snapshot | None]:
        head = await self.head(volume)
        return head, (await self.snapshot(volume, head.snapshot) if head.snapshot else None)

    async def put_snapshot(self, volume: str, snap: Snapshot) -> str:
        snapshot_id, data = manifest.encode(snap)
        await put_immutable(self.store, self.layout.snapshot(volume, snapshot_id), data)
        return snapshot_id

    async def publish(self, head: Head, entries: Mapping[str, Entry], message: str = "") -> Head:
        """Store ``entries`` as the successor of ``head`` and advance HEAD to it.

        Raises PreconditionFailed if another writer advanced HEAD meanwhile;
        the caller re-reads HEAD, rebuilds its entries on the new latest and
        calls again.
        """
        snap = Snapshot(head.volume, self.layout.owner, head.seq + 1, head.snapshot, time.time(),
                        writer_id(), entries, message)
        snapshot_id = await self.put_snapshot(head.volume, snap)
        return await self.advance(head, snapshot_id, head.seq + 1)

    async def advance(self, head: Head, snapshot_id: str, seq: int) -> Head:
        """Point HEAD at ``snapshot_id`` if nobody moved it since ``head`` was read."""
        etag = await self.store.put(self.layout.head(head.volume),
                                    encode_head(head.volume, snapshot_id, seq, head.created),
                                    if_match=head.etag)
        return Head(head.volume, snapshot_id, seq, etag, head.created, time.time())

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

    async def history(self, volume: str, limit: int | None = None) -> list[tuple[str, Snapshot]]:
        """Snapshots from newest to oldest, following parent links.

        The walk ends at the first snapshot without a parent or whose parent
        is gone (pruned: see prune.py; ``syncd volume check`` tells a pruned
        end of history from a lost snapshot).
        """
        head = await self.head(volume)
        out: list[tuple[str, Snapshot]] = []
        current = head.snapshot
        while current is not None and (limit is None or len(out) < limit):
            try:
                snap = await self.snapshot(volume, current)
            except SnapshotNotFound:
                if not out:
                    raise
                break
            out.append((current, snap))
            current = snap.parent
        return out
