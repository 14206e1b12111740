"""Large bodies straight into their place: one ranged GET on a blocking socket, in a worker thread.

Why. A streamed body (``get_stream``) reaches Python as one new buffer per
piece: obstore's runtime receives into its own buffers, zeroes and
concatenates them, and the event loop hands each piece to a writer thread.
Profiled on a cold 1 GiB hydrate (perf, docs/BENCHMARKS.md), those steps
(memset, memmove, page faults of fresh buffers, thread hand-offs) cost more
CPU than receiving and writing the bytes. Here a worker thread does what
s5cmd does: ``recv_into`` one reused buffer, then hands the filled buffer to
the caller's sink (which hashes it and ``pwrite``s it, in the same thread,
while the bytes are still in the CPU cache). No byte is copied in user space
and the GIL is free for the whole of every syscall.

What it speaks: ``GET`` of a pre-signed URL (the backend signs it: obstore's
``sign``, botocore's ``generate_presigned_url``), or of a gateway's URL with its
``Authorization`` header (data/gatewayclient.py), with a ``Range`` header, HTTP/1.1, a ``206`` or ``200`` answer with a
``Content-Length`` (a chunked answer is :class:`Unsupported`: the caller falls
back to the streamed read). Kept-alive connections are reused, per (host,
port), up to ``KEEP`` idle ones; https is wrapped with the default TLS context.

Bounds and failures: ``connect_timeout`` and ``read_timeout`` (socket
timeouts: no silence longer than that), a head of at most ``MAX_HEAD``
bytes, a body of exactly the announced length (fewer bytes is a
``TransientStoreError``). Statuses map as in obstore.py: 404/416 NotFound,
408/409/429/5xx TransientStoreError, others StoreError. ``sink.begin(size)``
is called before any body byte reaches ``sink.write``, so the caller can
refuse a body of the wrong size before it is written anywhere.

Cancellation: a blocked ``recv`` cannot be interrupted from the event loop,
so :meth:`Reader.read` takes an ``abort`` event; the async caller sets it and
shuts the socket down (which wakes ``recv``) and then waits for the thread to
return, so no write from a cancelled read lands after its caller moved on.
:class:`ThreadedReads` is that async caller, with its own pool of reading
threads; both backends use it (obstore.py and s3.py sign the URL, each with
its own library, and hand it here).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from syncd.errors import NotFound, StoreError, TransientStoreError

if TYPE_CHECKING:
    import ssl

BUFFER = 256 << 10    # bytes received before the sink is called (measured: 1 MiB cost 2x the sys time, BENCHMARKS.md)
MAX_HEAD = 64 * 1024
KEEP = 16             # idle connections kept per (host, port)


class Sink(Protocol):
    def begin(self, size: int) -> None:
        """The body has ``size`` bytes; raise to refuse it before any byte is written."""

    def write(self, view: memoryview) -> None:
        """The next bytes of the body (called in the reading thread, in order)."""


class Unsupported(StoreError):
    """An answer this reader does not take (chunked); read the object another way."""


def _status_error(status: int, what: str) -> Exception:
    if status in (404, 416):
        return NotFound(what)
    if status in (408, 409, 429) or status >= 500:
        return TransientStoreError(what)
    return StoreError(what)


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.spare = bytearray()   # bytes received past the last answer's head (none when kept)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Reader:
    """Blocking ranged GETs of pre-signed URLs, with kept-alive connections."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def read(self, url: str, start: int | None, end: int | None, sink: Sink,
             abort: threading.Event, on_socket: Callable[[socket.socket | None], None],
             fields: Mapping[str, str] | None = None) -> None:
        """GET ``url`` (bytes [start, end) when given; ``fields``: more request headers) into
        ``sink``; ``on_socket`` learns the socket in use (so an abort can shut it down), and None
        when the read is over."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        host = key[1] if parts.port is None else f"{key[1]}:{key[2]}"   # never the URL's userinfo
        headers = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
        if start is not None or end is not None:
            headers += f"Range: bytes={start or 0}-{'' if end is None else end - 1}\r\n"
        headers += "".join(f"{name}: {value}\r\n" for name, value in (fields or {}).items())
        request = (headers + "\r\n").encode("latin-1")
        for attempt in (1, 2):   # a kept connection the server closed meanwhile: once more, on a new one
            conn, reused = self._take(key)
            on_socket(conn.sock)
            try:
                keep = self._exchange(conn, request, sink, abort, url, first_byte_retry=reused and attempt == 1)
            except _Stale:
                conn.close()
                continue
            except BaseException:
                conn.close()
                raise
            finally:
                on_socket(None)
            if keep:
                self._give(key, conn)
            else:
                conn.close()
            return
        raise TransientStoreError(f"{_short(url)}: the connection closed before an answer")

    def _exchange(self, conn: _Conn, request: bytes, sink: Sink, abort: threading.Event, url: str,
                  first_byte_retry: bool) -> bool:
        what = _short(url)
        try:
            conn.sock.sendall(request)
            head, rest = self._head(conn, first_byte_retry)
        except _Stale:
            raise
        except OSError as exc:   # includes timeouts
            raise TransientStoreError(f"{what}: {exc}") from exc
        status, fields = _parse(head, what)
        if status not in (200, 206):
            raise _status_error(status, f"{what}: {status}")
        if "chunked" in fields.get("transfer-encoding", "").lower() or "content-length" not in fields:
            raise Unsupported(f"{what}: an answer without Content-Length")
        size = int(fields["content-length"])
        sink.begin(size)
        self._body(conn, size, rest, sink, abort, what)
        return fields.get("connection", "").lower() != "close"

    def _head(self, conn: _Conn, first_byte_retry: bool) -> tuple[bytes, bytes]:
        data = bytearray()
        while True:
            at = data.find(b"\r\n\r\n")
            if at >= 0:
                return bytes(data[:at]), bytes(data[at + 4:])
            if len(data) > MAX_HEAD:
                raise StoreError("an answer head over 64 KiB")
            piece = conn.sock.recv(65536)
            if not piece:
                if not data and first_byte_retry:
                    raise _Stale
                raise TransientStoreError("the connection closed in the answer's head")
            data += piece

    def _body(self, conn: _Conn, size: int, rest: bytes, sink: Sink, abort: threading.Event, what: str) -> None:
        if len(rest) > size:
            raise StoreError(f"{what}: more bytes than Content-Length")
        buf = self._buffer()
        try:
            view = memoryview(buf)
            filled = len(rest)
            view[:filled] = rest
            done = 0
            while done < size:
                want = min(len(buf), size - done)
                while filled < want:
                    if abort.is_set():
                        raise TransientStoreError(f"{what}: aborted")
                    try:
                        n = conn.sock.recv_into(view[filled:want])
                    except OSError as exc:
                        raise TransientStoreError(f"{what}: {exc}") from exc
                    if n == 0:
                        raise TransientStoreError(f"{what}: truncated body ({done + filled} of {size} bytes)")
                    filled += n
                sink.write(view[:filled])
                done += filled
                filled = 0
        finally:
            self._release(buf)

    def _take(self, key: tuple[str, str, int]) -> tuple[_Conn, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, host, port = key
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._tls is None:
                    import ssl
                    self._tls = ssl.create_default_context()
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(self.read_timeout)
        except OSError as exc:
            raise TransientStoreError(f"cannot connect to {host}:{port}: {exc}") from exc
        return _Conn(sock), False

    def _give(self, key: tuple[str, str, int], conn: _Conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < KEEP:
                idle.append(conn)
                return
        conn.close()

    def _buffer(self) -> bytearray:
        with self._lock:
            if self._buffers:
                return self._buffers.pop()
        return bytearray(BUFFER)

    def _release(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._buffers) < KEEP:
                self._buffers.append(buf)

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
            self._buffers.clear()
        for conn in conns:
            conn.close()


class ThreadedReads:
    """:meth:`Reader.read` from the event loop: in a pool of ``threads`` reading threads, stopped
    (socket shut down, thread waited for) when the caller is cancelled."""

    def __init__(self, connect_timeout: float, read_timeout: float, threads: int) -> None:
        self.reader = Reader(connect_timeout, read_timeout)
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None

    async def read(self, url: str, start: int | None, end: int | None, sink: Sink,
                   fields: Mapping[str, str] | None = None) -> None:
        """GET the signed ``url`` (bytes [start, end) when given) into ``sink``; raises as the
        backends' ``get`` do, and :class:`Unsupported` for an answer the reader does not take;
        whatever ``sink`` raises, as it is."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="syncd-read")
        abort = threading.Event()
        current: list[socket.socket | None] = [None]

        def track(sock: socket.socket | None) -> None:
            current[0] = sock

        task = asyncio.get_running_loop().run_in_executor(
            self._pool, self.reader.read, url, start, end, sink, abort, track, fields)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            abort.set()
            sock = current[0]
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)   # wakes a blocked recv
            await asyncio.gather(task, return_exceptions=True)
            raise

    def close(self) -> None:
        self.reader.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class _Stale(Exception):
    """A kept connection that the server had closed: no byte of the answer came."""


def _parse(head: bytes, what: str) -> tuple[int, dict[str, str]]:
    try:
        lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        return int(status), fields
    except ValueError as exc:
        raise StoreError(f"{what}: a malformed answer") from exc


def _short(url: str) -> str:
    """The URL without its query (which holds the signature)."""
    return url.split("?", 1)[0]
