"""A fault-injecting HTTP proxy between syncd and the S3 server, for tests.

It listens on 127.0.0.1 only and forwards each HTTP/1.1 request to the real
server, unless a :class:`Rule` matches the request, in which case it injects::

    reset        drop the connection with a TCP RST before forwarding
    reset_after  forward (the request takes effect on the server), then RST
                 instead of answering: the "it landed but the answer was lost" case;
                 the rule's ``meanwhile`` coroutine, if any, runs before the RST
                 (e.g. another writer commits while this answer is on its way)
    slowdown     answer 503 SlowDown without forwarding
    truncate     forward, then relay the headers and only half of the body
    garble       forward, then relay the headers and as many bytes of junk as the body had
    cut_request  forward the head and the first ``delay`` fraction of the body, then
                 hang up on the server (FIN, as the kernel does for a killed client)
    stall        say nothing for ``delay`` seconds (longer than the client's
                 read timeout), then drop the connection
    stall_body   forward, relay the headers and half the body, then stall as above
    latency      wait ``delay`` seconds, then forward normally

How it stays simple: every client connection carries one request. The proxy
reads the request head and body (answering ``Expect: 100-continue`` itself),
rewrites ``Connection: close`` into the forwarded head so the server closes
after its answer, and relays the answer until EOF. The signature survives:
SigV4 signs neither ``Connection`` nor ``Expect``, and ``Host`` is left as the
client sent it. Bounded: at most ``max_connections`` connections, heads of at
most 64 KiB, bodies of at most ``max_body`` bytes, stalls of at most 30 s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

FAULTS = ("reset", "reset_after", "slowdown", "truncate", "garble", "cut_request", "stall", "stall_body",
          "latency")
MAX_HEAD = 64 * 1024
SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message><RequestId>faultproxy</RequestId></Error>")


@dataclass
class Rule:
    """Inject ``fault`` into matching requests: after ``skip`` matches, every ``every``-th, at most ``times``."""

    fault: str
    method: str | None = None      # "GET", "PUT", ...; None matches any
    path: str | None = None        # substring of the request target; None matches any
    skip: int = 0
    every: int = 1
    times: int | None = None
    delay: float = 0.0
    matched: int = 0
    injected: int = 0
    meanwhile: Callable[[], Awaitable[None]] | None = None   # reset_after: run before the RST

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}")

    def take(self, method: str, target: str) -> bool:
        if (self.method and method != self.method) or (self.path and self.path not in target):
            return False
        self.matched += 1
        n = self.matched - self.skip
        if n <= 0 or (n - 1) % self.every or (self.times is not None and self.injected >= self.times):
            return False
        self.injected += 1
        return True


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    head: bytes
    body: bytes


class FaultProxy:
    def __init__(self, upstream: str, *, max_connections: int = 64, max_body: int = 128 << 20) -> None:
        url = urlsplit(upstream)
        self.upstream_host, self.upstream_port = url.hostname or "127.0.0.1", url.port or 80
        self.rules: list[Rule] = []
        self.injected: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, str | None]] = []     # method, target, fault
        self.max_body = max_body
        self._slots = asyncio.Semaphore(max_connections)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def requests(self, method: str | None = None, path: str = "") -> int:
        return sum(1 for m, t, _ in self.log if (method is None or m == method) and path in t)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._slots:
                await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader, writer, self.max_body)
        if request is None:
            return
        rule = next((r for r in self.rules if r.take(request.method, request.target)), None)
        fault = rule.fault if rule else None
        self.log.append((request.method, request.target, fault))
        if rule is not None:
            self.injected[rule.fault] += 1
        if fault == "reset":
            _reset(writer)
        elif fault == "slowdown":
            writer.write(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOWDOWN_BODY))
            if request.method != "HEAD":
                writer.write(SLOWDOWN_BODY)
            await writer.drain()
        elif fault == "stall":
            await asyncio.sleep(min(rule.delay if rule else 0, 30.0))
            _reset(writer)
        else:
            if fault == "latency" and rule is not None:
                await asyncio.sleep(min(rule.delay, 30.0))
            await self._forward(request, writer, rule)

    async def _forward(self, request: Request, writer: asyncio.StreamWriter, rule: Rule | None) -> None:
        fault = rule.fault if rule else None
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(self.upstream_host, self.upstream_port), 10)
        try:
            if fault == "cut_request":
                up_writer.write(request.head + request.body[:int(len(request.body) * (rule.delay if rule else 0.5))])
                await up_writer.drain()
                await asyncio.sleep(0.05)  # let the server see the head, then close as the kernel
                _reset(writer)             # does for a killed process: FIN, not RST (finally: below)
                return
            up_writer.write(request.head + request.body)
            await up_writer.drain()
            if fault == "reset_after":
                await up_reader.read()  # let the server finish the request, then lose its answer
                if rule is not None and rule.meanwhile is not None:
                    await rule.meanwhile()
                _reset(writer)
                return
            if fault in ("truncate", "garble", "stall_body"):
                head = await up_reader.readuntil(b"\r\n\r\n")
                rest = await up_reader.read()
                writer.write(head + (b"\x00<" * (len(rest) // 2) + b"<" * (len(rest) % 2) if fault == "garble"
                                     else rest[:len(rest) // 2]))
                await writer.drain()
                if fault == "stall_body" and rule is not None:
                    await asyncio.sleep(min(rule.delay, 30.0))
                _reset(writer)
                return
            while data := await up_reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        max_body: int) -> Request | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    if len(raw) > MAX_HEAD:
        raise ValueError("request head too large")
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    kept: list[str] = []
    length, expect = 0, False
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        lname = name.strip().lower()
        if lname == "content-length":
            length = int(value.strip())
        if lname == "expect" and "100-continue" in value.lower():
            expect = True
            continue
        if lname in ("connection", "keep-alive"):
            continue
        kept.append(line)
    if length > max_body:
        raise ValueError("request body too large")
    if expect:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    body = await reader.readexactly(length) if length else b""
    head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
    return Request(method, target, head, body)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
