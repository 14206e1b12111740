"""What syncd knows about a local directory, kept outside it.

For each (store, owner, volume, directory) the index records the snapshot the
directory was last synced with and, per path, the entry it was synced to plus
the stat fingerprint (inode, size, mtime, ctime) the file had right after. A
commit re-reads only files whose fingerprint changed, and recognises a rename
by inode, size and mtime; a hydrate knows which local files it owns (and may
replace) and which are the user's own or locally modified.

Indexes live in ``SYNCD_STATE_DIR/index/<key>.json`` (never inside the volume
directory), written to a temporary file and renamed. A per-directory
``fcntl`` lock serialises hydrates and commits of one directory across
processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from syncd.errors import LocalIOError, ManifestError
from syncd.format.chunking import content_id
from syncd.format.manifest import Entry, entry_from_json, entry_to_json
from syncd.local.scan import LocalFile

INDEX_FORMAT = 1
Fingerprint = tuple[int, int, int, int]


@dataclass
class Tracked:
    entry: Entry
    fingerprint: Fingerprint | None     # None for dirs and symlinks


@dataclass
class LocalIndex:
    snapshot: str | None = None
    seq: int = 0
    files: dict[str, Tracked] = field(default_factory=dict)

    def entries(self) -> dict[str, Entry]:
        return {p: t.entry for p, t in self.files.items()}


def index_key(scope: str, volume: str, directory: Path) -> str:
    return content_id(f"{scope}\x00{volume}\x00{directory.resolve()}".encode())


class IndexStore:
    def __init__(self, state_dir: Path, scope: str) -> None:
        self.dir = state_dir / "index"
        self.scope = scope

    def path(self, volume: str, directory: Path) -> Path:
        return self.dir / f"{index_key(self.scope, volume, directory)}.json"

    def _load(self, path: Path) -> LocalIndex:
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("format") != INDEX_FORMAT:
                return LocalIndex()
            files = {}
            for p, raw in doc["files"].items():
                fp = raw.pop("fp", None)
                files[p] = Tracked(entry_from_json(raw), tuple(fp) if fp else None)
            return LocalIndex(doc.get("snapshot"), int(doc.get("seq", 0)), files)
        except FileNotFoundError:
            return LocalIndex()
        except (ValueError, KeyError, TypeError, AttributeError, ManifestError):
            return LocalIndex()  # a damaged index only costs re-reading files

    def _save(self, path: Path, index: LocalIndex) -> None:
        files = {}
        for p, t in index.files.items():
            raw = entry_to_json(t.entry)
            if t.fingerprint is not None:
                raw["fp"] = list(t.fingerprint)
            files[p] = raw
        doc = {"format": INDEX_FORMAT, "snapshot": index.snapshot, "seq": index.seq, "files": files}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise LocalIOError(f"cannot save the sync index {path}: {exc.strerror}") from exc

    async def load(self, volume: str, directory: Path) -> LocalIndex:
        return await asyncio.to_thread(self._load, self.path(volume, directory))

    async def save(self, volume: str, directory: Path, index: LocalIndex) -> None:
        await asyncio.to_thread(self._save, self.path(volume, directory), index)

    async def forget(self, volume: str, directory: Path) -> None:
        await asyncio.to_thread(self.path(volume, directory).unlink, True)

    @contextlib.asynccontextmanager
    async def locked(self, volume: str, directory: Path) -> AsyncIterator[None]:
        """Hold the directory's lock (exclusive across processes) for the block."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.path(volume, directory).with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:  # poll, so a cancelled waiter never leaves a thread holding the lock
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

def unchanged(tracked: Tracked, local: LocalFile) -> bool:
    """Is the local path still exactly what syncd last left there?"""
    entry = tracked.entry
    if local.kind != entry.kind:
        return False
    if entry.kind == "file":
        return tracked.fingerprint is not None and local.fingerprint == tracked.fingerprint
    if entry.kind == "symlink":
        return local.target == entry.target
    return True

