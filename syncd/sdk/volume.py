"""The task-side SDK: ``from syncd import volume, list_volumes``.

``volume("my-volume")`` (or ``volume("/my-volume")``) checks the name, asks the
worker's agent to mount the volume -- creating it if it does not exist -- and
returns a ``Volume``, which behaves as the directory ``$SYNCD_ROOT/my-volume``::

    my_volume = volume("/my-volume")
    (my_volume / "label").mkdir(exist_ok=True)       # a pathlib.Path
    open(os.path.join(my_volume, "x.txt"), "w")      # os.PathLike
    my_volume.commit()                               # durable when it returns
    my_volume.reload()                               # see other workers' commits

Tasks are plain functions, often run without an event loop or inside one the
SDK does not own, so the client is synchronous: stdlib ``http.client`` over the
agent's Unix socket, one short-lived connection per call. Agent errors arrive
as ``{"error": <class name>}`` and are raised as the same ``SyncdError`` class.

File methods that need no agent and no mount -- ``listdir``, ``read_file``
(streamed), ``put_file``, ``remove_file`` -- read and edit the volume's
snapshots in the bucket directly (engine/edit.py via sdk/direct.py), with the
engine the usual ``SYNCD_*`` configuration describes: they work in a notebook
or on a worker without an agent. Each edit is one new snapshot through the
conditional commit. They see the bucket, not this worker's local copy: a file
written under ``v.path`` is visible to them once committed.

A ``Volume`` pickles as its name only. Unpickled on another worker (a task
shipped there by a workflow engine) it mounts through *that* worker's agent on
first use, so the same object works everywhere, as ``/volumes/<name>`` does.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import io
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from syncd import errors
from syncd.errors import AgentUnavailable, SyncdError
from syncd.format.layout import normalize_volume_name, validate_name

if TYPE_CHECKING:
    from syncd.engine.edit import EditResult
    from syncd.sdk.direct import Direct

DEFAULT_SOCKET = "/run/syncd.sock"
DEFAULT_CONNECT_WAIT = 10.0
CUT_OFF_RETRIES = 3     # a repeatable request is sent again after at most this many agents died under it
OWNER_HEADER = "X-Syncd-Owner"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """Blocking JSON calls to the agent.

    ``timeout=None`` waits as long as a hydrate takes. If no agent answers (a
    sidecar restarting after a crash or an upgrade), a call keeps trying to
    connect for ``connect_wait`` seconds (``SYNCD_AGENT_WAIT``, default 10)
    before raising AgentUnavailable. Requests that never reached an agent, or
    that an agent refused while shutting down, are retried; a request cut off
    by the agent's death after it arrived is sent again only when it is
    ``repeatable`` (running it twice is running it once: mount, commit, reload,
    status), so a commit in flight when the agent is killed returns once the
    restarted agent has committed, instead of failing with "Remote end closed".
    """

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, owner: str | None = None,
                 timeout: float | None = None, connect_wait: float | None = None) -> None:
        self.socket_path = os.fspath(socket_path or os.environ.get("SYNCD_SOCKET") or DEFAULT_SOCKET)
        self.owner = owner or os.environ.get("SYNCD_OWNER") or None
        if self.owner is not None:
            validate_name(self.owner, "owner")
        self.timeout = timeout
        if connect_wait is None:
            try:
                connect_wait = float(os.environ.get("SYNCD_AGENT_WAIT", DEFAULT_CONNECT_WAIT))
            except ValueError as exc:
                raise errors.ConfigError("SYNCD_AGENT_WAIT must be a number of seconds") from exc
        self.connect_wait = connect_wait

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             repeatable: bool = False) -> Any:
        deadline = time.monotonic() + self.connect_wait
        delay = 0.05
        cut_offs = 0
        while True:
            try:
                return self._call_once(method, path, body)
            except _NotReached as exc:
                if exc.cut_off:
                    cut_offs += 1
                    if not repeatable or cut_offs > CUT_OFF_RETRIES:
                        raise exc.error from exc.__cause__
                    deadline = max(deadline, time.monotonic() + self.connect_wait)   # for the next agent
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self.connect_wait > 0:   # say why it took this long, and how to change it
                        raise AgentUnavailable(f"{exc.error} -- waited {self.connect_wait:g}s for it "
                                               "(SYNCD_AGENT_WAIT seconds; 0: fail at once)") from exc.__cause__
                    raise exc.error from exc.__cause__
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    def _call_once(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        headers = {"Content-Type": "application/json"}
        if self.owner:
            headers[OWNER_HEADER] = self.owner
        try:
            try:
                conn.connect()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise _NotReached(AgentUnavailable(
                    f"no syncd agent at {self.socket_path} (start one with 'syncd agent', "
                    "or set SYNCD_SOCKET)")) from exc
            except PermissionError as exc:
                raise errors.PermissionDenied(
                    f"uid {os.getuid()} (gid {os.getgid()}) may not connect to the agent's socket "
                    f"{self.socket_path} (permission denied): an agent lets in only its own uid unless the "
                    "operator names other uids in SYNCD_ALLOW_UIDS or a group in SYNCD_ALLOW_GROUP "
                    "(docs/AGENT.md)") from exc
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                         headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except TimeoutError as exc:          # the agent is there, only slower than ``timeout``
            raise AgentUnavailable(f"the agent at {self.socket_path} did not answer in {self.timeout}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _NotReached(AgentUnavailable(f"the agent at {self.socket_path} failed: {exc}"),
                              cut_off=True) from exc
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError as exc:
            raise AgentUnavailable(f"the agent sent a malformed reply (HTTP {response.status})") from exc
        if response.status >= 400:
            error = _error_from(doc, response.status)
            if isinstance(error, AgentUnavailable):
                raise _NotReached(error)   # refused while shutting down: nothing was done
            raise error
        return doc


class _NotReached(Exception):
    """A request no agent acted on (safe to send again), or, ``cut_off``, one the agent may have
    acted on before it went away (sent again only if repeatable)."""

    def __init__(self, error: SyncdError, cut_off: bool = False) -> None:
        super().__init__(str(error))
        self.error, self.cut_off = error, cut_off


def _error_from(doc: Any, status: int) -> SyncdError:
    name = doc.get("error") if isinstance(doc, dict) else None
    message = doc.get("message", "") if isinstance(doc, dict) else f"HTTP {status}"
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, SyncdError)):
        return SyncdError(f"agent error (HTTP {status}): {message}")
    if cls is errors.LocalConflict:
        return errors.LocalConflict(message, list(doc.get("paths", [])))
    return cls(message)


@dataclass(frozen=True)
class FileEntry:
    """One entry of ``Volume.listdir()``: ``type`` is "file", "dir" or "symlink"."""

    path: str
    type: str
    size: int
    mtime: float
    mode: int


PUT_PIECE = 8 << 20   # bytes read from a local file at once by put_file
# The client a workflow hook mounted a volume with (sdk/covalent.py), by name: a Volume
# unpickled later in the same task process talks to the same agent.
_clients: dict[str, AgentClient] = {}


def remember_client(name: str, client: AgentClient) -> None:
    _clients[normalize_volume_name(name)] = client


class Volume(os.PathLike[str]):
    """A mounted volume; path-like. Mounts lazily when built from a name alone (e.g. unpickled)."""

    def __init__(self, name: str, path: str | os.PathLike[str] | None = None,
                 client: AgentClient | None = None, read_only: bool = False, sub_path: str = "",
                 mode: str | None = None) -> None:
        self.name = normalize_volume_name(name)
        self.mode = mode   # "eager" | "lazy" | None (the agent's SYNCD_MOUNT_MODE)
        self._path = Path(path) if path is not None else None
        self._client = client
        self.read_only, self.sub_path = bool(read_only), (sub_path or "").strip("/")

    @property
    def client(self) -> AgentClient:
        if self._client is None:
            self._client = _clients.get(self.name) or AgentClient()
        return self._client

    def _url(self, action: str = "") -> str:
        return f"/v1/volumes/{self.name}" + (f"/{action}" if action else "")

    def mount(self) -> Volume:
        """(Re)mount: create-or-refer, and pull commits made elsewhere since the last sync.

        Read-only: a view of the latest snapshot that is never committed (the volume must exist).
        """
        options: dict[str, Any] = {}
        if self.read_only:
            options["read_only"] = True
        if self.sub_path:
            options["sub_path"] = self.sub_path
        if self.mode:
            options["mode"] = self.mode
        self._path = Path(self._call("POST", "mount", options or None, repeatable=True)["path"])
        return self

    @property
    def path(self) -> Path:
        if self._path is None:
            self.mount()
        assert self._path is not None
        return self._path

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return self.path / other

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        extra = (", read_only=True" if self.read_only else "") + (f", sub_path={self.sub_path!r}" if self.sub_path else "")
        return f"Volume({self.name!r}, path={str(self._path) if self._path else None!r}{extra})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Volume) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("syncd.Volume", self.name))

    def __reduce__(self) -> tuple[type[Volume], tuple[str, None, None, bool, str, str | None]]:
        return (Volume, (self.name, None, None, self.read_only, self.sub_path, self.mode))

    def _call(self, method: str, action: str = "", body: dict[str, Any] | None = None,
              repeatable: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call(method, self._url(action), body, repeatable=repeatable)
        return result

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise PermissionError(errno.EROFS, f"volume {self.name!r} is attached read-only: cannot {what}")

    def commit(self, message: str = "") -> dict[str, Any]:
        """Write local changes back now; when this returns they are in the bucket."""
        if self.read_only:
            return {"volume": self.name, "read_only": True, "changed": 0}   # nothing to write back
        return self._call("POST", "commit", {"message": message}, repeatable=True)

    def reload(self) -> dict[str, Any]:
        """Commit local changes, then bring the local copy to the latest snapshot."""
        if self.read_only:
            return {"volume": self.name, "read_only": True, "path": str(self.mount().path)}  # a newer view
        return self._call("POST", "reload", repeatable=True)

    def status(self) -> dict[str, Any]:
        return self._call("GET", repeatable=True)

    def unmount(self) -> dict[str, Any]:
        return self._call("POST", "unmount")

    def delete(self) -> dict[str, Any]:
        """Delete the volume everywhere: its snapshots, its data and this worker's copy."""
        result = self._call("DELETE")
        self._path = None
        return result

    # ------------------------------------------------ without an agent (the bucket directly)

    def _direct(self) -> Direct:
        from syncd.config import Config
        from syncd.sdk.direct import direct
        owner = self._client.owner if self._client is not None else None
        return direct(Config.from_env(owner=owner) if owner else Config.from_env())

    def listdir(self, path: str = "/", recursive: bool = False) -> list[FileEntry]:
        """The entries of directory ``path`` of the latest snapshot (everything below it if recursive)."""
        from syncd.engine.edit import listdir
        path = self._in_volume(path)
        entries = self._direct().run(lambda engine: listdir(engine, self.name, path, recursive))
        return [FileEntry(e.path, e.kind, e.size, e.mtime_ns / 1e9, e.mode) for e in entries]

    def read_file(self, path: str) -> Iterator[bytes]:
        """The bytes of file ``path``, streamed chunk by chunk (each verified against its hash)."""
        from syncd.engine.edit import read, stat
        path = self._in_volume(path)
        direct = self._direct()
        entry = direct.run(lambda engine: stat(engine, self.name, path))
        return direct.iterate(lambda engine: read(engine, self.name, entry))

    def _in_volume(self, path: str) -> str:
        """A path of the SDK's view (under ``sub_path``) as a path of the volume."""
        path = path.strip("/")
        return "/".join(p for p in (self.sub_path, path) if p)

    def put_file(self, source: str | os.PathLike[str] | IO[bytes] | bytes, path: str,
                 message: str = "") -> EditResult:
        """Store a local file, a binary file object or bytes at ``path``: one new snapshot."""
        from syncd.engine.edit import write_file
        self._writable(f"write {path!r}")
        path = self._in_volume(path)
        if isinstance(source, bytes):
            handle: IO[bytes] = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            handle = open(os.fspath(source), "rb")
        else:
            handle = source

        async def pieces() -> AsyncIterator[bytes]:
            while piece := await asyncio.to_thread(handle.read, PUT_PIECE):
                yield piece
        try:
            return self._direct().run(lambda engine: write_file(engine, self.name, path, pieces(), message))
        finally:
            if handle is not source:
                handle.close()

    def remove_file(self, path: str, recursive: bool = False) -> EditResult:
        """Remove ``path`` (a directory only with ``recursive=True``): one new snapshot."""
        from syncd.engine.edit import edit
        self._writable(f"remove {path!r}")
        path = self._in_volume(path)
        return self._direct().run(lambda engine: edit(engine, self.name,
                                                      lambda batch: batch.remove(path, recursive)))


def volume(name: str, *, read_only: bool = False, sub_path: str = "", mode: str | None = None,
           socket_path: str | os.PathLike[str] | None = None, owner: str | None = None) -> Volume:
    """Create the volume if missing (or refer to it), mount it on this worker, return it.

    ``read_only=True``: a view of the latest snapshot whose files cannot be written (0444,
    so writes fail with PermissionError; ``put_file``/``remove_file`` raise PermissionError
    with EROFS); it is never committed, and the volume must exist. ``sub_path="a/b"``: the task's path is that directory of the
    volume (created if missing, unless read-only). ``mode="lazy"`` mounts it with FUSE (bytes
    fetched on read; docs/MOUNT.md); ``None`` takes the agent's ``SYNCD_MOUNT_MODE``.
    """
    vol = Volume(name, client=AgentClient(socket_path, owner), read_only=read_only,
                 sub_path=sub_path, mode=mode)  # validates before any request
    return vol.mount()


def list_volumes(*, socket_path: str | os.PathLike[str] | None = None,
                 owner: str | None = None) -> list[str]:
    """Names of the owner's volumes."""
    doc = AgentClient(socket_path, owner).call("GET", "/v1/volumes")
    return [v["name"] for v in doc["volumes"]]
