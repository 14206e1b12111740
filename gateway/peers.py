"""Peer fill: a gateway's miss asks the other gateways' caches before it asks the store.

In a pool every object belongs to one gateway (rendezvous rank 1), but a
second gateway ends up asked for it whenever a worker gives up on the first:
the first was killed or restarting, or only *looked* dead (a worker whose own
event loop was starved timed out connecting). Without peer fill each such
fallback is one more GET of the object from the store, and when the first
gateway comes back it fetches its share again: a kill and restart cost about
twice the objects in flight plus the whole unfetched share.

With ``--pool`` (the same URL list as the workers' ``SYNCD_GATEWAY``) a
gateway that misses asks the other gateways first, in the object's rendezvous
order, with ``X-Syncd-Peer: cache-only``: a peer answers from its verified
cache or from a fetch it has in flight *from the store*, and otherwise says
404 at once. It never goes to the store for a peer (a request can never
bounce around the pool), and it never hands out a flight that is itself fed
by a peer: two gateways whose misses asked each other would each wait for the
other's bytes, while a store-fed flight waits on nobody.
Only after every peer said no (or failed) does the gateway GET the store.

* a fallback gateway asks the object's own gateway first: if that one is in
  fact alive (the worker only timed out) the object costs no store GET, even
  while the owner is still fetching it;
* a restarted gateway refills its share from the gateway that served it while
  it was down: its share is fetched from the store once, in total.

What a peer sends goes into the flight like store bytes: hashed as it
arrives, released to readers only once the whole object matched its id, so a
peer is trusted for speed only. A peer that breaks off part-way is resumed
from the store with a ranged GET from the first missing byte. The client's
``Authorization`` header is forwarded (every gateway of a pool reads the same
tokens file). Each peer has a breaker (gatewayclient.Breaker), so a dead peer
costs about one failed connect per breaker period, not one per miss.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp

from syncd.data.gatewayclient import Breaker, rendezvous_order
from syncd.errors import NotFound, TransientStoreError
from syncd.store.base import BlobStream

PEER_HEADER = "X-Syncd-Peer"
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 10.0
PIECE = 1 << 20


class Peers:
    def __init__(self, pool: list[str] | tuple[str, ...], me: str) -> None:
        self.pool = [u.rstrip("/") for u in pool]
        self.me = me.rstrip("/")
        self.breakers = {u: Breaker() for u in self.pool if u != self.me}
        self.timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=CONNECT_TIMEOUT,
                                             sock_read=READ_TIMEOUT)
        self._session: aiohttp.ClientSession | None = None

    def __bool__(self) -> bool:
        return bool(self.breakers)

    def order(self, key: str) -> list[str]:
        """The other gateways for ``key``, in its rendezvous order."""
        return [u for u in rendezvous_order(self.pool, key) if u != self.me]

    @contextlib.asynccontextmanager
    async def open(self, url: str, path: str, authorization: str | None) -> AsyncIterator[BlobStream]:
        """A peer's cached copy of ``path`` as a stream; NotFound if it has none, else
        TransientStoreError when it cannot be asked (breaker open, down, slow, 5xx)."""
        breaker = self.breakers[url]
        if not breaker.allows():
            raise TransientStoreError(f"peer {url}: breaker open")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {PEER_HEADER: "cache-only"}
        if authorization:
            headers["Authorization"] = authorization
        try:
            async with self._session.get(url + path, headers=headers, timeout=self.timeout) as resp:
                if resp.status == 404:
                    breaker.succeeded()
                    raise NotFound(f"peer {url} does not have {path}")
                if resp.status != 200 or resp.content_length is None:
                    raise TransientStoreError(f"peer {url}: HTTP {resp.status} for {path}")
                breaker.succeeded()
                yield BlobStream(resp.content_length, resp.headers.get("ETag", ""), _pieces(resp))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            breaker.failed()
            raise TransientStoreError(f"peer {url}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _pieces(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for piece in resp.content.iter_chunked(PIECE):
            yield piece
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise TransientStoreError(f"peer body broke off: {type(exc).__name__}: {exc}") from exc
