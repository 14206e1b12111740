"""The mount process's control socket: one JSON request per line, one JSON answer.

``{"op": "status"}``, ``{"op": "commit", "message": "..."}``, ``{"op": "reload"}``
and ``{"op": "stop"}``. An error answer is ``{"error": <SyncdError class>,
"message": ...}`` and is raised on the client side as that class, so the agent
passes a mount's errors on to its own clients unchanged. The socket is created
0600 in a 0700 directory: only the mount's owner can commit or stop it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from syncd import errors
from syncd.errors import AgentUnavailable, SyncdError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_LINE = 1 << 20


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    await asyncio.to_thread(_prepare, path)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise errors.ConfigError("a control request is a JSON object")
                answer = await handler(request)
            except SyncdError as exc:
                answer = {"error": type(exc).__name__, "message": str(exc)}
            except ValueError:
                answer = {"error": "ConfigError", "message": "a control request is one JSON line"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        return await asyncio.start_unix_server(one, path=str(path), limit=MAX_LINE)
    finally:
        os.umask(old)


def _prepare(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)


def _decode(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise AgentUnavailable(f"the mount at {path} sent a malformed answer") from exc
    if not isinstance(doc, dict):
        raise AgentUnavailable(f"the mount at {path} sent a malformed answer")
    if "error" in doc:
        cls = getattr(errors, str(doc["error"]), None)
        if isinstance(cls, type) and issubclass(cls, SyncdError) and cls is not errors.LocalConflict:
            raise cls(str(doc.get("message", "")))
        raise SyncdError(str(doc.get("message", "")))
    return doc


async def call(path: Path, op: str, **args: Any) -> dict[str, Any]:
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    except OSError as exc:
        raise AgentUnavailable(f"no mount process answers on {path}") from exc
    try:
        writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await writer.drain()
        raw = await reader.readline()
    except OSError as exc:
        raise AgentUnavailable(f"the mount process on {path} failed: {exc}") from exc
    finally:
        writer.close()
    return _decode(raw, path)


def call_sync(path: Path, op: str, timeout: float | None = 120.0, **args: Any) -> dict[str, Any]:
    """The same from plain (test, CLI) code without an event loop."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            chunks: list[bytes] = []
            while not chunks or not chunks[-1].endswith(b"\n"):
                piece = sock.recv(65536)
                if not piece:
                    break
                chunks.append(piece)
        except OSError as exc:
            raise AgentUnavailable(f"no mount process answers on {path}: {exc}") from exc
    return _decode(b"".join(chunks), path)
