"""Mount options: read-only views and sub-paths of a volume.

``volume(name, sub_path="a/b")`` mounts the volume as usual (one shared,
writable, synced copy per worker) and hands the task ``<root>/<name>/a/b``,
created if missing.

``volume(name, read_only=True)`` must never commit, whoever writes: so it is
not the shared copy at all, but a view of one snapshot, made with the engine's
``get`` (the same verified transfer as a hydrate) into
``<root>/.readonly/<name>/<snapshot>[-<sub-path hash>]`` -- a name no volume
can have, since names start with a letter or digit. The view is built in a
temp directory and renamed into place, then every file is made 0444 and every
directory 0555, so writes by the task fail with ``PermissionError`` (EACCES).
Root ignores modes, so the view is then bind-mounted read-only onto itself
(local/robind.py): a write as root fails with EROFS, and since views of one
snapshot are shared by every read-only task on the worker, no task can change
what another reads. Where the agent may not mount (no CAP_SYS_ADMIN) the modes
alone remain, logged once; nothing reads a view back, so nothing is committed
either way. A mount after another worker committed makes a view of the new
snapshot, and views of older snapshots of the volume beyond the newest
``KEEP`` are unmounted and removed; the agent unmounts its views when it stops
(the directories stay, and the next agent seals them again on first use).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from syncd.engine.edit import normalize_path
from syncd.engine.transfer import get
from syncd.engine.wiring import Engine
from syncd.errors import ConfigError, ManifestError, SnapshotNotFound
from syncd.limits import SingleFlight
from syncd.local import dirfd, robind
from syncd.local import fs as localfs

log = logging.getLogger(__name__)

KEEP = 2   # views kept per volume (a task may still be reading the previous one)
SHOWN = 256  # views remembered for the status page (sub-paths are the tasks' to choose: bounded)


def checked_sub_path(sub_path: str) -> str:
    try:
        return normalize_path(sub_path)
    except ManifestError as exc:
        raise ConfigError(f"sub_path {sub_path!r} must be a relative path inside the volume") from exc


def _freeze(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & 0o555)
        os.chmod(dirpath, 0o555)


def _thaw_and_remove(path: Path) -> None:
    robind.unseal(path)
    for dirpath, _, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _clear_for_view(top: Path, target: Path) -> bool:
    """Make ``top`` and ``target``'s parent real directories, removing a symlink or file a task put
    there (never followed); True if ``target`` already is a real directory (a view made earlier)."""
    for path in (top, target.parent):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            path.mkdir(mode=0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            log.warning("removing %s: a %s where the agent keeps read-only views", path,
                        "symlink" if stat.S_ISLNK(st.st_mode) else "file")
            os.unlink(path)
            path.mkdir(mode=0o755)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return True
    log.warning("removing %s: a %s where a read-only view goes", target,
                "symlink" if stat.S_ISLNK(st.st_mode) else "file")
    os.unlink(target)
    return False


def _prune(parent: Path, keep: Path) -> None:
    views = sorted((p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [v for v in views if v != keep][KEEP - 1:]:
        _thaw_and_remove(old)


class Views:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.root = engine.config.root / ".readonly"
        self._flights: SingleFlight[Path, Path] = SingleFlight()
        self._unsealable = False
        self._made: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()  # (name, sub) -> last view

    async def _seal(self, target: Path) -> None:
        if self._unsealable:
            return
        if not await asyncio.to_thread(robind.seal, target):
            self._unsealable = True
            log.warning("cannot bind-mount read-only views (no CAP_SYS_ADMIN?): a task running as root "
                        "can write to its view (nothing is committed from it)")

    def close(self) -> None:
        """Unmount every view's read-only bind (the directories stay)."""
        if not self.root.is_dir():
            return
        for volume in self.root.iterdir():
            if volume.is_dir() and not volume.is_symlink():
                for view in volume.iterdir():
                    robind.unseal(view)

    def made(self) -> list[dict[str, Any]]:
        """The latest view handed out per volume and sub-path (the newest ``SHOWN``), for status."""
        return list(self._made.values())

    async def read_only(self, name: str, sub_path: str = "") -> dict[str, object]:
        """A read-only view of the latest snapshot of ``name`` (at ``sub_path``); VolumeNotFound if missing."""
        sub = checked_sub_path(sub_path)
        head = await self.engine.repo.head(name)
        label = (head.snapshot or "empty") + (f"-{hashlib.sha1(sub.encode()).hexdigest()[:10]}" if sub else "")
        target = self.root / name / label
        path = await self._flights.do(target, lambda: self._make(name, head.snapshot, sub, target))
        view: dict[str, object] = {"name": name, "path": str(path), "snapshot": head.snapshot, "seq": head.seq,
                "read_only": True, "sub_path": sub}
        self._made.pop((name, sub), None)
        self._made[(name, sub)] = {**view, "mode": "read-only", "made_at": time.time()}
        while len(self._made) > SHOWN:
            self._made.popitem(last=False)
        return view

    async def _make(self, name: str, snapshot: str | None, sub: str, target: Path) -> Path:
        if await asyncio.to_thread(_clear_for_view, self.root, target):
            await self._seal(target)      # made by an earlier agent, unmounted when it stopped
            return target
        tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
        await asyncio.to_thread(_thaw_and_remove, tmp)
        await asyncio.to_thread(tmp.mkdir, parents=True)
        try:
            if snapshot is not None:
                try:
                    await get(self.engine, name, sub or "/", tmp, snapshot)
                except SnapshotNotFound:
                    if not sub:
                        raise
                    # an empty view of a sub-path the volume does not have yet
            await asyncio.to_thread(_freeze, tmp)
            await asyncio.to_thread(os.rename, tmp, target)
        except BaseException:
            await asyncio.to_thread(_thaw_and_remove, tmp)
            raise
        await self._seal(target)
        await asyncio.to_thread(_prune, target.parent, target)
        return target


def writable_sub_path(mount_path: Path, sub_path: str, owner: localfs.Owner = None,
                      mode: int = 0o755) -> Path:
    """``mount_path/sub_path``, created if missing (a plain directory of the synced copy).

    The task shares the mount directory: a component may be a symlink it planted
    (``models -> /etc``). So every component is reached from a descriptor with
    ``O_NOFOLLOW | O_DIRECTORY`` and created relative to its parent (dirfd.py): a link
    is refused (ConfigError), never followed. What is created is given to ``owner``."""
    sub = checked_sub_path(sub_path)
    if not sub:
        return mount_path
    fd = dirfd.open_root(mount_path)
    try:
        for part in sub.split("/"):
            try:
                child, created = dirfd.make_dir_at(fd, part, mode)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ConfigError(f"sub_path {sub_path!r}: {part!r} in {mount_path} is a symlink or not a "
                                      "directory; the agent does not follow it") from exc
                raise localfs.local_error(mount_path / sub, exc, "create") from exc
            os.close(fd)
            fd = child
            if created:
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return mount_path / sub
