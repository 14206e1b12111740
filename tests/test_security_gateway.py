"""Issue 10, the gateway side: idle and slow clients, connection bounds, bad headers, HEAD, Range, If-None-Match.

Each test is the regression test of one finding of the security review
(docs/SECURITY.md names it). The gateway runs in-process on a free loopback
port against the session's SeaweedFS; requests are written byte for byte on
raw sockets so that no client library normalises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.app import ServerLimits
from gateway.auth import Tokens
from gateway.main import running
from syncd.config import Config, MiB
from syncd.engine.wiring import open_engine
from syncd.format.chunking import content_id

from .gatewayutil import Gateway, metric, serve_gateway

TOKENS = {"tok-alice": "alice"}
ALICE = b"Authorization: Bearer tok-alice\r\n"
CLOSE_WITHIN = 10.0   # seconds: far above the configured timeouts, far below aiohttp's 3630 s default


@contextlib.asynccontextmanager
async def limited_gateway(config: Config, tmp_path: Path, limits: ServerLimits,
                          tokens: dict[str, str] | None = None) -> AsyncIterator[Gateway]:
    async with running(config, Tokens(tokens), "127.0.0.1", 0, tmp_path / "gw-cache", 64 * MiB,
                       limits=limits) as (service, port):
        yield Gateway(f"http://127.0.0.1:{port}", service)


def port_of(gw: Gateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


async def connect(gw: Gateway, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(gw), local_addr=(source, 0))


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes,
                   headers: bytes = b"", method: bytes = b"GET", close: bool = False) -> tuple[int, bytes, bytes]:
    """One request on an open connection; (status, header block, body)."""
    writer.write(method + b" " + path + b" HTTP/1.1\r\nHost: gw\r\n" + headers
                 + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_WITHIN)
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    body = b""
    if method != b"HEAD" and length:
        body = await asyncio.wait_for(reader.readexactly(length[0]), CLOSE_WITHIN)
    return int(head.split()[1]), head, body


async def once(gw: Gateway, path: bytes, headers: bytes = b"", method: bytes = b"GET") -> tuple[int, bytes, bytes]:
    reader, writer = await connect(gw)
    try:
        return await exchange(reader, writer, path, headers, method, close=True)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF or reset), False if it is still open after the bound."""
    try:
        while await asyncio.wait_for(reader.read(65536), CLOSE_WITHIN):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


async def put_object(config: Config, data: bytes, volume: str = "vol", stored: bytes | None = None) -> str:
    """Put ``data``'s chunk object (or ``stored`` bytes under its key); its id."""
    cid = content_id(data)
    async with open_engine(config, use_cache=False) as engine:
        await engine.store.put(engine.layout.chunk(volume, cid), data if stored is None else stored)
    return cid


# ---------------------------------------------------------------- 4. idle and slow clients, connection bounds

async def test_idle_and_slow_header_connections_are_closed(config: Config, tmp_path: Path) -> None:
    async with limited_gateway(config, tmp_path, ServerLimits(keepalive_timeout=0.5, header_timeout=0.5)) as gw:
        idle_reader, idle_writer = await connect(gw)             # says nothing at all
        reader, writer = await connect(gw)                       # one request, then idle on keep-alive
        assert (await exchange(reader, writer, b"/healthz"))[0] == 200
        slow_reader, slow_writer = await connect(gw)             # a header that never ends
        slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
        dripped = 0
        while not slow_reader.at_eof() and dripped < 100:
            try:
                slow_writer.write(b"X-Drip: 1\r\n")
                await slow_writer.drain()
            except ConnectionError:
                break
            dripped += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slow_reader.read(65536), 0.1)
        assert dripped < 100, "a client dripping one header line every 0.1 s was never cut off"
        assert await closed_by_server(idle_reader)
        assert await closed_by_server(reader)
        for w in (idle_writer, writer, slow_writer):
            w.close()


