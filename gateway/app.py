"""The gateway's HTTP surface (aiohttp): routes, auth, status codes. No caching logic.

Routes::

    GET|HEAD /v1/{owner}/{volume}/{family}/{id} an immutable object (chunks, packs, snapshots:
                                                engine/gatewayclient.FAMILIES), Range supported
    GET|HEAD /v1/{owner}/{volume}/HEAD          the commit point, at most --head-ttl old (heads.py)
    POST     /v1/{owner}/{volume}/trees/{pack}  format v2 trees named in the JSON body, each verified
                                                by its id, canonical bytes framed (trees.py)
    POST     /v1/{owner}/{volume}/warm          prefetch into the cache (JSON body, optional:
                                                {"snapshot": id} or {"chunks": [...], "packs": [...]})
    GET      /healthz                           "ok", no token
    GET      /metrics                           Prometheus text, no token

Status codes: 200/206 body, 304 for a matching ``If-None-Match``, 400 invalid
owner, volume or id (names are validated before any key is built, so nothing
outside the volume's prefix is reachable), 401 no or unknown token, 403 token
of another owner, 404 no such object in that volume, 416 unsatisfiable range,
502 the store returned bad bytes or refused, 503 the store is unavailable.

At most ``max_requests`` object requests are served at once (each holds an
open file, or in memory a small object or one small tree: flights of 32 KiB
and more are spooled to disk); a request beyond that waits up to ``QUEUE_WAIT``
seconds for a slot and is then shed with 503, which a worker treats like a
down gateway: it reads that object from the next gateway or the store.

Request checks any route can reuse: ``denied`` (token -> 401/403, a header
that is not UTF-8 included), ``resolve_range`` (RFC 9110 byte ranges: one
range, ``bytes=-0`` and anything else odd is 416), ``none_match``
(``If-None-Match`` compared as whole entity-tags, only for an object that
exists) and ``verify_whole`` (HEAD answers only once the body is verified,
exactly like GET). Connection bounds and timeouts live in guard.py.

Content is immutable and named by its hash, so the ETag is the strong
``"<id>"`` and responses may be cached forever. A body is streamed as the
service produces it; if the object fails verification after the headers went
out, the connection is closed short of Content-Length, so the client sees a
broken response, never a complete wrong one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from syncd.data.gatewayclient import FAMILIES, TREE_FRAME
from syncd.errors import (
    IntegrityError,
    InvalidName,
    NotFound,
    SnapshotNotFound,
    StoreError,
    SyncdError,
    TransientStoreError,
    VolumeNotFound,
)
from syncd.format.chunking import is_content_id

from .auth import Decision, Tokens
from .guard import GUARD, ConnectionGuard, ServerLimits  # noqa: F401 (ServerLimits: for callers of create_app)
from .peers import PEER_HEADER
from .send import send_body, send_trees
from .service import Body, GatewayService, ObjectRef, RangeOnly
from .trees import parse_request

log = logging.getLogger(__name__)

SERVICE: web.AppKey[GatewayService] = web.AppKey("service", GatewayService)
TOKENS: web.AppKey[Tokens] = web.AppKey("tokens", Tokens)
IMMUTABLE = "public, max-age=31536000, immutable"
WARM_BODY_LIMIT = 64 * 1024 * 1024  # a warm request may list ~1.8 million ids
MAX_REQUESTS = 256                   # object requests served at once: bounds memory and open files
QUEUE_WAIT = 2.0                     # seconds a request may wait for a slot before a 503
SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("slots", asyncio.Semaphore)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unsatisfiable(ValueError):
    pass


_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)-([0-9]*)[ \t]*", re.IGNORECASE)
_ETAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\U0010ffff]*"'
_ETAG_LIST = re.compile(rf"[ \t]*(?:{_ETAG})?[ \t]*(?:,[ \t]*(?:{_ETAG})?[ \t]*)*")
_ETAG_VALUE = re.compile(r'(?:W/)?"([^"]*)"')
_HUGE = 10 ** 19    # any position with more digits is beyond every object


def _position(digits: str) -> int:
    return int(digits) if len(digits) < 19 else _HUGE


def resolve_range(request: web.BaseRequest, size: int) -> tuple[int, int] | None:
    """``(start, end)`` of a Range request against ``size`` bytes, None for the whole body.

    RFC 9110 section 14.1.2, for the one range we serve: ``bytes=first-last``
    (last clamped to the object), ``bytes=first-`` and ``bytes=-suffix``
    (the last ``suffix`` bytes; ``-0`` asks for none, which cannot be
    satisfied). Anything else (several ranges, another unit, a reversed or
    malformed range, a first byte at or past the end) is Unsatisfiable: 416.
    """
    header = request.headers.get("Range")
    if header is None:
        return None
    match = _RANGE.fullmatch(header)
    if match is None or match.group(1) == match.group(2) == "":
        raise Unsatisfiable(f"unsupported range {header[:100]!r}: one 'bytes=first-last' range")
    first, last = match.groups()
    if not first:
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(f"range {header[:100]!r} selects no byte of {size}")
        return max(0, size - suffix), size
    start = _position(first)
    if last and _position(last) < start:
        raise Unsatisfiable(f"range {header[:100]!r} ends before it starts")
    if start >= size:
        raise Unsatisfiable(f"range {header[:100]!r} outside {size} bytes")
    return start, size if not last else min(_position(last) + 1, size)


def none_match(header: str | None, object_id: str) -> bool:
    """True when an ``If-None-Match`` value matches the entity-tag ``"<object_id>"`` (RFC 9110 13.1.2).

    ``*`` or a list of entity-tags compared weakly (``W/"x"`` matches
    ``"x"``), each as a whole: a header that merely contains the id, or is
    not a valid list, matches nothing. The caller checks that the object
    exists first (``*`` means "any current representation").
    """
    if header is None:
        return False
    if header.strip(" \t") == "*":
        return True
    if _ETAG_LIST.fullmatch(header) is None:
        return False
    return object_id in _ETAG_VALUE.findall(header)


async def verify_whole(body: Body, size: int) -> None:
    """Wait until ``body`` is known to match its id (raises SyncdError if not): HEAD answers like GET."""
    async for _ in body.read(0, size):
        pass


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def status_for(exc: SyncdError) -> int:
    if isinstance(exc, InvalidName):
        return 400
    if isinstance(exc, (NotFound, VolumeNotFound, SnapshotNotFound)):
        return 404
    if isinstance(exc, TransientStoreError):
        return 503
    if isinstance(exc, (IntegrityError, StoreError)):
        return 502
    return 500


def denied(request: web.Request, owner: str) -> web.Response | None:
    """A 401 or 403 response unless the request's token grants ``owner``."""
    decision = request.app[TOKENS].decide(request.headers.get("Authorization"), owner)
    if decision is Decision.UNAUTHENTICATED:
        return web.json_response({"error": "a valid bearer token is required"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="syncd-gateway"'})
    if decision is Decision.FORBIDDEN:
        return error_response(403, f"this token does not grant owner {owner!r}")
    return None


async def object_handler(request: web.Request) -> web.StreamResponse:
    kind = request.match_info["kind"]
    started = time.monotonic()
    metrics = request.app[SERVICE].metrics
    response = await _serve_object(request, kind)
    metrics.requests.labels(kind, str(response.status)).inc()
    metrics.latency.labels(kind).observe(time.monotonic() - started)
    return response


async def _serve_object(request: web.Request, kind: str) -> web.StreamResponse:
    owner, volume, object_id = (request.match_info[k] for k in ("owner", "volume", "id"))
    refusal = denied(request, owner)
    if refusal is not None:
        return refusal
    try:
        obj = ObjectRef(owner, volume, kind, object_id)
    except InvalidName as exc:
        return error_response(400, str(exc))
    headers = {"ETag": f'"{object_id}"', "Cache-Control": IMMUTABLE, "Accept-Ranges": "bytes"}
    service = request.app[SERVICE]
    try:
        body, size = await _open(service, obj, "Range" in request.headers, request)
    except SyncdError as exc:
        return error_response(status_for(exc), str(exc))
    try:                                       # every way out closes the body (a cache hit is an open file)
        if request.method == "HEAD":
            try:
                await verify_whole(body, size)  # HEAD answers like GET: never 200 for a corrupt object
            except SyncdError as exc:
                return error_response(status_for(exc), str(exc))
        if none_match(request.headers.get("If-None-Match"), object_id):
            return web.Response(status=304, headers=headers)
        return await _respond(request, body, size, obj, headers)
    finally:
        body.close()


async def _open(service: GatewayService, obj: ObjectRef, ranged: bool,
                request: web.Request) -> tuple[Body, int]:
    """The body and size of ``obj``; a large object's ranged miss becomes a relayed range.
    A peer gateway's request (``X-Syncd-Peer``) is answered from cache or a flight only (peers.py)."""
    body = await service.open(obj, ranged, cache_only=PEER_HEADER in request.headers,
                              authorization=request.headers.get("Authorization"))
    try:
        return body, await body.length()
    except RangeOnly as exc:
        if ranged:
            return service.relay(obj, exc.size), exc.size
        body = await service.open(obj)  # a whole request that joined a ranged miss: fetch it whole
        return body, await body.length()


async def _respond(request: web.Request, body: Body, size: int, obj: ObjectRef,
                   headers: dict[str, str]) -> web.StreamResponse:
    try:
        span = resolve_range(request, size)
    except Unsatisfiable as exc:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers, text=f"{exc}\n")
    start, end = span if span is not None else (0, size)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["X-Syncd-Verified"] = getattr(body, "verified_by", "gateway")
    response = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
    response.content_type = "application/octet-stream"
    response.content_length = end - start
    what = f"{obj.owner}/{obj.volume} {obj.kind}/{obj.id}"
    try:
        await response.prepare(request)
        if request.method != "HEAD":
            await send_body(request, response, body, what, obj.kind, start, end, request.app[SERVICE].metrics)
    except ConnectionResetError:  # the client went away (gave up, or fell back to the store)
        log.info("client left before %s was sent", what)
    return response


async def head_handler(request: web.Request) -> web.StreamResponse:
    """``GET /v1/<owner>/<volume>/HEAD``: the commit point, at most the HEAD TTL old (heads.py).

    The store's ETag goes along (``ETag``), so a worker can advance HEAD with
    ``If-Match`` from what it read here; ``Age`` says how old the copy is."""
    started = time.monotonic()
    service = request.app[SERVICE]
    owner, volume = request.match_info["owner"], request.match_info["volume"]
    response: web.StreamResponse | None = denied(request, owner)
    if response is None:
        try:
            copy = await service.head(owner, volume)
        except SyncdError as exc:
            response = error_response(status_for(exc), str(exc))
        else:
            age = max(0.0, service.heads.clock() - copy.fetched)
            response = web.Response(body=copy.data, content_type="application/json", headers={
                "ETag": copy.etag, "Cache-Control": "no-cache", "Age": str(int(age))})
            service.metrics.served_bytes.labels("HEAD").inc(len(copy.data))
    service.metrics.requests.labels("HEAD", str(response.status)).inc()
    service.metrics.latency.labels("HEAD").observe(time.monotonic() - started)
    return response


TREE_BODY_LIMIT = 1 << 20  # 4096 references of ~55 bytes fit with room to spare


async def trees_handler(request: web.Request) -> web.StreamResponse:
    """``POST /v1/<owner>/<volume>/trees/<pack>``: the named trees of one tree pack, verified (trees.py)."""
    started = time.monotonic()
    service = request.app[SERVICE]
    owner, volume, pack = (request.match_info[k] for k in ("owner", "volume", "pack"))
    response = denied(request, owner) or await _serve_trees(request, service, owner, volume, pack)
    service.metrics.requests.labels("trees", str(response.status)).inc()
    service.metrics.latency.labels("trees").observe(time.monotonic() - started)
    return response


async def _serve_trees(request: web.Request, service: GatewayService, owner: str, volume: str,
                       pack: str) -> web.StreamResponse:
    if request.content_length is None or request.content_length > TREE_BODY_LIMIT:
        return error_response(413, f"a tree request body has a length of at most {TREE_BODY_LIMIT} bytes")
    try:
        doc = json.loads(await request.read())
    except ValueError:
        return error_response(400, "body is not JSON")
    try:
        trees = parse_request(pack, doc)
        sizes = await service.trees.sizes(owner, volume, pack, trees)  # each verified and cached
    except SyncdError as exc:
        return error_response(status_for(exc), str(exc))
    response = web.StreamResponse(headers={"X-Syncd-Verified": "gateway", "Cache-Control": "no-store"})
    response.content_type = "application/octet-stream"
    response.content_length = sum(TREE_FRAME.size + size for size in sizes)
    try:
        await response.prepare(request)
        await send_trees(request, response, service.trees, owner,
                         [(t.id, size) for t, size in zip(trees, sizes, strict=True)], service.metrics)
    except ConnectionResetError:  # the client went away
        log.info("client left before the trees of %s/%s pack %s were sent", owner, volume, pack)
    return response


async def warm_handler(request: web.Request) -> web.Response:
    owner, volume = request.match_info["owner"], request.match_info["volume"]
    refusal = denied(request, owner)
    if refusal is not None:
        return refusal
    try:
        doc: Any = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        return error_response(400, "body is not JSON")
    if not isinstance(doc, dict):
        return error_response(400, "body must be a JSON object")
    chunks, packs, snapshot = doc.get("chunks"), doc.get("packs"), doc.get("snapshot")
    for ids in (chunks, packs):
        if ids is not None and (not isinstance(ids, list) or not all(is_content_id(i) for i in ids)):
            return error_response(400, "chunks and packs must be lists of content ids")
    if snapshot is not None and not is_content_id(snapshot):
        return error_response(400, "invalid snapshot id")
    try:
        result = await request.app[SERVICE].warm(owner, volume, snapshot, chunks, packs)
    except SyncdError as exc:
        return error_response(status_for(exc), str(exc))
    return web.json_response(result.__dict__)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[SERVICE].metrics
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})


