"""Helpers to build and compare directory trees in tests."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

from syncd.engine.trees import Builder, TreeStore, upload_packs
from syncd.format.chunking import content_id
from syncd.format.layout import Layout
from syncd.format.manifest import ChunkRef, Entry, TreeRef
from syncd.store.base import MemoryStore


def make_tree(root: Path, *, small_files: int = 50, large_size: int = 3 * 1024 * 1024 + 17,
              seed: int = 0) -> None:
    """A tree of every kind of entry. ``models/big.bin`` is ``large_size`` bytes drawn from
    ``seed``: the same bytes every run, so the same content-defined cut points, and the counts a
    test derives from them (chunks, packs, loose chunks, GETs) never depend on luck."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir()
    (root / "models" / "big.bin").write_bytes(random.Random(seed).randbytes(large_size))
    for i in range(small_files):
        d = root / "data" / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    (root / "empty.txt").write_bytes(b"")
    (root / "empty-dir" / "nested-empty").mkdir(parents=True)
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (root / "link-to-big").symlink_to("models/big.bin")
    (root / "data" / "up").symlink_to("../models")


async def stored_wide_volume(store: MemoryStore, layout: Layout, volume: str = "v", dirs: int = 30,
                             files: int = 40) -> tuple[TreeRef, list[TreeRef]]:
    """A committed tree of ``dirs`` directories d<NN> of ``files`` one-byte files each, its packs in
    ``store``: the root's ref and the subdirectories' refs in pack order (one coalesced read)."""
    entries: dict[str, Entry] = {}
    for a in range(dirs):
        entries[f"d{a:02d}"] = Entry(f"d{a:02d}", "dir", 0o755, 0)
        for c in range(files):
            p = f"d{a:02d}/f{c}"
            entries[p] = Entry(p, "file", 0o644, 1, 1, (ChunkRef(content_id(p.encode()), 1),))
    builder = Builder(TreeStore(store, layout), volume, None, {})
    await builder.apply(entries)
    built = await builder.finish()
    await upload_packs(store, layout, volume, built)
    items = await TreeStore(store, layout).get(volume, built.root)
    return built.root, sorted((i.tree for i in items if i.tree is not None), key=lambda r: r.offset)


def make_wide(root: Path, top: int, mid: int, leaf: int) -> None:
    """``top`` x ``mid`` directories of ``leaf`` small files each (a<i>/b<j>/f<k>.txt holds "i/j/k")."""
    for a in range(top):
        for b in range(mid):
            d = root / f"a{a}" / f"b{b}"
            d.mkdir(parents=True)
            for c in range(leaf):
                (d / f"f{c}.txt").write_bytes(f"{a}/{b}/{c}\n".encode())


def snapshot_tree(root: Path) -> dict[str, tuple[str, int, bytes | str | None]]:
    """path -> (kind, permission bits, content or link target), excluding nothing."""
    out: dict[str, tuple[str, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", 0, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), full.read_bytes())
    return out


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.lstat().st_mtime_ns
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
