"""Assertions shared by the reliability tests: is a volume's HEAD whole, is a tree what we expect."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from syncd.config import Config
from syncd.engine.wiring import Engine
from syncd.format.chunking import Chunker, content_id, verify
from syncd.format.compress import decompress
from syncd.format.manifest import ChunkRef, Snapshot
from syncd.local.scan import TMP_PREFIX


async def check_head_complete(engine: Engine, volume: str, verified: set[str] | None = None) -> Snapshot | None:
    """HEAD names a snapshot every chunk of which is in the store and verifies (read past the cache).

    ``verified`` carries the keys already found good between calls: stored
    objects are content-addressed and only ever rewritten with their own bytes.
    """
    verified = set() if verified is None else verified
    _, snap = await engine.repo.latest(volume)
    if snap is None:
        return None
    packs: dict[str, list[ChunkRef]] = defaultdict(list)
    for entry in snap.entries.values():
        for ref in entry.chunks:
            key = engine.layout.chunk(volume, ref.id) if ref.pack is None else engine.layout.pack(volume, ref.pack)
            if key in verified:
                continue
            if ref.pack is None:
                data = (await engine.store.get(key)).data
                assert verify(ref.id, data), f"chunk {ref.id} of {entry.path} is damaged: {len(data)} of {ref.size} bytes"
                verified.add(key)
            else:
                packs[ref.pack].append(ref)
    for pack, refs in packs.items():
        key = engine.layout.pack(volume, pack)
        data = (await engine.store.get(key)).data
        for ref in refs:
            stored = data[ref.offset:ref.end]
            plain = decompress(stored, ref.size, ref.id) if ref.stored else stored
            assert verify(ref.id, plain), f"chunk {ref.id} in pack {pack} is damaged"
        verified.add(key)
    return snap


def snapshot_ids(snap: Snapshot | None) -> dict[str, list[str]]:
    """path -> chunk ids of every file in ``snap``."""
    if snap is None:
        return {}
    return {p: [c.id for c in e.chunks] for p, e in snap.entries.items() if e.kind == "file"}


def chunk_bytes(data: bytes, config: Config) -> list[bytes]:
    """The chunks a commit with ``config`` cuts ``data`` into (by content), in file order."""
    chunker = Chunker(config.chunk_size, config.pack_threshold)
    lengths = [len(data)] if chunker.whole(len(data)) else chunker.cut(memoryview(data), eof=True)
    out, at = [], 0
    for n in lengths:
        if n:
            out.append(data[at:at + n])
        at += n
    return out


def local_ids(root: Path, config: Config) -> dict[str, list[str]]:
    """path -> chunk ids of every regular file under ``root``, as a commit would cut it (by content)."""
    out: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.startswith(TMP_PREFIX):
            out[path.relative_to(root).as_posix()] = [content_id(c) for c in chunk_bytes(path.read_bytes(), config)]
    return out


def tmp_files(root: Path) -> list[Path]:
    return list(root.rglob(TMP_PREFIX + "*"))