async def test_connections_beyond_the_per_client_and_total_bounds_get_503(config: Config, tmp_path: Path) -> None:
    limits = ServerLimits(keepalive_timeout=60, header_timeout=60, max_connections=5, max_per_client=3)
    async with limited_gateway(config, tmp_path, limits) as gw:
        held = [await connect(gw) for _ in range(3)]             # 127.0.0.1 is at its bound
        for reader, writer in held:
            assert (await exchange(reader, writer, b"/healthz"))[0] == 200
        status, head, _ = await once(gw, b"/healthz")
        assert status == 503 and b"connection" in head.lower()
        held += [await connect(gw, "127.0.0.2") for _ in range(2)]   # another client: 5 in all
        for reader, writer in held[3:]:
            assert (await exchange(reader, writer, b"/healthz"))[0] == 200
        reader, writer = await connect(gw, "127.0.0.3")           # the total bound
        assert (await exchange(reader, writer, b"/healthz", close=True))[0] == 503
        writer.close()
        held[0][1].close()                                          # a slot frees up
        assert await closed_by_server(held[0][0])
        for _ in range(100):
            status, _, _ = await once(gw, b"/healthz")
            if status == 200:
                break
            await asyncio.sleep(0.05)     # the server notices the close on its next loop turn
        assert status == 200
        text = (await exchange(*held[1], b"/metrics"))[2].decode()
        assert metric(text, "syncd_gateway_requests_total", kind="connection", code="503") >= 2
        for _, w in held[1:]:
            w.close()


# ---------------------------------------------------------------- 3. ids and names ending in a newline

