"""One mount process: ``syncd mount VOLUME DIR`` and the agent's lazy mounts.

Start-up: reclaim a dead mount at DIR (spawn.py), refuse one still served,
open the engine, read HEAD and the snapshot's header (or the one ``--snapshot``
names, which is always read-only; directories are listed as the kernel asks,
listing.py), start with an empty upper layer in the mount's
work directory, then ``pyfuse3.init`` and serve until SIGTERM/SIGINT or a
``stop`` on the control socket. When the agent serves tasks of other uids
(``SYNCD_ALLOW_UIDS``/``SYNCD_ALLOW_GROUP``) the mount is made ``allow_other``
(else the kernel answers EACCES to every uid but the mounting one) with
``default_permissions`` (the kernel checks the modes), and every file shows as
the tasks' (``Config.file_owner``), so what they create is theirs.

Write-back: every ``poll`` seconds a loop checks whether the namespace changed
since the last commit; it commits once it has been quiet for ``debounce``
seconds or dirty for ``max_delay`` (the agent's eager write-back rule). On
stop it commits what is left, then unmounts; exit status 1 if that final
commit failed. Uncommitted writes are never deleted (aside.py): the loop
keeps a recovery note of the written files' paths beside the upper
directory; a final commit that fails sets them aside by path, and a mount
that finds an upper directory of an earlier process (killed, crashed) sets it
aside before it starts, whatever became of the volume meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import pyfuse3.asyncio

from syncd.config import Config, parse_size
from syncd.engine.wiring import open_engine
from syncd.errors import ConfigError, LocalIOError, SyncdError
from syncd.limits import ByteBudget
from syncd.mount import aside, control
from syncd.mount.data import Data
from syncd.mount.fs import MountOps
from syncd.mount.listing import TreeListing
from syncd.mount.publish import Publisher
from syncd.mount.spawn import config_from_json, control_path, mounted_at, reclaim, work_dir
from syncd.mount.tree import Tree

log = logging.getLogger(__name__)
READAHEAD_BYTES = 16 << 20  # kernel readahead window: up to 16 one-MiB FUSE requests ahead of a reader


@dataclass
class MountOptions:
    volume: str
    mountpoint: Path
    read_only: bool = False
    snapshot: str | None = None
    control: Path | None = None
    upper_limit: int | None = None
    poll: float = 0.2
    debounce: float = 1.0
    max_delay: float = 10.0
    timeout: float = 1.0


async def serve(config: Config, opts: MountOptions) -> int:
    mountpoint = opts.mountpoint.absolute()
    await asyncio.to_thread(reclaim, mountpoint)
    if await asyncio.to_thread(mounted_at, mountpoint):
        raise LocalIOError(f"{mountpoint} is already a mount point")
    await asyncio.to_thread(mountpoint.mkdir, parents=True, exist_ok=True)
    work = work_dir(config, opts.volume, mountpoint)
    upper = work / "upper"
    await asyncio.to_thread(_set_aside, work, opts.volume, "an earlier mount process of it stopped without "
                            "committing them (killed, crashed, or its last commit failed)")
    await asyncio.to_thread(_fresh_dir, upper)
    async with open_engine(config) as engine:
        head = await engine.repo.head(opts.volume)
        read_only = opts.read_only or opts.snapshot is not None
        snap_id = opts.snapshot or head.snapshot
        listing = await TreeListing.open(engine.repo, opts.volume, snap_id)   # the header only
        tree = Tree(listing)
        memory = max(config.mount_memory, config.chunk_size * 4)
        data = Data(engine.fetcher, opts.volume, upper, memory=memory, unit=readahead_unit(config, memory),
                    limit=opts.upper_limit, max_fds=config.mount_open_files)
        # commits get their own budget: the reader's chunks are bounded by SYNCD_MOUNT_MEMORY
        engine.budget = ByteBudget(engine.budget.limit)
        publisher = Publisher(engine, opts.volume, tree, data, head)
        noter = Noter(work, tree, data, publisher, opts.volume)
        owner = config.file_owner()
        ops = MountOps(tree, data, publisher, read_only, opts.timeout, owner=owner)
        tree.keep_fresh = not read_only          # the base of commits a read-only mount never makes
        stop = asyncio.Event()

        async def handle(request: dict[str, Any]) -> dict[str, Any]:
            op = request.get("op")
            if op == "commit":
                if read_only:
                    raise ConfigError("this mount is read-only")
                result = await publisher.commit(str(request.get("message", "")))
                return {**status(), "changed": result.changed, "uploaded_bytes": result.uploaded_bytes}
            if op == "reload":
                if opts.snapshot is None:
                    await ops.reload()
                return status()
            if op == "stop":
                stop.set()
                return status()
            if op == "status":
                return status()
            raise ConfigError(f"unknown control op {op!r}")

        def status() -> dict[str, Any]:
            counter = engine.counter
            return {"volume": opts.volume, "path": str(mountpoint), "pid": os.getpid(),
                    "snapshot": publisher.head.snapshot if opts.snapshot is None else opts.snapshot,
                    "seq": publisher.head.seq, "commits": publisher.commits, "pending": publisher.dirty,
                    "last_error": publisher.last_error, "read_only": read_only,
                    "last_commit_at": publisher.last_commit_at,
                    "write_back_lag": None if publisher.dirty_since is None or not publisher.dirty
                    else max(0.0, time.monotonic() - publisher.dirty_since),
                    "upper_bytes": data.used, "read_errors": data.errors,
                    "upper_files_open": data.open_fds, "upper_opens": data.fd_opens,
                    "changes": tree.changes, "noted_changes": noter.noted[0],
                    "reads": {"requests": data.read_requests, "bytes": data.read_bytes,
                              "loads": data.lower.runs, "loading": data.lower.loading,
                              "inflight_bytes": data.lower.inflight,
                              "cache_skipped": data.lower.cache_skipped},
                    "store": {"calls": dict(counter.calls), "keys": dict(counter.keys),
                              "bytes_in": counter.bytes_in},
                    "bytes_by_source": dict(engine.fetcher.bytes_by_source),
                    "tree_reads": engine.repo.trees.reads,
                    "dirs_listed": getattr(tree.listing, "dirs_listed", 0)}

        pyfuse3.asyncio.enable()
        pyfuse3.asyncio.notify_closing = _notify_closing   # type: ignore[assignment]
        options = set(pyfuse3.default_options) | {f"fsname=syncd:{opts.volume}", "subtype=syncd"}
        if read_only:
            options.add("ro")
        if owner is not None:   # tasks of other uids (SYNCD_ALLOW_*): let them in, the kernel checks modes
            options |= {"allow_other", "default_permissions"}
        pyfuse3.init(ops, str(mountpoint), options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        fuse = asyncio.ensure_future(pyfuse3.main())
        widen = asyncio.ensure_future(asyncio.to_thread(_widen_readahead, mountpoint))
        writer = asyncio.ensure_future(_write_back(publisher, tree, opts, noter)) if not read_only else None
        orphan = asyncio.ensure_future(_parent_watch(stop))
        stopper = asyncio.ensure_future(stop.wait())
        server: asyncio.AbstractServer | None = None
        code = 0
        try:
            server = await control.serve(opts.control or control_path(work), handle)
            await asyncio.wait([fuse, stopper], return_when=asyncio.FIRST_COMPLETED)
            if fuse.done() and fuse.exception() is not None:
                log.error("the FUSE loop failed: %s", fuse.exception())
                code = 1
        finally:
            for task in (writer, stopper, orphan, widen):
                if task is not None:
                    task.cancel()
            if not read_only and publisher.dirty:
                try:
                    await publisher.commit("mount: flush on stop")
                except SyncdError as exc:
                    log.error("final commit of %s failed: %s; its uncommitted writes are set aside", opts.volume, exc)
                    code = 1
            if server is not None:
                server.close()
            if not fuse.done():
                pyfuse3.terminate()
                with contextlib.suppress(BaseException):
                    await fuse
            await data.close()
            try:    # before unmounting: a mount waiting for this mount point finds the upper layer settled
                final = aside.note(tree, data, opts.volume, publisher.head.snapshot, publisher.started_ns)
                final["final"] = True      # nothing writes any more: what it says clean is exactly so
                await asyncio.to_thread(aside.save, work, final)
                await asyncio.to_thread(_set_aside, work, opts.volume, "they were not in a commit when it stopped")
            finally:
                pyfuse3.close(unmount=True)
        return code


def _notify_closing(fd: Any) -> None:
    """pyfuse3's asyncio shim, minus a race: at ``terminate`` it fails every reader waiting
    on the FUSE fd, but a waiter whose fd just became readable is already done and
    ``set_exception`` raised InvalidStateError, so the stop exited 1 and the other waiters
    were never told (seen under load in tests/test_mount.py). Done waiters are skipped."""
    for future in list(pyfuse3.asyncio._read_futures.get(fd, ())):
        if not future.done():
            future.set_exception(pyfuse3.asyncio.ClosedResourceError())


class Noter:
    """Keeps aside.py's recovery note current: when the namespace or the commits moved, at most
    every ``aside.NOTE_EVERY`` seconds and at most a tenth of the time on building it."""
    def __init__(self, work: Path, tree: Tree, data: Data, publisher: Publisher, volume: str) -> None:
        self.work, self.tree, self.data, self.publisher, self.volume = work, tree, data, publisher, volume
        self.noted: tuple[int, int] = (tree.changes, 0)   # (changes, commits) the saved note shows
        self.due = 0.0

    async def tick(self) -> None:
        seen = (self.tree.changes, self.publisher.commits)
        now = time.monotonic()
        if seen == self.noted or now < self.due:
            return
        doc = aside.note(self.tree, self.data, self.volume, self.publisher.head.snapshot,
                         self.publisher.started_ns)
        took = time.monotonic() - now
        try:
            await asyncio.to_thread(aside.save, self.work, doc)
        except OSError as exc:
            log.warning("cannot save the recovery note of %s: %s", self.volume, exc)
        else:
            self.noted = seen
        self.due = now + max(aside.NOTE_EVERY, 10 * took)


async def _write_back(publisher: Publisher, tree: Tree, opts: MountOptions, noter: Noter) -> None:
    seen, quiet_since, dirty_since = tree.changes, time.monotonic(), None
    while True:
        await asyncio.sleep(opts.poll)
        try:
            await noter.tick()
        except Exception:          # the note is a safety net: its failure must not stop write-back
            log.exception("recovery note of %s", opts.volume)
        now = time.monotonic()
        if not publisher.dirty:
            dirty_since = publisher.dirty_since = None
            continue
        if tree.changes != seen:
            seen, quiet_since = tree.changes, now
        dirty_since = publisher.dirty_since = dirty_since or now
        if now - quiet_since >= opts.debounce or now - dirty_since >= opts.max_delay:
            try:
                await publisher.commit("write-back")
                publisher.last_error = None
                dirty_since = publisher.dirty_since = None
            except SyncdError as exc:
                publisher.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("write-back of %s: %s", opts.volume, exc)


async def _parent_watch(stop: asyncio.Event) -> None:
    """A mount spawned by the agent (``SYNCD_MOUNT_PARENT``) stops -- commits and
    unmounts -- when the agent is gone, even after ``kill -9`` of the agent."""
    parent = os.environ.get("SYNCD_MOUNT_PARENT")
    if not parent:
        return
    while True:
        await asyncio.sleep(0.5)
        if os.getppid() != int(parent):
            break
    log.warning("the agent (pid %s) is gone; committing and unmounting", parent)
    stop.set()


def _widen_readahead(mountpoint: Path) -> None:
    """Raise the kernel's readahead window for this mount (its bdi) from the 128 KiB that
    libfuse negotiates to READAHEAD_BYTES. Requests are already as large as FUSE allows
    (libfuse 3 asks for ``max_pages`` 256: 1 MiB reads and writes, the kernel's limit,
    ``/proc/sys/fs/fuse/max_pages_limit``; ``max_read`` is unlimited); the wider window lets
    the kernel have several of them in flight ahead of a sequential reader, instead of one.
    Best effort: needs write access to /sys (root).
    """
    target = os.path.abspath(mountpoint)
    try:
        os.stat(target)   # answered once the kernel's INIT is done, which would reset the window
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            device = next((p[2] for p in (line.split() for line in f) if len(p) > 4 and p[4] == target), None)
        if device is not None:
            Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(f"{READAHEAD_BYTES // 1024}\n")
    except OSError as exc:
        log.debug("cannot widen readahead of %s: %s", mountpoint, exc)


def readahead_unit(config: Config, budget: int) -> int:
    """Bytes one readahead GET reads at most: a pack run (``SYNCD_LARGE_PACK_SIZE``), but small
    enough that four runs fit the byte budget, so several are in flight; never below a chunk."""
    return max(config.chunk_size, min(config.large_pack_size or config.chunk_size, budget // 4))


def _set_aside(work: Path, volume: str, why: str) -> None:
    """aside.py's set-aside of an upper directory, said loudly; an error keeps the directory."""
    try:
        kept = aside.set_aside(work, volume)
    except OSError as exc:
        log.error("cannot set aside the uncommitted writes of %s in %s: %s", volume, work / "upper", exc)
        raise LocalIOError(f"cannot set aside the uncommitted writes of {volume} in {work / 'upper'} "
                           f"(nothing was deleted): {exc}") from exc
    if kept is None:
        return
    where, paths = kept
    shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
    log.warning("volume %s: %d uncommitted path(s) were never committed because %s: %s. They are kept in %s "
                "(ASIDE.json there lists them); commit them to a volume with 'syncd put VOLUME %s/PATH PATH'.",
                volume, len(paths), why, shown, where, where)
    print(f"syncd mount: {volume}: {len(paths)} uncommitted path(s) set aside in {where}", file=sys.stderr)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)


