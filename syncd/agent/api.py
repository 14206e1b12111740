"""The agent's HTTP API on a Unix socket, and ``serve()``, the ``syncd agent`` main loop.

Routes (JSON in, JSON out)::

    GET    /v1/status                     agent, mounts, store request counters
    GET    /v1/volumes                    the owner's volumes, with a mounted flag
    POST   /v1/volumes/{name}/mount       create-or-refer, hydrate; -> mount status
                                          (body {"read_only": true, "sub_path": "a/b"}: views.py)
    POST   /v1/volumes/{name}/commit      {"message": ...}; returns when durable
    POST   /v1/volumes/{name}/reload      commit local changes, hydrate the latest
    POST   /v1/volumes/{name}/unmount     flush and stop syncing (files stay)
    GET    /v1/volumes/{name}             mount status
    GET    /metrics                       Prometheus text: chunk bytes by source (cache, each
                                          gateway, store), cache, commits, write-back lag (metrics.py)
    DELETE /v1/volumes/{name}             delete the volume and the local copy

Errors come back as ``{"error": <SyncdError class name>, "message": ...}``
with a status by class (400 bad name or request, 403 wrong owner, 404 not
found, 409 conflict, 503 shutting down, 502 store, 500 anything else), so the
SDK re-raises the same class. A request may carry ``X-Syncd-Owner``; an agent
serves exactly one owner and refuses requests for another, so one owner's
tasks can never reach another owner's volumes through a shared worker.

``serve()`` binds the socket (mode 0600 from the start: it is bound under
umask 0177, so no other uid can connect even for a moment; a directory the
agent has to create for it is made 0700; a stale socket file is replaced, a
live agent on it is an error). Tasks of other uids get in only when the
operator names them (``SYNCD_ALLOW_UIDS``/``SYNCD_ALLOW_GROUP``): the socket's
group and mode are opened to them after the bind and every request is checked
against the peer's kernel credentials (access.py). It then resumes the mounts of the state file and runs
until SIGTERM or SIGINT, then stops the API and flushes every mount. With
``--status-addr`` it also serves ``make_status_app`` on TCP: the status page,
``/status.json``, ``/metrics`` and ``/healthz``, none of which changes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from syncd import errors
from syncd.agent import access
from syncd.agent.service import Agent
from syncd.agent.status import render_html
from syncd.agent.views import writable_sub_path
from syncd.config import Config
from syncd.engine.wiring import open_engine
from syncd.errors import SyncdError
from syncd.format.layout import validate_name
from syncd.local.watch import WatchSettings

log = logging.getLogger(__name__)
OWNER_HEADER = "X-Syncd-Owner"
AGENT = web.AppKey("agent", Agent)

_STATUS: list[tuple[type[SyncdError], int]] = [
    (errors.InvalidName, 400), (errors.ConfigError, 400), (errors.PermissionDenied, 403), (errors.VolumeNotFound, 404),
    (errors.SnapshotNotFound, 404), (errors.LocalConflict, 409), (errors.CommitConflict, 409),
    (errors.AgentUnavailable, 503), (errors.StoreError, 502),
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _status_for(exc: SyncdError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _json(value: Any, status: int = 200) -> web.Response:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return web.json_response(value, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    agent: Agent = request.app[AGENT]
    owner = request.headers.get(OWNER_HEADER)
    try:
        if owner is not None and owner != agent.config.owner:
            raise errors.PermissionDenied(f"this agent serves owner {agent.config.owner!r}, not {owner!r}")
        return await handler(request)
    except SyncdError as exc:
        body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, errors.LocalConflict):
            body["paths"] = exc.paths
        return web.json_response(body, status=_status_for(exc))


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        doc = await request.json()
    except ValueError as exc:
        raise errors.ConfigError("the request body is not JSON") from exc
    if not isinstance(doc, dict):
        raise errors.ConfigError("the request body must be a JSON object")
    return doc


class _Routes:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.views = agent.views

    async def status(self, request: web.Request) -> web.Response:
        await self.agent.refresh()
        return _json(self.agent.status())

    async def volumes(self, request: web.Request) -> web.Response:
        return _json({"volumes": await self.agent.names()})

    async def mount(self, request: web.Request) -> web.Response:
        options = await _body(request)  # {"read_only": bool, "sub_path": "a/b", "mode": "eager"|"lazy"}
        name, sub_path = request.match_info["name"], str(options.get("sub_path") or "")
        if options.get("read_only"):
            self.agent._check_open()
            return _json(await self.views.read_only(validate_name(name), sub_path))
        mode = options.get("mode")
        described = (await self.agent.attach(name, mode=str(mode) if mode else None)).describe()
        if sub_path:
            path = await asyncio.to_thread(writable_sub_path, Path(described["path"]), sub_path,
                                           self.agent.file_owner, self.agent.dir_mode)
            described.update(path=str(path), sub_path=sub_path)
        return _json(described)

    async def commit(self, request: web.Request) -> web.Response:
        message = str((await _body(request)).get("message", ""))
        return _json(await self.agent.commit_volume(request.match_info["name"], message))

    async def reload(self, request: web.Request) -> web.Response:
        return _json(await self.agent.reload(request.match_info["name"]))

    async def unmount(self, request: web.Request) -> web.Response:
        return _json(await self.agent.unmount(request.match_info["name"]))

    async def info(self, request: web.Request) -> web.Response:
        return _json(self.agent.describe(request.match_info["name"]))

    async def delete(self, request: web.Request) -> web.Response:
        return _json(await self.agent.delete(request.match_info["name"]))

    async def metrics(self, request: web.Request) -> web.Response:
        await self.agent.refresh()
        return web.Response(body=self.agent.metrics.render(), content_type="text/plain", charset="utf-8")

    async def page(self, request: web.Request) -> web.Response:
        await self.agent.refresh()
        return web.Response(text=render_html(self.agent.status()), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def healthz(self, request: web.Request) -> web.Response:
        if self.agent.closing:
            return web.Response(status=503, text="shutting down\n")
        return web.Response(text="ok\n")


def make_app(agent: Agent) -> web.Application:
    """The socket's API; every request first passes the peer check (access.py)."""
    app = web.Application(middlewares=[_errors, access.middleware(access.Access(agent.config))])
    app[AGENT] = agent
    r = _Routes(agent)
    app.router.add_routes([
        web.get("/v1/status", r.status), web.get("/v1/volumes", r.volumes),
        web.post("/v1/volumes/{name}/mount", r.mount), web.post("/v1/volumes/{name}/commit", r.commit),
        web.post("/v1/volumes/{name}/reload", r.reload), web.post("/v1/volumes/{name}/unmount", r.unmount),
        web.get("/v1/volumes/{name}", r.info), web.delete("/v1/volumes/{name}", r.delete),
        web.get("/metrics", r.metrics),
    ])
    return app