@web.middleware
async def guard_connections(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 503 on a connection beyond the per-client or total bound (see guard.py)."""
    guard = request.app.get(GUARD)
    if guard is None:
        return await handler(request)
    guard.spoke(request.protocol)
    if guard.refused(request.protocol):
        request.app[SERVICE].metrics.requests.labels("connection", "503").inc()
        response = error_response(503, "gateway busy: too many connections from this client or in all")
        response.force_close()
        return response
    return await handler(request)


@web.middleware
async def limit_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bound object requests in flight; shed what cannot get a slot soon."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    slots = request.app[SLOTS]
    try:
        await asyncio.wait_for(slots.acquire(), QUEUE_WAIT)
    except TimeoutError:
        return error_response(503, "gateway busy: too many requests in flight")
    try:
        return await handler(request)
    finally:
        slots.release()


def create_app(service: GatewayService, tokens: Tokens, max_requests: int = MAX_REQUESTS,
               guard: ConnectionGuard | None = None) -> web.Application:
    app = web.Application(client_max_size=WARM_BODY_LIMIT, middlewares=[guard_connections, limit_requests])
    app[SERVICE] = service
    app[TOKENS] = tokens
    if guard is not None:
        app[GUARD] = guard
    app[SLOTS] = asyncio.Semaphore(max_requests)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get(r"/v1/{owner}/{volume}/HEAD", head_handler)
    app.router.add_get("/v1/{owner}/{volume}/{kind:" + "|".join(FAMILIES) + "}/{id}", object_handler)
    app.router.add_post("/v1/{owner}/{volume}/warm", warm_handler)
    app.router.add_post("/v1/{owner}/{volume}/trees/{pack}", trees_handler)
    return app
