"""Mount processes from the outside: spawning, reclaiming, and the agent's lazy mode.

pyfuse3 serves one file system per process, and a FUSE server that dies must
not take the agent with it, so every lazy mount is its own process
(``python -m syncd.mount.process``), spoken to over its control socket
(control.py). The agent (``volume("x", mode="lazy")`` or
``SYNCD_MOUNT_MODE=lazy``) keeps a :class:`LazyMounts`: mount spawns the
process and waits until its control socket answers (the FUSE mount is live by
then), commit and reload are forwarded, unmount and shutdown ask the process
to stop, which commits and unmounts. The process gets the agent's exact
configuration as JSON in ``SYNCD_MOUNT_CONFIG``.

Stale mount points. A mount process killed with ``kill -9`` leaves its mount
point in the kernel's table, and every access fails with ``ENOTCONN``
("Transport endpoint is not connected"). :func:`reclaim` detects exactly that
and detaches it with ``fusermount3 -u -z`` (or ``umount -l``), so the next
start can mount again. A mount point that is still served by a live process
is left alone and the new mount is refused.

The agent keeps its lazy mounts up (``LazyMounts``):

* Sealed mount points. Below each FUSE mount the agent keeps the mount point
  directory sealed read-only (local/robind.py: a read-only bind mount of
  itself). Whenever no mount process serves it -- the agent was killed and its
  mount processes stopped, a mount process was killed, one is starting -- a
  task's write there fails with ``EROFS`` instead of landing on the bare
  directory, where the next mount would hide it (a write the task fsynced and
  that is in no volume: the soak found 19 in 150 s). Unmounting the volume
  unseals it. Where the kernel refuses the seal (no CAP_SYS_ADMIN) a warning
  says that writes in such a gap are hidden, not committed.
* Revived mounts. A mount process that exits without being asked to (``kill
  -9``, a crash) is mounted again by the agent at once (retried with backoff
  while that fails), without waiting for a task to ask; so is a lazy mount
  whose resume failed when the agent started (the store down, say).
* Orphans. A mount process whose agent died commits and unmounts by itself
  (process.py); an agent that restarts before that finished asks it, over its
  control socket, to stop now and waits until its mount point is free (one
  that no longer answers, being past its final commit, gets a few seconds to
  unmount), so the restart's resume does not fail on a mount point that is
  still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.config import Config
from syncd.errors import AgentUnavailable, ConfigError, LocalIOError, SyncdError, VolumeNotFound
from syncd.local import robind
from syncd.mount import control

log = logging.getLogger(__name__)
MODES = ("eager", "lazy")
START_TIMEOUT = 60.0
STATUS_WAIT = 2.0     # seconds a mount process has to answer a status request of the agent's status page
STOP_TIMEOUT = 120.0  # seconds a stopping mount process has for its final commit and unmount
REVIVE_BACKOFF = (1.0, 60.0)   # first and longest wait between attempts to mount a dead mount again
UNMOUNT_WAIT = 10.0   # seconds a previous mount process that stopped answering has to unmount


def default_mode() -> str:
    mode = os.environ.get("SYNCD_MOUNT_MODE", "eager") or "eager"
    return check_mode(mode)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"mount mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def config_to_json(config: Config) -> str:
    return json.dumps({f.name: (str(v) if isinstance(v, Path) else v)
                       for f in dataclasses.fields(config) for v in [getattr(config, f.name)]})


def config_from_json(text: str) -> Config:
    doc = json.loads(text)
    paths = {f.name for f in dataclasses.fields(Config) if f.type in ("Path", Path)}
    values: dict[str, Any] = {k: (Path(v) if k in paths else tuple(v) if isinstance(v, list) else v)
                              for k, v in doc.items()}
    return Config(**values)


def work_dir(config: Config, volume: str, mountpoint: Path) -> Path:
    """This mount's private directory: control socket and upper layer."""
    tag = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:12]
    return config.state_dir / "mount" / config.owner / f"{volume}-{tag}"


def control_path(work: Path) -> Path:
    """The control socket of a mount whose work directory is ``work``; AF_UNIX paths are
    limited to 107 bytes, so a deep state directory gets a socket in the temp directory."""
    path = work / "control.sock"
    if len(os.fsencode(path)) < 100:
        return path
    tag = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"syncd-mount-{os.getuid()}" / f"{tag}.sock"


def mounted_at(mountpoint: Path) -> bool:
    """Is a FUSE file system mounted at ``mountpoint``? (The agent's read-only seal below it is not.)"""
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == target and " - fuse" in line:
                    return True
    except OSError:
        return False
    return False


def reclaim(mountpoint: Path) -> bool:
    """Detach a dead FUSE mount at ``mountpoint`` (ENOTCONN); True if one was reclaimed."""
    try:
        os.stat(mountpoint)
        return False
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise LocalIOError(f"cannot use mount point {mountpoint}: {exc.strerror}") from exc
    log.warning("%s is a dead FUSE mount (ENOTCONN); detaching it", mountpoint)
    for cmd in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
            return True
    raise LocalIOError(f"{mountpoint} is a dead mount and could not be detached; "
                       f"run 'fusermount3 -u -z {mountpoint}' as its owner")


