"""Fetching through caching gateways (see gateway/ and docs/GATEWAY.md).

``gateway_sources(config)`` turns ``SYNCD_GATEWAY`` (comma-separated URLs)
into one :class:`GatewaySource` per gateway, which ``ChunkFetcher`` tries
before the store. The fetcher verifies every byte a gateway returns, so a
gateway is trusted for speed only, never for correctness.

Placement is rendezvous hashing (highest random weight): for an object key
(a chunk id, or a pack id) each gateway's weight is a hash of ``url|key``, and
the fetcher tries gateways from the highest weight down. Every worker computes
the same order without coordination, so each object is fetched through, and
cached on, one gateway and the pool's caches add up; removing a gateway only
moves the objects that ranked it first.

Failure handling is built so that a bad gateway costs about one timeout, not
one per chunk: requests use a short connect timeout (3 s: a refused connection fails at
once, and one SYN lost in a fleet's connection burst is retried after 1 s) and a read timeout
between bytes (10 s: long enough for a busy gateway queueing a burst of
misses, short enough that a hung one is noticed), and any failure (refused, reset, timed out, 5xx, token
refused) opens that gateway's :class:`Breaker` for a while (1 s, doubling to
30 s). While it is open the source answers None at once, so the fetcher goes
on to the next gateway, then the store. After the pause one request at a time
probes the gateway; a success closes the breaker. A 404 is an answer, not a
failure: the fetcher then asks the next source.

Gateway failures raise :class:`GatewayUnavailable` (a TransientStoreError),
which the fetcher logs and skips.

The reads go through data/httpget.py (standard library only: kept-alive
connections, a body received into one buffer) rather than aiohttp, whose
import alone cost each worker process ~0.2 s of CPU (docs/GATEWAY.md, the
six-worker fan-out). aiohttp is still what ``warm`` (the CLI's
``gateway warm``) uses, imported there.

A hydrate's large-file chunks use ``fetch_into``: the body is received by a
reading thread on a blocking socket into one reused buffer and handed on
buffer by buffer to the fetcher's sink, which hashes and writes it into the
file in the same thread (store/rangeread.py, as for the store); chunks back to
back in one pack come with one ranged GET, as from the store (fetch.stream_run;
the gateway fetches a pack whole and serves its ranges from its copy),
so no chunk is copied into ``bytes`` or given a buffer of its own (the cold
fan-out's workers spent ~30% of their CPU on that copy and on allocating
zero-filled buffers for it, docs/GATEWAY.md).

Besides chunks and pack ranges (``fetch``, ``fetch_range``: the ChunkFetcher's
seam) a source reads whole immutable objects of any key family
(``fetch_object``: snapshots), format v2 trees by reference (``fetch_trees``)
and HEAD (``fetch_head``); those are what data/gatewaystore.py routes
through the pool.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from syncd.config import Config
from syncd.data.fetch import ChunkSource
from syncd.data.httpget import KEEP_BYTES, Connections, Response
from syncd.errors import NotFound, StoreError, TransientStoreError
from syncd.format.chunking import content_id
from syncd.format.manifest import ChunkRef, TreeRef
from syncd.store.base import Blob
from syncd.store.rangeread import Sink, ThreadedReads

# Immutable key families under a volume's prefix that gateways serve, each named by the content id
# of its bytes: family -> key below ``<prefix>/<owner>/<volume>/``. A new family is one line here
# (the gateway routes and caches it, workers read it through the pool).
FAMILIES: dict[str, Callable[[str], str]] = {
    "chunks": lambda i: f"chunks/{i[:2]}/{i}",
    "packs": lambda i: f"packs/{i}",
    "snapshots": lambda i: f"snapshots/{i}",
}
# Not format v2's tree packs (trees/<id>): their ids are drawn at random (FORMAT.md section 5), so a
# gateway cannot verify a pack by its name. Gateways serve the trees in them instead, each verified
# by its own id (``fetch_trees``, gateway/trees.py).

TREE_FRAME = struct.Struct(">Q")
TREES_PER_REQUEST = 4096  # references in one tree request (gateway/trees.py refuses more)  # a tree in a gateway's tree response: its length, then its bytes


def frame(trees: Sequence[bytes]) -> bytes:
    """A tree response body (gateway/trees.py): each tree's canonical bytes after an 8-byte length."""
    return b"".join(TREE_FRAME.pack(len(t)) + t for t in trees)


def unframe(body: bytes, count: int) -> list[bytes]:
    """The inverse of :func:`frame`; ValueError unless ``body`` is exactly ``count`` frames."""
    out, pos, view = [], 0, memoryview(body)
    for _ in range(count):
        if pos + TREE_FRAME.size > len(body):
            raise ValueError("tree response ends early")
        (size,) = TREE_FRAME.unpack_from(body, pos)
        pos += TREE_FRAME.size
        if pos + size > len(body):
            raise ValueError("tree response ends early")
        out.append(bytes(view[pos:pos + size]))
        pos += size
    if pos != len(body):
        raise ValueError("tree response has trailing bytes")
    return out