async def test_ids_and_names_ending_in_a_newline_never_reach_the_store(config: Config, tmp_path: Path) -> None:
    cid = await put_object(config, os.urandom(1000))
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        for path in [f"/v1/alice/vol/chunks/{cid}%0A", f"/v1/alice/vol/chunks/{cid}%0D%0A",
                     f"/v1/alice/vol/packs/{cid}%0A", f"/v1/alice/vol%0A/chunks/{cid}",
                     f"/v1/alice/vol/chunks/%0A{cid}"]:
            status, _, _ = await once(gw, path.encode(), ALICE)
            assert status in (400, 404), (path, status)
        assert sum(gw.origin.calls.values()) == 0, dict(gw.origin.keys)
        assert (await once(gw, f"/v1/alice/vol/chunks/{cid}".encode(), ALICE))[0] == 200   # the real one works
    async with serve_gateway(config, tmp_path, name="open") as gw:          # --no-auth: any owner name
        for path in [f"/v1/alice%0A/vol/chunks/{cid}", "/v1/alice%0A/vol/warm"]:
            method = b"POST" if path.endswith("warm") else b"GET"
            status, _, _ = await once(gw, path.encode(), b"", method)
            assert status in (400, 404), (path, status)
        reader, writer = await connect(gw)
        body = ('{"chunks": ["' + cid + '\\n"]}').encode()
        writer.write(b"POST /v1/alice/vol/warm HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                     + body)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_WITHIN)
        writer.close()
        assert int(head.split()[1]) == 400
        assert sum(gw.origin.calls.values()) == 0, dict(gw.origin.keys)


# ---------------------------------------------------------------- 5. a non-UTF-8 Authorization header

async def test_a_non_utf8_authorization_header_is_401_and_counted(config: Config, tmp_path: Path) -> None:
    cid = await put_object(config, os.urandom(1000))
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        for header in [b"Authorization: Bearer \xff\xfe\r\n", b"Authorization: \xc3\x28\r\n",
                       b"Authorization: Bearer tok-alice\xff\r\n"]:
            for path, method in [(f"/v1/alice/vol/chunks/{cid}".encode(), b"GET"),
                                 (f"/v1/alice/vol/chunks/{cid}".encode(), b"HEAD"),
                                 (b"/v1/alice/vol/warm", b"POST")]:
                status, _, _ = await once(gw, path, header + b"Content-Length: 0\r\n", method)
                assert status in (400, 401), (header, method, status)
        text = (await once(gw, b"/metrics"))[2].decode()
        counted = sum(metric(text, "syncd_gateway_requests_total", kind="chunks", code=c) for c in ("400", "401"))
        assert counted == 6
        assert metric(text, "syncd_gateway_requests_total", kind="chunks", code="500") == 0
        assert sum(gw.origin.calls.values()) == 0


# ---------------------------------------------------------------- 7. HEAD, Range, If-None-Match

async def test_head_on_a_corrupt_object_is_not_200(config: Config, tmp_path: Path) -> None:
    good = os.urandom(5000)
    cid = await put_object(config, good)
    bad = await put_object(config, os.urandom(3000), stored=os.urandom(3000))   # bytes that do not hash to the id
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        status, head, _ = await once(gw, f"/v1/alice/vol/chunks/{bad}".encode(), ALICE, b"HEAD")
        assert status == 502, head
        status, head, _ = await once(gw, f"/v1/alice/vol/chunks/{cid}".encode(), ALICE, b"HEAD")
        assert status == 200 and b"Content-Length: 5000" in head
        status, _, _ = await once(gw, f"/v1/alice/vol/chunks/{'0' * 32}".encode(), ALICE, b"HEAD")
        assert status == 404


async def test_ranges_follow_rfc_9110(config: Config, tmp_path: Path) -> None:
    data = os.urandom(1000)
    cid = await put_object(config, data)
    path = f"/v1/alice/vol/chunks/{cid}".encode()
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        for spec in [b"bytes=-0", b"bytes=1000-", b"bytes=1000-1001", b"bytes=--1", b"bytes=0-1-2", b"bytes=-",
                     b"bytes=1-0", b"bytes=+1-2", b"bytes=0x10-20"]:
            status, head, _ = await once(gw, path, ALICE + b"Range: " + spec + b"\r\n")
            assert status == 416, (spec, status)
            assert b"Content-Range: bytes */1000" in head
        for spec, (start, end) in {b"bytes=-5": (995, 1000), b"bytes=-5000": (0, 1000), b"bytes=0-": (0, 1000),
                                   b"bytes=999-": (999, 1000), b"bytes=10-19": (10, 20),
                                   b"bytes=10-99999999999999999999": (10, 1000), b"Bytes=0-0": (0, 1)}.items():
            status, head, body = await once(gw, path, ALICE + b"Range: " + spec + b"\r\n")
            assert (status, body) == (206, data[start:end]), spec
            assert f"Content-Range: bytes {start}-{end - 1}/1000".encode() in head


async def test_if_none_match_compares_entity_tags_exactly(config: Config, tmp_path: Path) -> None:
    cid = await put_object(config, os.urandom(1000))
    path = f"/v1/alice/vol/chunks/{cid}".encode()
    missing = f"/v1/alice/vol/chunks/{'e' * 32}".encode()
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        for value, expected in [(f'"{cid}"', 304), (f'W/"{cid}"', 304), (f'"other", "{cid}"', 304),
                                (f'"a","b" , W/"{cid}"', 304), ("*", 304),
                                (f'"{cid}x"', 200), (f'x"{cid}"', 200), (f'"x{cid}"', 200), (f'"{cid[:-1]}"', 200),
                                (f'"{cid.upper()}"', 200), (f'"a"{cid}"', 200), ('"other"', 200)]:
            status, _, _ = await once(gw, path, ALICE + f"If-None-Match: {value}\r\n".encode())
            assert status == expected, (value, status)
        for value in [f'"{"e" * 32}"', "*"]:                  # no such object: the condition cannot hold
            status, _, _ = await once(gw, missing, ALICE + f"If-None-Match: {value}\r\n".encode())
            assert status == 404, (value, status)