@dataclass
class LazyMount:
    name: str
    path: Path
    control: Path
    process: asyncio.subprocess.Process
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    stopping: bool = False             # asked to stop (unmount, shutdown): its exit is no failure
    log_from: int = 0                  # where in its log file this process's lines begin

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "mode": "lazy", "pid": self.process.pid,
                **{k: self.info.get(k) for k in ("snapshot", "seq", "commits", "pending", "last_error",
                                                 "last_commit_at", "write_back_lag", "bytes_by_source")}}


class LazyMounts:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.mounts: dict[str, LazyMount] = {}
        self.closing = False
        self.revived = 0                   # mount processes that died and were mounted again
        self._locks: dict[str, asyncio.Lock] = {}
        self._supervisors: set[asyncio.Task[None]] = set()
        # which volumes are mounted lazily, for the agent's restart (beside its own state file)
        self.state_path = config.state_dir / "agent" / f"{config.owner}.lazy.json"

    async def resume(self) -> list[str]:
        """Mount again, lazily, what the state file lists (after a restart or a crash)."""
        try:
            names = json.loads(await asyncio.to_thread(self.state_path.read_bytes))
        except (OSError, ValueError):
            return []
        resumed = []
        for name in names if isinstance(names, list) else []:
            try:
                await self.mount(str(name))
                resumed.append(str(name))
            except VolumeNotFound as exc:
                log.warning("cannot resume the lazy mount of %s: %s", name, exc)
            except (SyncdError, OSError) as exc:
                log.error("cannot resume the lazy mount of %s: %s; retrying in the background", name, exc)
                self._background(self._revive(str(name)))
        return resumed

    async def refresh(self) -> None:
        """Ask each mount process for its state now (status pages); one that does not answer in
        ``STATUS_WAIT`` seconds keeps what it said last."""
        async def one(mount: LazyMount) -> None:
            try:
                mount.info = await asyncio.wait_for(control.call(mount.control, "status"), STATUS_WAIT)
            except (SyncdError, TimeoutError) as exc:
                log.info("lazy mount %s did not report its status: %s", mount.name, exc)
        await asyncio.gather(*(one(m) for m in list(self.mounts.values())))

    async def _save(self) -> None:
        await asyncio.to_thread(_write_json, self.state_path, sorted(self.mounts))

    def get(self, name: str) -> LazyMount | None:
        mount = self.mounts.get(name)
        if mount is not None and mount.process.returncode is not None:
            log.warning("lazy mount %s: its process exited with %s", name, mount.process.returncode)
            del self.mounts[name]
            return None
        return mount

    async def mount(self, name: str) -> LazyMount:
        """Mount ``name`` lazily, or reload the live mount; one start at a time per volume."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            mount = self.get(name)
            if mount is not None:
                mount.info = await control.call(mount.control, "reload")
                return mount
            return await self._start(name)

    async def _start(self, name: str) -> LazyMount:
        path = self.config.root / name
        work = work_dir(self.config, name, path)
        sock = control_path(work)
        log_path = work.parent / f"{work.name}.log"
        await asyncio.to_thread(work.parent.mkdir, parents=True, exist_ok=True)
        await self._free(path, sock)
        await asyncio.to_thread(reclaim, path)          # a killed process's dead mount
        await asyncio.to_thread(_seal, path)
        env = {**os.environ, "SYNCD_MOUNT_CONFIG": config_to_json(self.config),
               "SYNCD_MOUNT_PARENT": str(os.getpid())}
        log_fd = await asyncio.to_thread(os.open, log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            log_from = os.fstat(log_fd).st_size
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "syncd.mount.process", name, str(path), "--control", str(sock),
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env)
        finally:
            os.close(log_fd)
        mount = LazyMount(name, path, sock, process, log_path, log_from=log_from)
        try:
            mount.info = await self._wait_ready(mount)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        finally:   # a previous process's uncommitted writes set aside at start: say so here too
            mount.log_from = await asyncio.to_thread(_report_aside, mount.name, log_path, log_from)
        self.mounts[name] = mount
        self._background(self._supervise(mount))
        await self._save()
        return mount

    async def _free(self, path: Path, sock: Path) -> None:
        """A mount process of a previous agent still serving ``path`` (its parent died, it is on its
        way out): ask it to stop now and wait until the mount point is free. One that no longer
        answers may be past its final commit, unmounting: it gets a few seconds."""
        if not await asyncio.to_thread(_served, path):
            return
        try:
            await control.call(sock, "stop")
            wait = STOP_TIMEOUT
        except SyncdError:
            wait = UNMOUNT_WAIT
        log.warning("%s is still served by a mount process of a previous agent; waiting for it to stop", path)
        for _ in range(int(wait / 0.1)):      # the mount table has no event to wait on
            if not await asyncio.to_thread(_served, path):
                return
            await asyncio.sleep(0.1)

    async def _supervise(self, mount: LazyMount) -> None:
        """Mount again a mount whose process exited without being asked to."""
        code = await mount.process.wait()
        if mount.stopping or self.closing:
            return
        log.warning("lazy mount %s: its process exited with %s; mounting it again", mount.name, code)
        async with self._locks.setdefault(mount.name, asyncio.Lock()):
            if self.mounts.get(mount.name) is mount:
                del self.mounts[mount.name]
        await self._revive(mount.name)

    async def _revive(self, name: str) -> None:
        """Start ``name``'s mount until it runs (backoff while it fails), unless one runs already."""
        delay, longest = REVIVE_BACKOFF
        while not self.closing:
            try:
                async with self._locks.setdefault(name, asyncio.Lock()):
                    if self.closing or self.get(name) is not None:
                        return     # mounted again meanwhile: a task asked
                    await self._start(name)
                self.revived += 1
                return
            except VolumeNotFound as exc:        # deleted or renamed elsewhere: nothing to mount
                log.warning("lazy mount %s: not mounted again: %s", name, exc)
                return
            except (SyncdError, OSError) as exc:
                log.error("lazy mount %s: cannot mount it again: %s; retrying in %.0f s", name, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._supervisors.add(task)
        task.add_done_callback(self._supervisors.discard)

    async def _wait_ready(self, mount: LazyMount) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if mount.process.returncode is not None:
                tail = await asyncio.to_thread(_tail, mount.log_path)
                if mount.process.returncode == VolumeNotFound.exit_code:   # process.py's exit status
                    raise VolumeNotFound(f"volume {mount.name!r} does not exist (the mount process said: "
                                         f"{tail.splitlines()[-1] if tail else 'nothing'})")
                raise LocalIOError(f"the mount process for {mount.name} exited with "
                                   f"{mount.process.returncode}: {tail}")
            try:
                return await control.call(mount.control, "status")
            except AgentUnavailable:
                if time.monotonic() > deadline:
                    raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(mount.process.wait(), 0.05)

    async def commit(self, name: str, message: str) -> dict[str, Any]:
        mount = self._need(name)
        result = await control.call(mount.control, "commit", message=message)
        mount.info.update(result)
        return result

    async def reload(self, name: str) -> dict[str, Any]:
        mount = self._need(name)
        mount.info = await control.call(mount.control, "reload")
        return {"volume": name, **mount.info}

    async def unmount(self, name: str) -> dict[str, Any]:
        mount = self._need(name)
        await self._stop(mount)
        del self.mounts[name]
        await self._save()
        await asyncio.to_thread(robind.unseal, mount.path)     # a plain directory again
        return {"volume": name, "snapshot": mount.info.get("snapshot"), "seq": mount.info.get("seq")}

    async def _stop(self, mount: LazyMount) -> None:
        mount.stopping = True
        with contextlib.suppress(SyncdError):
            mount.info = await control.call(mount.control, "stop")
        try:
            await asyncio.wait_for(mount.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            mount.process.kill()
            await mount.process.wait()
        await asyncio.to_thread(_report_aside, mount.name, mount.log_path, mount.log_from)
        if mount.process.returncode:
            raise LocalIOError(f"the mount process for {mount.name} exited with {mount.process.returncode}; "
                               f"see {mount.log_path}")

    async def shutdown(self) -> dict[str, str]:
        """Stop every mount process (each commits and unmounts); the mount points stay sealed, so
        writes while the agent is away fail instead of being hidden by the next mount."""
        self.closing = True
        errors: dict[str, str] = {}
        for name, mount in list(self.mounts.items()):
            try:
                await self._stop(mount)
            except SyncdError as exc:
                errors[name] = str(exc)
            self.mounts.pop(name, None)
        return errors

    def _need(self, name: str) -> LazyMount:
        mount = self.get(name)
        if mount is None:
            raise VolumeNotFound(f"volume {name!r} is not mounted on this worker")
        return mount


def _served(path: Path) -> bool:
    """Is a live FUSE mount at ``path`` (mounted, and not a dead one that answers ENOTCONN)?"""
    if not mounted_at(path):
        return False
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno != errno.ENOTCONN
    return True


def _seal(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if not robind.seal(path):
        log.warning("cannot seal %s read-only below its lazy mount (needs CAP_SYS_ADMIN): a write there "
                    "while no mount process serves it lands on the bare directory and is hidden, "
                    "not committed, once the volume is mounted again", path)


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _report_aside(name: str, log_path: Path, start: int) -> int:
    """Repeat in the agent's log the mount process's notice that it set uncommitted writes
    aside (aside.py), from ``start`` in its log file on; returns where the log now ends."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read(1 << 20)
    except OSError:
        return start
    for line in text.decode(errors="replace").splitlines():
        if "set aside in" in line and line.startswith("syncd mount:"):
            log.warning("lazy mount %s: %s", name, line.removeprefix("syncd mount: "))
    return start + len(text)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip()
    except OSError:
        return ""
