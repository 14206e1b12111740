"""Sending a body: cache files with ``sendfile``, everything else piece by piece.

A verified cache hit (gateway/objcache.py) is an open file whose bytes were
hashed just before; ``loop.sendfile`` hands that descriptor to the kernel
(``os.sendfile``), so a hit's bytes go from the page cache to the socket
without a copy into Python, without the event loop touching each piece, and
without holding the object in memory. This is what aiohttp's ``FileResponse``
does, but from the descriptor that was verified rather than from a path opened
again (which could be a different file by then). Where the transport cannot
``sendfile`` (TLS, some platforms) the file is read and written in 1 MiB
pieces instead.

Flights (misses in progress) and relayed ranges are streamed piece by piece as
they arrive. If a body fails (the object did not verify, the store broke off)
the connection is closed short of Content-Length: the client sees a broken
response, never a complete wrong one.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from syncd.errors import SyncdError

from .metrics import GatewayMetrics
from .service import Body, CachedBody

log = logging.getLogger(__name__)


async def send_body(request: web.Request, response: web.StreamResponse, body: Body, what: str,
                    kind: str, start: int, end: int, metrics: GatewayMetrics) -> None:
    """Write bytes ``[start, end)`` of ``body`` after the prepared headers, then EOF."""
    served = metrics.served_bytes.labels(kind)
    if isinstance(body, CachedBody) and body.file is not None and request.transport is not None:
        try:
            await asyncio.get_running_loop().sendfile(request.transport, body.file, start, end - start)
        except NotImplementedError:
            pass  # below: the same bytes, piece by piece
        else:
            served.inc(end - start)
            metrics.sendfile_bytes.inc(end - start)
            await response.write_eof()
            return
    try:
        async for piece in body.read(start, end):
            await response.write(piece)
            served.inc(len(piece))
    except SyncdError as exc:
        log.warning("aborting response for %s: %s", what, exc)
        if request.transport is not None:
            request.transport.close()  # short of Content-Length: the client sees a broken body
        return
    await response.write_eof()