GC_YOUNG = 50_000          # allocations between young collections (CPython's default: 700)


def run(config: Config, opts: MountOptions) -> int:
    _long_lived_heap()
    return asyncio.run(serve(config, opts))


def _long_lived_heap() -> None:
    """Collect cycles as a process that holds a large, long-lived heap should.

    A mount keeps an object per entry it has listed (its inode) and the
    decoded trees, and listing a directory makes them by the thousand. With
    CPython's default thresholds (a young collection every 700 allocations) the
    full collections that follow re-scan that whole heap again and again: in a
    cold ``find`` over 100,000 entries they were half of the process's CPU. The
    young generation is raised to ``GC_YOUNG`` allocations (full collections
    then come every ~5 million, and still only once the heap grew by a
    quarter), and what start-up made (modules, classes) is frozen out of every
    collection. Cycles are still collected: the inode table's parent links
    are the only ones it makes, and a node that leaves the tree is freed once
    the kernel forgets it.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, 10)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncd mount", description="Mount a volume lazily (FUSE).")
    p.add_argument("volume")
    p.add_argument("dir", type=Path)
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--snapshot", default=None)
    p.add_argument("--control", type=Path, default=None, help="control socket (default: in the state dir)")
    p.add_argument("--upper-limit", default=os.environ.get("SYNCD_MOUNT_UPPER_LIMIT"),
                   help="bytes the upper layer may hold (ENOSPC beyond)")
    p.add_argument("--debounce", type=float, default=1.0)
    p.add_argument("--max-delay", type=float, default=10.0)
    return p


def options_from(args: argparse.Namespace) -> MountOptions:
    return MountOptions(args.volume, args.dir, args.read_only, args.snapshot, args.control,
                        parse_size(args.upper_limit) if args.upper_limit else None,
                        debounce=args.debounce, max_delay=args.max_delay)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raw = os.environ.get("SYNCD_MOUNT_CONFIG")
    config = config_from_json(raw) if raw else Config.from_env()
    try:
        return run(config, options_from(args))
    except SyncdError as exc:
        print(f"syncd mount: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
