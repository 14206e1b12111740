"""A small HTTP/1.1 GET client for gateways: kept-alive connections, bodies read in place.

Why not aiohttp here. A worker's gateway reads are plain GETs of immutable
objects from a server we wrote, and the worker hashes every byte anyway. For
that, importing aiohttp costs about 0.2 s of CPU per process (its module
graph and the two SSL contexts it builds at import), and its reader collects
a body as a list of pieces joined at the end. In the six-worker fan-out
(bench/fanout.py, docs/GATEWAY.md) six processes start at once on two cores:
the import alone was a third of what reading through the gateway cost the
workers over reading the store. This client imports only the standard library.

What it speaks: ``GET`` with headers (and a ``POST`` with a body, for the
gateway's tree route, which only reads); an answer with a status line, headers
and a body of ``Content-Length`` bytes (or, without one, up to the close of
the connection). A chunked answer is refused (``ProtocolError``): the gateway
never sends one, and the caller falls through to the next source. The body
is received by an ``asyncio.BufferedProtocol`` straight into one buffer of
the announced size, then copied once into the ``bytes`` returned; buffers
are reused (up to ``keep_bytes`` of them, the engine's byte budget: what can
be in flight), since a fresh buffer per body costs more in page faults than
the copy; at most ``MAX_BODY`` bytes. (A hydrate's large chunks do not come
here: gatewayclient.fetch_into streams them through store/rangeread.py.)

Connections: per (scheme, host, port) a stack of idle connections; a request
takes one or opens one (``connect_timeout``), and a connection whose answer
was read whole goes back unless the server said ``Connection: close``. A kept
connection the server had closed meanwhile (end of stream before any byte of
the answer) is retried once on a new one: GET is idempotent. ``read_timeout``
bounds the silence between bytes (a watchdog checks for progress every
``read_timeout`` seconds, so a hung server is noticed after one to two of
them). At most ``limit`` connections per pool at once (a request waits for
one; that wait is not the server's fault and has no timeout).

Errors: ``TimeoutError``, ``OSError`` (refused, reset, closed early) and
``ProtocolError`` (a ``ValueError``: malformed or unsupported answer,
credentials in the URL together with an Authorization header). The caller
(gatewayclient.py) translates them into ``GatewayUnavailable``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

MAX_HEAD = 64 * 1024
MAX_BODY = 1 << 30
LIMIT = 100  # connections per pool at once (aiohttp's default, which this replaced)
_SCRATCH = 256 * 1024
BUFFER_MIN = 1 << 20             # body buffers are at least this large (so small bodies reuse them too)
KEEP_BUFFER = 16 * 1024 * 1024  # body buffers up to this size are kept for the next body ...
KEEP_BYTES = 64 * 1024 * 1024   # ... up to this many bytes of them (the default byte budget)

_tls: ssl.SSLContext | None = None


class ProtocolError(ValueError):
    """The answer is not one this client reads (malformed, chunked, too large)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: bytes go to ``head`` until the body's buffer is set, then into it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.body: memoryview | None = None
        self.filled = 0
        self.received = 0
        self.closed = False
        self._scratch = bytearray(_SCRATCH)
        self._waiter: asyncio.Future[None] | None = None
        self._ready: Callable[[], bool] = lambda: True

    # -- asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self.body is not None and self.filled < len(self.body):
            return memoryview(self.body)[self.filled:]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self.body is not None and self.filled < len(self.body):
            self.filled += nbytes
        else:
            self.head += self._scratch[:nbytes]
        if self._waiter is not None and not self._waiter.done() and self._ready():
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the request's side
    async def until(self, ready: Callable[[], bool], silence: float) -> None:
        """Wait until ``ready()`` or the connection closed; TimeoutError after ``silence`` s without a byte."""
        if ready() or self.closed:
            return
        loop = asyncio.get_running_loop()
        self._ready, self._waiter = ready, loop.create_future()
        waiter, seen = self._waiter, self.received
        watchdog: asyncio.TimerHandle | None = None

        def watch() -> None:
            nonlocal seen, watchdog
            if waiter.done():
                return
            if self.received == seen:
                waiter.set_exception(TimeoutError(f"no bytes for {silence} s"))
            else:
                seen, watchdog = self.received, loop.call_later(silence, watch)

        watchdog = loop.call_later(silence, watch)
        try:
            await waiter
        finally:
            watchdog.cancel()
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """(status, headers, keep-alive) of an answer's head (without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1 answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return int(code), headers, keep


class Connections:
    """Idle connections per (scheme, host, port), shared by the gateway sources of one engine."""

    def __init__(self, limit: int = LIMIT, keep_bytes: int = KEEP_BYTES) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._buffers: list[bytearray] = []  # body buffers for reuse (at most keep_bytes of them)
        self._keep_bytes = keep_bytes
        self._slots = asyncio.Semaphore(limit)

    async def get(self, url: str, headers: Mapping[str, str], connect_timeout: float,
                  read_timeout: float) -> Response:
        return await self.request("GET", url, headers, connect_timeout, read_timeout)

    async def request(self, method: str, url: str, headers: Mapping[str, str], connect_timeout: float,
                      read_timeout: float, body: bytes = b"") -> Response:
        """One exchange. Only safe methods go here (a gateway's GETs, and its tree POST, which only
        reads): a kept connection found closed is retried once, as for GET."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProtocolError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        host = key[1] if parts.port is None else f"{key[1]}:{key[2]}"
        fields = dict(headers)
        if parts.username is not None:  # as aiohttp: URL credentials are Basic auth, never with a token
            if any(k.lower() == "authorization" for k in fields):
                raise ProtocolError("credentials in the URL and an Authorization header")
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            fields["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
        if body or method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in fields.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots:
            for attempt in (1, 2):
                conn, reused = await self._take(key, connect_timeout)
                try:
                    answer = await self._exchange(conn, request, read_timeout, stale_ok=reused and attempt == 1)
                except BaseException:
                    conn.close()
                    raise
                if answer is None:  # the server had closed the kept connection: once more, on a new one
                    conn.close()
                    continue
                response, keep = answer
                if keep and not conn.closed:
                    self._idle.setdefault(key, []).append(conn)
                else:
                    conn.close()
                return response
        raise AssertionError("unreachable")

    async def _take(self, key: tuple[str, str, int], connect_timeout: float) -> tuple[_Connection, bool]:
        idle = self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn, True
        global _tls
        if key[0] == "https" and _tls is None:
            _tls = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(_Connection, key[1], key[2],
                                                   ssl=_tls if key[0] == "https" else None)
        return conn, False

    async def _exchange(self, conn: _Connection, request: bytes, read_timeout: float,
                        stale_ok: bool) -> tuple[Response, bool] | None:
        """Send ``request`` and read the whole answer; None if a kept connection turned out closed."""
        assert conn.transport is not None
        conn.head.clear()
        conn.body, conn.filled = None, 0
        conn.transport.write(request)
        await conn.until(lambda: b"\r\n\r\n" in conn.head or len(conn.head) > MAX_HEAD, read_timeout)
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            if not conn.head and conn.closed and stale_ok:
                return None
            if conn.closed:
                raise ConnectionResetError("the connection closed before the answer's headers")
            raise ProtocolError("answer headers too large")
        status, headers, keep = _parse_head(bytes(conn.head[:end]))
        rest = conn.head[end + 4:]
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ProtocolError("chunked answers are not read here")
        length = headers.get("content-length")
        if length is None and status not in (204, 304):
            too_large: Callable[[], bool] = lambda: len(conn.head) - end - 4 > MAX_BODY  # noqa: E731
            while not conn.closed and not too_large():  # the body runs to the end of the connection
                await conn.until(too_large, read_timeout)
            if too_large():
                raise ProtocolError("answer body too large")
            return Response(status, headers, bytes(conn.head[end + 4:])), False
        size = int(length or 0) if (length or "0").isdigit() else -1
        if not 0 <= size <= MAX_BODY or len(rest) > size:
            raise ProtocolError(f"bad Content-Length {length!r}")
        buffer = self._buffer(size)
        body = conn.body = memoryview(buffer)[:size]
        try:
            body[:len(rest)] = rest
            conn.filled = len(rest)
            await conn.until(lambda: conn.filled >= size, read_timeout)
            if conn.filled < size:
                raise ConnectionResetError(f"the connection closed after {conn.filled} of {size} body bytes")
            return Response(status, headers, body.tobytes()), keep
        finally:
            conn.body = None
            body.release()
            if len(buffer) <= KEEP_BUFFER and sum(map(len, self._buffers)) + len(buffer) <= self._keep_bytes:
                self._buffers.append(buffer)

    def _buffer(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes, reused: a fresh 8 MiB bytearray, then a fresh bytes
        to copy it into, cost ~8 ms of page faults here, against ~1 ms for the copy alone."""
        for i, buffer in enumerate(self._buffers):
            if len(buffer) >= size:
                return self._buffers.pop(i)
        return bytearray(max(size, BUFFER_MIN) if size <= KEEP_BUFFER else size)

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