def make_status_app(agent: Agent) -> web.Application:
    """The ``--status-addr`` listener: read-only routes only, no volume operation (status.py)."""
    app = web.Application(middlewares=[_errors])
    app[AGENT] = agent
    r = _Routes(agent)
    app.router.add_routes([web.get("/status", r.page), web.get("/status.json", r.status),
                           web.get("/metrics", r.metrics), web.get("/healthz", r.healthz)])
    return app


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or ``PORT`` (the last two on loopback, 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise errors.ConfigError(f"status address {text!r} is not HOST:PORT (a port 0-65535)")
    return host or "127.0.0.1", number


def _claim_socket(path: os.PathLike[str], dir_mode: int = 0o700) -> None:
    """Remove a stale socket file; refuse if an agent is listening on it."""
    if len(os.fsencode(path)) > 107:
        raise errors.ConfigError(f"SYNCD_SOCKET {os.fspath(path)!r} is longer than a Unix socket path "
                                 "may be (107 bytes)")
    if not os.path.exists(path):
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=dir_mode, exist_ok=True)
            os.chmod(parent, dir_mode)   # whatever the umask
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except OSError:
            os.unlink(path)
            return
    raise errors.ConfigError(f"another agent is already listening on {os.fspath(path)}")


async def _start_status(agent: Agent, addr: tuple[str, int]) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(make_status_app(agent), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, addr[0], addr[1]).start()
    except OSError as exc:
        await runner.cleanup()
        raise errors.ConfigError(f"cannot serve the status page on {addr[0]}:{addr[1]}: {exc.strerror}") from exc
    host, port = runner.addresses[0][:2]
    return runner, f"http://{f'[{host}]' if ':' in host else host}:{port}"


async def serve(config: Config, watch: WatchSettings = WatchSettings(),
                ready: Callable[[Agent], None] | None = None,
                status_addr: tuple[str, int] | None = None) -> dict[str, str]:
    """Run the agent until SIGTERM/SIGINT; returns flush errors by volume (empty: nothing lost).

    ``status_addr``: also serve the status page, /metrics and /healthz there (status.py);
    ``agent.status_url`` says where, once ``ready`` is called."""
    await asyncio.to_thread(_claim_socket, config.socket, access.socket_dir_mode(config))
    async with open_engine(config) as engine:
        agent = Agent(engine, watch)
        runner = web.AppRunner(make_app(agent), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.UnixSite(runner, os.fspath(config.socket))
        umask = os.umask(0o177)  # bound 0600: no window in which another uid may connect
        try:
            await site.start()
        finally:
            os.umask(umask)
        await asyncio.to_thread(access.open_socket, config.socket, config)   # 0600 unless tasks are named
        status_runner = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        resuming = asyncio.create_task(agent.resume(), name="resume")
        try:
            if status_addr is not None:   # kept up while flushing: /healthz says 503 then
                status_runner, agent.status_url = await _start_status(agent, status_addr)
            if ready is not None:
                ready(agent)
            await stop.wait()
            agent.closing = True
            await runner.shutdown()
            if not resuming.done():
                resuming.cancel()  # what it did not reach stays in the state file
            with contextlib.suppress(asyncio.CancelledError):
                await resuming
            return await agent.shutdown()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if not resuming.done():            # the status listener could not start
                resuming.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await resuming
            await runner.cleanup()
            if status_runner is not None:
                await status_runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.socket)