CONNECT_TIMEOUT = 3.0  # > one lost SYN (retransmitted after 1 s) under a fleet's connection burst
READ_TIMEOUT = 10.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


class GatewayUnavailable(TransientStoreError):
    """A gateway did not answer usefully (down, slow, refused the token, 5xx)."""


def rendezvous_weight(url: str, key: str) -> int:
    return int(content_id(f"{url}|{key}".encode())[:16], 16)


def rendezvous_order(urls: list[str] | tuple[str, ...], key: str) -> list[str]:
    """``urls`` in the order to try for ``key``: highest weight first."""
    return sorted(urls, key=lambda url: rendezvous_weight(url, key), reverse=True)


class Breaker:
    """Skip a failing gateway for a while: ``first`` seconds, doubling up to ``maximum``.

    Closed (``delay == 0``): every request goes. Open: none goes until
    ``open_until``. Then half-open: one probe at a time (a probe that never
    reports back frees its slot after ``probe_window`` seconds); the probe's
    success closes the breaker, its failure opens it for twice as long.
    """

    def __init__(self, first: float = BACKOFF_FIRST, maximum: float = BACKOFF_MAX,
                 probe_window: float = READ_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self.first, self.maximum, self.probe_window, self.clock = first, maximum, probe_window, clock
        self.delay = 0.0
        self.open_until = 0.0
        self.probe_until = 0.0
        self.trips = 0

    def allows(self) -> bool:
        if not self.delay:
            return True
        now = self.clock()
        if now < self.open_until or now < self.probe_until:
            return False
        self.probe_until = now + self.probe_window
        return True

    def failed(self) -> None:
        now = self.clock()
        if now < self.open_until:
            return  # concurrent requests failing together count as one failure
        self.delay = min(self.maximum, self.delay * 2 if self.delay else self.first)
        self.open_until = now + self.delay
        self.probe_until = 0.0
        self.trips += 1

    def succeeded(self) -> None:
        self.delay = self.open_until = self.probe_until = 0.0


class _Session:
    """The connections shared by the sources of one engine (data/httpget.py); body buffers are
    kept for reuse up to ``keep_bytes`` (the engine's byte budget: what can be in flight)."""

    def __init__(self, keep_bytes: int = KEEP_BYTES, threads: int = 8) -> None:
        self._connections: Connections | None = None
        self.keep_bytes = keep_bytes
        self.threads = threads   # reading threads per gateway for fetch_into

    def get(self) -> Connections:
        if self._connections is None:
            self._connections = Connections(keep_bytes=self.keep_bytes)
        return self._connections

    async def close(self) -> None:
        if self._connections is not None:
            self._connections.close()
            self._connections = None


def _range(span: tuple[int, int] | None) -> dict[str, str] | None:
    return {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else None


def _headers(token: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(extra or {})
    return headers


class GatewaySource:
    """One gateway as a ChunkSource: ``GET /v1/<owner>/<volume>/{chunks,packs}/<id>``."""

    def __init__(self, url: str, owner: str, token: str | None, session: _Session | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
                 breaker: Breaker | None = None) -> None:
        self.url, self.owner, self.token = url.rstrip("/"), owner, token
        # without userinfo: credentials in the URL never reach a metric label, status or log line
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        self.public_url = urlunsplit(parts._replace(netloc=host))
        self.name = f"gateway:{host or self.url}"
        self.session = session or _Session()
        # waiting for a pooled connection is not the gateway's fault (read_timeout bounds a hung one)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.breaker = breaker or Breaker()
        self.requests = self.failures = self.skipped = 0
        # fetch_into reads on blocking sockets (rangeread.py): credentials go in a header, not the URL
        self._plain_url = self.public_url
        self._auth: dict[str, str] | None = _headers(token)
        if parts.username is not None:   # as httpget: URL credentials are Basic auth, never with a token
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._auth = None if token else {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        self._reads: ThreadedReads | None = None

    def weight(self, key: str) -> int:
        return rendezvous_weight(self.url, key)

    async def fetch(self, volume: str, ref: ChunkRef) -> bytes | None:
        if ref.pack is not None:
            return await self.fetch_range(volume, ref.pack, ref.offset, ref.end)
        return await self.fetch_object(volume, "chunks", ref.id)

    async def fetch_into(self, volume: str, refs: Sequence[ChunkRef], sink: Sink) -> bool | None:
        """The bytes of ``refs`` (one chunk, or chunks back to back in one pack: one ranged GET)
        streamed into ``sink`` by a reading thread (store/rangeread.py: one reused 256 KiB
        buffer, ``sink.begin(size)`` then ``sink.write(view)`` per buffer, no copy into
        ``bytes``); True once they were delivered whole, None if the gateway passes (breaker
        open, 404). What ``sink`` raises is raised as it is; the gateway failing is
        GatewayUnavailable, as for :meth:`fetch`."""
        if not self.breaker.allows():
            self.skipped += 1
            return None
        first, last = refs[0], refs[-1]
        if first.pack is None:
            path, start, end = f"/v1/{self.owner}/{volume}/chunks/{first.id}", None, None
        else:
            path, start, end = f"/v1/{self.owner}/{volume}/packs/{first.pack}", first.offset, last.end
        if self._reads is None:
            self._reads = ThreadedReads(self.connect_timeout, self.read_timeout, self.session.threads)
        self.requests += 1
        if self._auth is None:
            self._failed()
            raise GatewayUnavailable(f"{self.name}: credentials in the URL and a token")
        try:
            await self._reads.read(self._plain_url + path, start, end, sink, self._auth)
        except NotFound:
            self.breaker.succeeded()
            return None
        except StoreError as exc:   # refused, reset, timed out, truncated, 5xx, a malformed answer
            self._failed()
            raise GatewayUnavailable(f"{self.name}: {exc}") from exc
        self.breaker.succeeded()
        return True

    async def fetch_range(self, volume: str, pack: str, start: int, end: int) -> bytes | None:
        blob = await self._get(f"/v1/{self.owner}/{volume}/packs/{pack}", (start, end))
        return None if blob is None else blob.data

    async def fetch_object(self, volume: str, family: str, object_id: str) -> bytes | None:
        """A whole immutable object (a FAMILIES key), not verified here; None if the gateway passes."""
        blob = await self._get(f"/v1/{self.owner}/{volume}/{family}/{object_id}", None)
        return None if blob is None else blob.data

    async def fetch_head(self, volume: str) -> Blob | None:
        """The volume's HEAD and the store's ETag for it, at most the gateway's HEAD TTL old."""
        return await self._get(f"/v1/{self.owner}/{volume}/HEAD", None)

    async def _get(self, path: str, span: tuple[int, int] | None) -> Blob | None:
        resp = await self._call("GET", path, _range(span), b"", (200, 206))
        if resp is None:
            return None
        data = resp.body
        if span is not None and resp.status == 200:
            data = data[span[0]:span[1]]
        return Blob(data, resp.headers.get("etag", ""))

    async def _call(self, method: str, path: str, extra: Mapping[str, str] | None, body: bytes,
                    ok: tuple[int, ...]) -> Response | None:
        """One request through the breaker: the answer, None (breaker open, or 404: the gateway
        passes), or GatewayUnavailable (down, slow, refused, any other status)."""
        if not self.breaker.allows():
            self.skipped += 1
            return None
        self.requests += 1
        try:
            resp = await self.session.get().request(method, self.url + path, _headers(self.token, extra),
                                                    self.connect_timeout, self.read_timeout, body)
        except (TimeoutError, OSError, ValueError) as exc:
            # ValueError: a malformed answer, or the request itself refused (credentials in the URL and a token)
            self._failed()
            raise GatewayUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if resp.status == 404:
            self.breaker.succeeded()
            return None
        if resp.status not in ok:
            self._failed()
            raise GatewayUnavailable(f"{self.name}: HTTP {resp.status} for {path}")
        self.breaker.succeeded()
        return resp

    def _failed(self) -> None:
        self.failures += 1
        self.breaker.failed()

    async def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None
        await self.session.close()

    async def fetch_trees(self, volume: str, pack: str, refs: Sequence[TreeRef]) -> list[bytes] | None:
        """The canonical bytes of format v2 trees of one tree pack, in order (gateway/trees.py), not
        verified here; None if the gateway passes (breaker open, or it has no such pack)."""
        body = json.dumps({"trees": [[r.id, r.offset, r.size] for r in refs]}).encode()
        resp = await self._call("POST", f"/v1/{self.owner}/{volume}/trees/{pack}",
                                {"Content-Type": "application/json"}, body, (200,))
        if resp is None:
            return None
        try:
            return unframe(resp.body, len(refs))
        except ValueError as exc:  # well-formed HTTP, garbled frames: this gateway failing
            self._failed()
            raise GatewayUnavailable(f"{self.name}: {exc} for trees of pack {pack}") from exc


def gateway_sources(config: Config, **options: Any) -> list[ChunkSource]:
    """A GatewaySource per ``config.gateways`` URL, sharing one HTTP session."""
    session = _Session(config.max_inflight_bytes, max(1, config.max_inflight_bytes // config.chunk_size))
    return [GatewaySource(url, config.owner, config.gateway_token, session, **options)
            for url in config.gateways]


async def warm(url: str, token: str | None, owner: str, volume: str, payload: Mapping[str, Any],
               connect_timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
    """Ask one gateway to prefetch objects of ``volume`` (POST .../warm); returns its JSON answer."""
    import aiohttp  # only here: the CLI's 'gateway warm' (workers read through httpget.py)

    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(f"{url.rstrip('/')}/v1/{owner}/{volume}/warm", json=dict(payload),
                                    headers=_headers(token)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise GatewayUnavailable(f"{url}: warm failed with HTTP {resp.status}: {text.strip()}")
                answer: dict[str, Any] = await resp.json()
                return answer
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise GatewayUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
