"""Sending a body: files with ``sendfile``, everything else piece by piece.

A verified cache hit (gateway/objcache.py) is an open file whose bytes were
hashed just before; ``loop.sendfile`` hands that descriptor to the kernel
(``os.sendfile``), so a hit's bytes go from the page cache to the socket
without a copy into Python, without the event loop touching each piece, and
without holding the object in memory. This is what aiohttp's ``FileResponse``
does, but from the descriptor that was verified rather than from a path opened
again (which could be a different file by then).

A spooled flight (a miss in progress, gateway/flight.py) is sent the same
way, in steps: ``flight.ready(pos, end)`` says how far the spool file has
been written (and releases the range's end only once the whole object has
verified), and each step is one ``sendfile`` of what is new. The readers of
one flight share its descriptor, so only the native ``sendfile`` (positional
``os.sendfile``, never the file's seek position) is used on it.

Where the transport cannot ``sendfile`` (TLS, some platforms) the bytes are
read and written in 1 MiB pieces instead; small flights and relayed ranges
are streamed piece by piece as they arrive. If a body fails (the object did
not verify, the store broke off) the connection is closed short of
Content-Length: the client sees a broken response, never a complete wrong
one.
"""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web
from prometheus_client import Counter

from syncd.data.gatewayclient import TREE_FRAME
from syncd.errors import SyncdError, TransientStoreError

from .flight import Flight
from .metrics import GatewayMetrics
from .service import Body, CachedBody
from .treefiles import Copy
from .trees import TreeServer

log = logging.getLogger(__name__)


async def send_body(request: web.Request, response: web.StreamResponse, body: Body, what: str,
                    kind: str, start: int, end: int, metrics: GatewayMetrics) -> None:
    """Write bytes ``[start, end)`` of ``body`` after the prepared headers, then EOF."""
    served = metrics.served_bytes.labels(kind)
    transport = request.transport
    try:
        if isinstance(body, CachedBody) and body.file is not None and transport is not None:
            try:
                await asyncio.get_running_loop().sendfile(transport, body.file, start, end - start)
            except NotImplementedError:
                pass  # below: the same bytes, piece by piece
            else:
                served.inc(end - start)
                metrics.sendfile_bytes.inc(end - start)
                await response.write_eof()
                return
        elif isinstance(body, Flight) and body.spool is not None and transport is not None:
            start = await _sendfile_flight(transport, body, start, end, served, metrics)
        async for piece in body.read(start, end):
            await response.write(piece)
            served.inc(len(piece))
    except SyncdError as exc:
        log.warning("aborting response for %s: %s", what, exc)
        if transport is not None:
            transport.close()  # short of Content-Length: the client sees a broken body
        return
    await response.write_eof()


async def send_trees(request: web.Request, response: web.StreamResponse, trees: TreeServer, owner: str,
                     wanted: list[tuple[str, int]], metrics: GatewayMetrics) -> None:
    """A tree answer after its prepared headers: for each ``(tree id, size)`` its 8-byte length and
    its verified bytes, one tree at a time (one shared copy each: gateway/treefiles.py), then EOF."""
    served = metrics.served_bytes.labels("trees")
    try:
        for tree_id, size in wanted:
            await response.write(TREE_FRAME.pack(size))
            copy = await trees.acquire(owner, tree_id)
            if copy is None or copy.size != size:
                raise TransientStoreError(f"tree {tree_id} left the gateway's cache while it was answered")
            try:
                await _send_copy(request, response, copy)
            finally:
                trees.release(copy)
            served.inc(size)
    except SyncdError as exc:
        log.warning("aborting a tree answer for %s: %s", owner, exc)
        if request.transport is not None:
            request.transport.close()  # short of Content-Length: the client sees a broken body
        return
    await response.write_eof()


async def _send_copy(request: web.Request, response: web.StreamResponse, copy: Copy) -> None:
    if copy.data is not None:
        await response.write(copy.data)
        return
    assert copy.file is not None  # held: our reference keeps it open
    transport, pos = request.transport, 0
    if transport is not None:
        try:
            pos = await asyncio.get_running_loop().sendfile(transport, copy.file, 0, copy.size, fallback=False)
        except (NotImplementedError, RuntimeError):  # no native sendfile here: nothing was sent
            pos = 0
    while pos < copy.size:  # the same bytes, piece by piece (shared descriptor: positional reads)
        piece = await asyncio.to_thread(os.pread, copy.file.fileno(), min(1 << 20, copy.size - pos), pos)
        if not piece:
            raise TransientStoreError(f"cached tree file ended at byte {pos} of {copy.size}")
        await response.write(piece)
        pos += len(piece)


async def _sendfile_flight(transport: asyncio.WriteTransport, flight: Flight, pos: int, end: int,
                           served: Counter, metrics: GatewayMetrics) -> int:
    """Send ``[pos, end)`` of a spooled flight as it is written; returns where it stopped
    (``end``, or where sendfile turned out not to be available: the caller reads on from there)."""
    loop = asyncio.get_running_loop()
    while pos < end:
        upto = await flight.ready(pos, end)
        spool = flight.spool
        assert spool is not None  # this reader's reference keeps it open
        try:
            sent = await loop.sendfile(transport, spool, pos, upto - pos, fallback=False)
        except (NotImplementedError, RuntimeError):  # no native sendfile here: nothing was sent
            return pos
        if sent != upto - pos:
            raise TransientStoreError(f"{flight.id}: spool file ended at {pos + sent} (wanted {upto})")
        pos = upto
        served.inc(sent)
        metrics.sendfile_bytes.inc(sent)
    return pos
