"""``put`` and ``get``: move one file or tree between a local path and a volume path.

Neither needs a local copy of the whole volume.

put stages the local file or tree at its volume path inside an empty
directory (hard links where the filesystem allows, else copies) and commits
that directory with a fresh index. The diff from an empty index is "add these
paths" and nothing else, so the commit merges the new paths into the latest
snapshot -- replacing what was there at those paths -- and leaves every other
path alone, with the usual chunk dedup and conditional HEAD advance.

get selects the entries at and under a volume path from a snapshot and writes
them with hydrate's transfer machinery (packs fetched with one ranged GET,
large files in parallel chunks, temp file plus rename), re-rooted at the
local destination. No local index is kept: the result is a plain copy. What
already exists at the selected paths is looked at first (lstat of those paths
only), planned as a hydrate with an empty index would be: equal files are kept,
a differing one stops the get before any byte is written unless it overwrites.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import posixpath
import shutil
import stat
import tempfile
from pathlib import Path

from syncd.engine.commit import CommitResult, commit
from syncd.engine.hydrate import HydrateResult, _Run, settle
from syncd.engine.hydrateplan import plan_hydrate
from syncd.engine.progress import NoProgress, Progress
from syncd.engine.restore import normalize_path
from syncd.engine.wiring import Engine
from syncd.errors import LocalIOError, SnapshotNotFound
from syncd.limits import in_thread
from syncd.local import dirfd
from syncd.local.index import LocalIndex
from syncd.local.scan import LocalFile, from_stat


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _stage(local: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if local.is_dir() and not local.is_symlink():
            shutil.copytree(local, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(local), str(target))
    except FileNotFoundError as exc:
        raise LocalIOError(f"{local} does not exist") from exc
    except OSError as exc:
        raise LocalIOError(f"cannot read {local}: {exc.strerror or exc}") from exc


async def put(engine: Engine, volume: str, local: Path, dest: str | None = None,
              progress: Progress | None = None) -> CommitResult:
    """Add ``local`` (a file or a tree) to ``volume`` at ``dest`` (default: its own name)."""
    path = normalize_path(dest) or normalize_path((await asyncio.to_thread(local.resolve)).name)
    staging_root = engine.config.state_dir / "staging"
    await asyncio.to_thread(staging_root.mkdir, parents=True, exist_ok=True)
    stage = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=staging_root))
    try:
        await asyncio.to_thread(_stage, local, stage / path)
        return await commit(engine, volume, stage, message=f"put {path}", progress=progress)
    finally:
        await engine.index.forget(volume, stage)
        await asyncio.to_thread(shutil.rmtree, stage, True)


async def get(engine: Engine, volume: str, path: str, local: Path, snapshot_id: str | None = None,
              progress: Progress | None = None, overwrite: bool = False) -> HydrateResult:
    """Copy the file or tree at ``path`` (of the latest snapshot, or ``snapshot_id``) to ``local``.

    Like hydrate, it refuses (LocalConflict, before any byte is written) to replace a local
    file whose bytes differ from the volume's, unless ``overwrite``; equal files are kept."""
    root = normalize_path(path)
    head = await engine.repo.head(volume)
    sid = snapshot_id or head.snapshot
    snap = await engine.repo.snapshot(volume, sid) if sid else None
    entries = snap.entries if snap else {}
    top = entries.get(root) if root else None
    if root and top is None:
        raise SnapshotNotFound(f"volume {volume!r} has nothing at {root!r}"
                               + (f" in snapshot {sid}" if snapshot_id else ""))
    if top is not None and top.kind != "dir":
        if await asyncio.to_thread(local.is_dir):
            local = local / posixpath.basename(root)
        base, selected = local.parent, {local.name: dataclasses.replace(top, path=local.name)}
    else:
        prefix = root + "/" if root else ""
        base = local
        selected = {p[len(prefix):]: dataclasses.replace(e, path=p[len(prefix):])
                    for p, e in entries.items() if p.startswith(prefix)}
    await asyncio.to_thread(base.mkdir, parents=True, exist_ok=True)
    # what is already there at the selected paths (only those: the destination may be large)
    plan = plan_hydrate(selected, LocalIndex(), await in_thread(_present, base, list(selected)), overwrite)
    await settle(plan, base, volume, overwrite, "move them away, or get with --overwrite")
    result = HydrateResult(volume, sid, snap.seq if snap else 0, unchanged=len(plan.keep))
    await _Run(engine, volume, base, progress or NoProgress(), result).execute(plan)
    return result


def _present(base: Path, paths: list[str]) -> dict[str, LocalFile]:
    """lstat each of ``paths`` below ``base``, reached without following links (dirfd.py)."""
    found: dict[str, LocalFile] = {}
    for path in paths:
        try:
            fd, name = dirfd.open_parent_fd(base, path)
        except OSError:
            continue                       # a parent is missing (created later) or not a directory
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
        except OSError:
            continue
        finally:
            os.close(fd)
        found[path] = from_stat(st, target)
    return found

