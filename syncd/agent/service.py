"""The sidecar: one agent per worker keeps ``SYNCD_ROOT/<name>`` in sync with the bucket.

Tasks never call hydrate or commit themselves; they ask the agent (agentapi.py
serves this class over a Unix socket). The agent holds one engine for its whole
life and one ``Mount`` per mounted volume, shared by every task on the worker.

Mount. The first request for a volume creates it if missing (``If-None-Match``
on HEAD, so two workers cannot both create it), records it in the agent state
file and hydrates ``root/<name>``. Later requests only read HEAD and, if another
worker committed since, sync again. Mounts are single-flight per volume, so any
number of concurrent requests cause one hydrate.

Sync = commit local changes, then hydrate the latest snapshot. Committing
first means a reload never loses a local write and never conflicts with one.

Write-back. A watcher per mount (watch.py) learns of writes from inotify
(one full walk when it starts, then only events; polling by lstat walks is
the fallback) and compares the touched paths with the local index, which
records exactly what was last committed or hydrated there. Comparing with
the index, not with the previous look, means a write that lands while a
commit runs is still seen as pending afterwards. Once the tree stopped
changing for ``debounce`` seconds (or has been dirty for ``max_delay``) the
watcher commits, handing the commit the touched paths so that it lstat's
those instead of walking. Commits of one mount are serialised by its lock and
coalesced: a request that arrives while another full commit is still waiting
for the lock joins it, since that commit has not scanned yet and will include
the caller's writes (a hinted write-back commit is never joined: it looks only
at the paths its watcher knew of).

Durability. The state file (``SYNCD_STATE_DIR/agent/<owner>.json``, temp file
plus rename) lists the mounted volumes. On start the agent resumes each of
them: commit what was written before a crash (the index survives ``kill -9``,
so only changed files are read), then hydrate incrementally. SIGTERM stops the
API, cancels the watchers and commits every mount before exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from syncd.agent.metrics import AgentMetrics, MountRow, Snapshot
from syncd.agent.orphans import set_aside
from syncd.agent.views import Views
from syncd.data.gatewayclient import GatewaySource
from syncd.engine.commit import CommitResult, commit
from syncd.engine.hydrate import HydrateResult, hydrate
from syncd.engine.wiring import Engine
from syncd.errors import AgentUnavailable, LocalIOError, SyncdError, VolumeNotFound
from syncd.format.layout import validate_name
from syncd.limits import SingleFlight
from syncd.local.mountdir import GROUP_DIR, PRIVATE_DIR, prepare_mount
from syncd.local.watch import PollWatch, Watcher, WatchSettings, WatchUnavailable, open_watcher
from syncd.mount.spawn import LazyMount, LazyMounts, check_mode, default_mode

log = logging.getLogger(__name__)
STATE_FORMAT = 1


@dataclass
class Mount:
    name: str
    path: Path
    snapshot: str | None = None        # the snapshot the local copy is known to match
    seq: int = 0
    hydrates: int = 0
    commits: int = 0
    last_error: str | None = None
    last_commit_at: float | None = None    # wall-clock time of this agent's last commit that changed it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: asyncio.Future[CommitResult] | None = None
    watcher: asyncio.Task[None] | None = None
    watch: Watcher | None = None

    def lag(self) -> float | None:
        """Seconds the oldest write not committed yet has waited; None when clean."""
        since = self.watch.dirty_since if self.watch is not None and self.watch.pending else None
        return None if since is None else max(0.0, time.monotonic() - since)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "mode": "eager", "snapshot": self.snapshot,
                "seq": self.seq, "hydrates": self.hydrates, "commits": self.commits,
                "pending": bool(self.watch and self.watch.pending), "last_error": self.last_error,
                "last_commit_at": self.last_commit_at, "write_back_lag": self.lag(),
                "watch": self.watch.describe() if self.watch else None}


def _hint(mount: Mount) -> frozenset[str] | None:
    return mount.watch.hint() if mount.watch is not None else None


class Agent:
    def __init__(self, engine: Engine, watch: WatchSettings = WatchSettings()) -> None:
        self.engine = engine
        self.config = engine.config
        self.watch = watch
        # tasks of other uids (SYNCD_ALLOW_UIDS/_GROUP) get the mount directories and what hydrates write
        self.file_owner = self.config.file_owner()
        self.dir_mode = GROUP_DIR if self.config.allow_group is not None else PRIVATE_DIR
        self.mounts: dict[str, Mount] = {}
        self.closing = False
        self.resuming: set[str] = set()    # listed in the state file, not mounted yet
        self._flights: SingleFlight[str, Mount] = SingleFlight()
        self._state_path = self.config.state_dir / "agent" / f"{self.config.owner}.json"
        self.lazy = LazyMounts(self.config)   # mode "lazy": FUSE mount processes (syncd/mount)
        self.views = Views(engine)            # read-only snapshot views (views.py)
        self.started = time.time()
        self.status_url: str | None = None    # where --status-addr serves the status page (api.py)
        self.cache_usage = (0, 0)             # (bytes, entries), refreshed off the loop before it is shown
        self.metrics = AgentMetrics(engine.fetcher, self._metric_facts, self.started)

    # ---------------------------------------------------------------- mounts

    async def mount(self, name: str, create: bool = True) -> Mount:
        """Create-or-refer, then make the local copy current. Single-flight per volume."""
        validate_name(name)
        self._check_open()
        return await self._flights.do(name, lambda: self._mount(name, create))

    async def attach(self, name: str, create: bool = True, mode: str | None = None) -> Mount | LazyMount:
        """Mount in ``mode`` (default ``SYNCD_MOUNT_MODE``, else eager); a lazily mounted
        volume stays lazy (and is reloaded) whatever the request says."""
        validate_name(name)
        self._check_open()
        if self.lazy.get(name) is None and (check_mode(mode) if mode else default_mode()) == "eager":
            return await self.mount(name, create)
        if name in self.mounts:
            raise LocalIOError(f"volume {name!r} is mounted eagerly here; unmount it before mounting it lazily")
        if self.lazy.get(name) is None:
            await (self.engine.repo.create(name) if create else self.engine.repo.head(name))
        return await self._flights.do(f"lazy:{name}", lambda: self.lazy.mount(name))  # type: ignore[arg-type,return-value]

    def describe(self, name: str) -> dict[str, Any]:
        lazy = self.lazy.get(validate_name(name))
        return lazy.describe() if lazy is not None else self.mounted(name).describe()

    async def _mount(self, name: str, create: bool) -> Mount:
        mount = self.mounts.get(name)
        if mount is not None:
            try:
                head = await self.engine.repo.head(name)
            except VolumeNotFound:
                await self._forget(mount)       # deleted elsewhere; create-or-refer starts afresh
                if not create:
                    raise
            else:
                if head.snapshot != mount.snapshot:
                    await self._sync(mount)
                return mount
        if create:
            await self.engine.repo.create(name)
        else:
            try:
                await self.engine.repo.head(name)
            except VolumeNotFound:
                if name in self.resuming:    # deleted or renamed while the agent was down: inside this
                    await self._forget(Mount(name, self.config.root / name))   # flight, before any new mount
                raise
        mount = Mount(name, self.config.root / name)
        resuming = await self.engine.index.exists(name, mount.path)
        await asyncio.to_thread(prepare_mount, self.config.root, name, self.file_owner, self.dir_mode)
        await self._sync(mount, commit_first=resuming)
        self.mounts[name] = mount
        await self._save_state()
        mount.watcher = asyncio.create_task(self._watch(mount), name=f"watch-{name}")
        return mount

    async def _sync(self, mount: Mount, commit_first: bool = True) -> HydrateResult:
        """Commit what is pending, then hydrate; with the watcher's dirty paths as the only
        local changes when it knows them (no walk: cost follows the change, delta.py)."""
        if commit_first:
            await self.commit(mount, changed=_hint(mount))
        async with mount.lock:
            result = await hydrate(self.engine, mount.name, mount.path, changed=_hint(mount), owner=self.file_owner)
            log.info("hydrated %s to seq %d: %d file(s) written, %d deleted", mount.name, result.seq,
                     result.files_written, result.deleted)
            mount.hydrates += 1
            if result.snapshot is not None:
                mount.snapshot, mount.seq = result.snapshot, result.seq
            return result

    async def reload(self, name: str) -> dict[str, Any]:
        if self.lazy.get(validate_name(name)) is not None:
            return await self.lazy.reload(name)
        mount = await self._mounted(name)
        before = mount.commits
        hydrated = await self._sync(mount)
        return {"volume": name, "snapshot": mount.snapshot, "seq": mount.seq,
                "committed": mount.commits > before, "files_written": hydrated.files_written,
                "deleted": hydrated.deleted}

    async def unmount(self, name: str) -> dict[str, Any]:
        """Flush and stop syncing; the files stay, and a later mount is incremental."""
        if self.lazy.get(validate_name(name)) is not None:
            return await self.lazy.unmount(name)
        mount = self.mounted(name)
        await self._stop_watcher(mount)
        try:
            result = await self.commit(mount)
        except BaseException:
            mount.watcher = asyncio.create_task(self._watch(mount), name=f"watch-{name}")
            raise
        self.mounts.pop(name, None)
        await self._save_state()
        return {"volume": name, "snapshot": result.snapshot, "seq": result.seq}

    async def delete(self, name: str) -> dict[str, Any]:
        """Delete the volume from the bucket and drop the local copy."""
        validate_name(name)
        if self.lazy.get(name) is not None:
            await self.lazy.unmount(name)
        mount = self.mounts.get(name) or Mount(name, self.config.root / name)
        await self._stop_watcher(mount)
        removed = await self.engine.repo.delete(name)
        await self._forget(mount)
        return {"volume": name, "objects_removed": removed}

    async def _forget(self, mount: Mount) -> None:
        """The volume is gone from the bucket: drop the mount, its index and its local copy
        (so a new volume of the same name can never inherit the old one's files), but set
        aside whatever was never committed (orphans.py) instead of deleting it."""
        await self._stop_watcher(mount)
        if self.mounts.get(mount.name) is mount:
            del self.mounts[mount.name]
        async with mount.lock:   # aside, then forget the index, then the state file: a kill in between
            index = await self.engine.index.load(mount.name, mount.path)   # leaves it listed, so a restart
            kept = await asyncio.to_thread(set_aside, self.config.root, mount.name, index)   # does this again
            await self.engine.index.forget(mount.name, mount.path)
        await self._save_state()
        if kept is None:
            log.info("volume %s no longer exists; removed its local copy %s (everything in it was committed)",
                     mount.name, mount.path)
            return
        where, paths = kept
        shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
        log.warning("volume %s no longer exists (deleted or renamed elsewhere), but its local copy held "
                    "%d uncommitted path(s): %s. They are kept in %s; commit them to a volume with "
                    "'syncd put VOLUME %s/PATH PATH' or move them into a mount.",
                    mount.name, len(paths), shown, where, where)

    async def names(self) -> list[dict[str, Any]]:
        return [{"name": n, "mounted": n in self.mounts} for n in sorted(await self.engine.repo.names())]

    def mounted(self, name: str) -> Mount:
        """The mount of ``name``; VolumeNotFound if it is not mounted on this worker."""
        mount = self.mounts.get(validate_name(name))
        if mount is None:
            raise VolumeNotFound(f"volume {name!r} is not mounted on this worker")
        return mount

    async def _mounted(self, name: str) -> Mount:
        validate_name(name)
        mount = self.mounts.get(name)
        return mount if mount is not None else await self.mount(name)

    def _check_open(self) -> None:
        if self.closing:
            raise AgentUnavailable("the agent is shutting down")

    # ---------------------------------------------------------------- commits

    async def commit_volume(self, name: str, message: str = "") -> CommitResult | dict[str, Any]:
        if self.lazy.get(validate_name(name)) is not None:
            return await self.lazy.commit(name, message)
        return await self.commit(await self._mounted(name), message)

    async def commit(self, mount: Mount, message: str = "", changed: frozenset[str] | None = None) -> CommitResult:
        """Commit now; joins a full commit that is queued but has not scanned yet.

        ``changed``: the only paths that may differ from the index (the watcher's hint)."""
        if mount.queued is not None and not mount.queued.done():
            return await asyncio.shield(mount.queued)
        future = asyncio.ensure_future(self._commit_when_free(mount, message, changed))
        if changed is None:
            mount.queued = future
        return await asyncio.shield(future)

    async def _commit_when_free(self, mount: Mount, message: str, changed: frozenset[str] | None) -> CommitResult:
        async with mount.lock:
            if changed is None:
                mount.queued = None  # requests from now on may have writes this scan misses
            started = time.monotonic()
            try:
                result = await commit(self.engine, mount.name, mount.path, message=message, create=False,
                                      changed=changed)
            except SyncdError as exc:
                self.metrics.committed(time.monotonic() - started, ok=False)
                mount.last_error = f"{type(exc).__name__}: {exc}"
                raise
            self.metrics.committed(time.monotonic() - started, ok=True)
            mount.commits += 1
            mount.last_error = None
            if result.changed:
                mount.last_commit_at = time.time()
            if result.changed:
                log.info("committed %s as seq %d (%d path(s) changed, %d byte(s) uploaded)", mount.name,
                         result.seq, result.changed, result.uploaded_bytes)
            if result.changed and not result.merged:
                # merged: others' changes went into the snapshot but not into our directory,
                # so the copy is still behind and the next mount must hydrate; nothing changed:
                # the result names HEAD, which may hold others' changes we do not have either
                mount.snapshot, mount.seq = result.snapshot, result.seq
            return result

    # ---------------------------------------------------------------- write-back

    async def _watch(self, mount: Mount) -> None:
        watch = mount.watch = await open_watcher(self.engine.index, mount.name, mount.path, self.watch)
        try:
            while True:
                try:
                    changed = await watch.next_due(self.watch)
                    await self.commit(mount, "write-back", changed)
                    watch.committed()
                    continue
                except asyncio.CancelledError:
                    raise
                except WatchUnavailable as exc:
                    log.warning("write-back of %s: %s; polling instead", mount.name, exc)
                    watch.close()
                    watch = mount.watch = PollWatch(self.engine.index, mount.name, mount.path, self.watch.poll)
                    continue
                except VolumeNotFound:
                    mount.watcher = None            # this task ends here; _forget must not cancel it
                    try:
                        await self._forget(mount)
                    except SyncdError as exc:       # the copy stays in place, listed for the next start
                        log.error("volume %s no longer exists, and its local copy could not be set aside: %s",
                                  mount.name, exc)
                    return
                except SyncdError as exc:
                    mount.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("write-back of %s: %s", mount.name, exc)
                except Exception:
                    log.exception("write-back of %s failed", mount.name)
                await asyncio.sleep(max(self.watch.poll, self.watch.debounce))   # then try again
        finally:
            watch.close()

    async def _stop_watcher(self, mount: Mount) -> None:
        task, mount.watcher = mount.watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---------------------------------------------------------------- lifecycle

    async def resume(self) -> list[str]:
        """Mount every volume the state file lists; commits what a crash left pending."""
        names = await asyncio.to_thread(self._load_state)
        self.resuming.update(names)
        resumed = []
        for name in names:
            try:
                await self.mount(name, create=False)
                resumed.append(name)
            except VolumeNotFound:
                log.warning("volume %s was deleted or renamed while the agent was down; not resumed", name)
            except SyncdError as exc:
                log.error("cannot resume %s: %s (kept in the state file)", name, exc)
                continue
            self.resuming.discard(name)
        await self._save_state()
        resumed += await self.lazy.resume()
        if resumed:
            log.warning("resumed %d mount(s): %s", len(resumed), ", ".join(resumed))
        return resumed

    async def shutdown(self) -> dict[str, str]:
        """Flush: stop watching, commit every mount; returns errors by volume."""
        self.closing = True
        errors: dict[str, str] = await self.lazy.shutdown()
        await asyncio.to_thread(self.views.close)
        for mount in list(self.mounts.values()):
            await self._stop_watcher(mount)
        for mount in list(self.mounts.values()):
            try:
                await self.commit(mount, "flush on shutdown")
            except SyncdError as exc:
                errors[mount.name] = str(exc)
                log.error("flushing %s failed: %s (the write stays pending on disk)", mount.name, exc)
        return errors

    def status(self) -> dict[str, Any]:
        counter = self.engine.counter
        data_gets = sum(n for key, n in counter.keys.items() if _is_data_key(self.engine.layout.owner_prefix, key))
        cache = self.engine.cache
        stats = asdict(cache.stats) if cache is not None else {}
        return {"owner": self.config.owner, "root": str(self.config.root), "pid": os.getpid(),
                "started_at": self.started, "now": time.time(),
                "mounts": [m.describe() for m in self.mounts.values()]
                + [m.describe() for m in list(self.lazy.mounts.values())],
                "views": self.views.made(),
                "cache": {"enabled": cache is not None, "bytes": self.cache_usage[0],
                          "entries": self.cache_usage[1], **stats},
                "sources": self._sources(),
                "gateways": [g.public_url for g in self.engine.fetcher.sources if isinstance(g, GatewaySource)],
                "store": {"calls": dict(counter.calls), "data_gets": data_gets,
                          "bytes_in": counter.bytes_in, "bytes_out": counter.bytes_out},
                "watch": asdict(self.watch)}

    def _sources(self) -> dict[str, int]:
        """Verified chunk bytes by source, this process's and its lazy mount processes' together."""
        total: dict[str, int] = dict(self.engine.fetcher.bytes_by_source)
        for lazy in list(self.lazy.mounts.values()):
            theirs = lazy.info.get("bytes_by_source")
            for source, n in (theirs.items() if isinstance(theirs, dict) else ()):
                total[str(source)] = total.get(str(source), 0) + int(n)
        return total

    def mount_rows(self) -> list[MountRow]:
        """Every mount of this worker, eager, lazy and read-only views, for metrics and status."""
        rows = [MountRow(m.name, "eager", bool(m.watch and m.watch.pending), m.lag()) for m in self.mounts.values()]
        for lazy in list(self.lazy.mounts.values()):
            lag = lazy.info.get("write_back_lag")
            rows.append(MountRow(lazy.name, "lazy", bool(lazy.info.get("pending")),
                                 float(lag) if isinstance(lag, (int, float)) else None))
        rows += [MountRow(v["name"], "read-only", False, None) for v in self.views.made()]
        return rows

    def _metric_facts(self) -> Snapshot:
        cache = self.engine.cache
        return Snapshot(cache.stats if cache is not None else None, self.cache_usage, self.mount_rows())

    async def refresh(self) -> None:
        """Read what is not kept current for free: the lazy mounts' state, the cache's size."""
        await self.lazy.refresh()
        if self.engine.cache is not None:
            self.cache_usage = await asyncio.to_thread(self.engine.cache.usage)

    def _load_state(self) -> list[str]:
        try:
            doc = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError:
            log.warning("agent state %s is damaged; starting with no mounts", self._state_path)
            return []
        names = doc.get("mounts", []) if isinstance(doc, dict) else []
        return [n for n in names if isinstance(n, str)]

    async def _save_state(self) -> None:
        names = sorted(set(self.mounts) | self.resuming)
        doc = {"format": STATE_FORMAT, "owner": self.config.owner, "mounts": names}
        await asyncio.to_thread(_write_atomic, self._state_path, json.dumps(doc).encode())


def _is_data_key(owner_prefix: str, key: str) -> bool:
    """A pack (``<volume>/packs/<id>``) or chunk (``<volume>/chunks/...``) key, not HEAD or a snapshot."""
    parts = key[len(owner_prefix):].split("/") if key.startswith(owner_prefix) else []
    return len(parts) >= 3 and parts[1] in ("packs", "chunks")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LocalIOError(f"cannot save agent state {path}: {exc.strerror}") from exc
