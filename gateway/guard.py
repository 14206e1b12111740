"""Bounds on connections: how long a client may idle or dawdle, and how many connections it may hold.

Anyone who can reach the gateway's port can open connections, without a
token, before any request check runs; aiohttp on its own keeps an idle
connection for 3630 s, so some thousand idle sockets used to exhaust the
common 1024-descriptor limit and stop service for every owner. The bounds::

    keepalive_timeout   an idle keep-alive connection is closed after this (aiohttp's own timer)
    header_timeout      a new connection must deliver its first request head within this,
                        however slowly it drips bytes (a slow-header client is cut off)
    max_per_client      connections open at once from one client address
    max_connections     connections open at once in all

A connection beyond either count is accepted (refusing at accept time would
reset clients that already sent their request) but marked: its request is
answered 503 with ``Connection: close`` (counted as
``syncd_gateway_requests_total{kind="connection",code="503"}``), and it gets
only ``OVER_LIMIT_GRACE`` seconds to send it. Workers treat a 503 like a
down gateway and read from the next source. So descriptors are bounded by
``max_connections`` plus what arrives within the grace period.

The counting hooks the aiohttp server's ``connection_made``/``connection_lost``
(``ConnectionGuard.attach``), the only place that sees connections that never
send a request; the ``guard_connections`` middleware answers the marked ones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

OVER_LIMIT_GRACE = 1.0   # seconds a connection beyond the bounds has to send the request we answer 503


@dataclass(frozen=True)
class ServerLimits:
    keepalive_timeout: float = 15.0
    header_timeout: float = 10.0
    max_connections: int = 768      # below the common 1024-fd limit, with room for store connections and the cache
    max_per_client: int = 256       # a worker uses a few dozen; loopback benchmarks put many workers on one address

    def __post_init__(self) -> None:
        if min(self.keepalive_timeout, self.header_timeout) <= 0 or min(self.max_connections,
                                                                         self.max_per_client) < 1:
            raise ValueError(f"invalid server limits {self}")


class ConnectionGuard:
    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.per_client: Counter[str] = Counter()
        self.total = 0
        self._clients: dict[RequestHandler, str] = {}
        self._over: set[RequestHandler] = set()
        self._timers: dict[RequestHandler, asyncio.TimerHandle] = {}

    def attach(self, server: web.Server) -> None:
        """Count ``server``'s connections (call once, after ``AppRunner.setup()``)."""
        made: Callable[..., None] = server.connection_made
        lost: Callable[..., None] = server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.opened(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self.closed(handler)
            lost(handler, exc)

        setattr(server, "connection_made", connection_made)   # noqa: B010 (an instance hook, not a method)
        setattr(server, "connection_lost", connection_lost)   # noqa: B010

    def opened(self, handler: RequestHandler, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        self._clients[handler] = client
        self.per_client[client] += 1
        self.total += 1
        deadline = self.limits.header_timeout
        if self.total > self.limits.max_connections or self.per_client[client] > self.limits.max_per_client:
            self._over.add(handler)
            deadline = min(deadline, OVER_LIMIT_GRACE)
        loop = asyncio.get_running_loop()
        self._timers[handler] = loop.call_later(deadline, handler.force_close)

    def spoke(self, handler: RequestHandler) -> None:
        """A request head arrived on ``handler``: from now on aiohttp's keep-alive timer applies."""
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def refused(self, handler: RequestHandler) -> bool:
        return handler in self._over

    def closed(self, handler: RequestHandler) -> None:
        client = self._clients.pop(handler, None)
        if client is None:
            return
        self.spoke(handler)
        self._over.discard(handler)
        self.total -= 1
        self.per_client[client] -= 1
        if not self.per_client[client]:
            del self.per_client[client]


GUARD: web.AppKey[ConnectionGuard] = web.AppKey("guard", ConnectionGuard)
