"""data/httpget.py, the workers' GET client for gateways, against small servers on loopback.

Counts connections instead of timing: answers on one kept-alive connection,
a kept connection the server closed is retried once on a new one, and every
way an answer can go wrong (cut short, chunked, silent) is an error, never a
short body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from syncd.data.httpget import Connections, ProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server; yields its URL and a list that counts accepted connections."""
    accepted: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", accepted
    finally:
        for w in writers:
            w.close()
        srv.close()
        await srv.wait_closed()


async def _request(reader: asyncio.StreamReader) -> list[str]:
    head = await reader.readuntil(b"\r\n\r\n")
    return head.decode().split("\r\n")[:-2]


async def test_answers_come_over_one_kept_connection() -> None:
    seen: list[list[str]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            lines = await _request(reader)
            seen.append(lines)
            body = lines[0].split()[1].encode() * 1000
            writer.write(b"HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    pool = Connections()
    async with server(answer) as (url, accepted):
        for i in range(5):
            resp = await pool.get(f"{url}/p{i}", {"Range": "bytes=0-9"}, 1.0, 1.0)
            assert resp.status == 200 and resp.body == f"/p{i}".encode() * 1000
            assert resp.headers["etag"] == '"x"'
        assert accepted == [1]  # one connection for all five
        assert f"Host: {url[7:]}" in seen[0] and "Range: bytes=0-9" in seen[0]
        pool.close()


async def test_a_kept_connection_the_server_closed_is_retried_once_on_a_new_one() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # without saying Connection: close

    pool = Connections()
    async with server(once) as (url, accepted):
        for _ in range(3):
            assert (await pool.get(url + "/x", {}, 1.0, 1.0)).body == b"ok"
        assert len(accepted) == 3
        pool.close()


@pytest.mark.parametrize("answer, error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50, ConnectionResetError),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", ProtocolError),
    (b"SSH-2.0-OpenSSH\r\n\r\n", ProtocolError),
])
async def test_a_bad_answer_is_an_error_never_a_short_body(answer: bytes, error: type[Exception]) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async with server(bad) as (url, _):
        with pytest.raises(error):
            await Connections().get(url + "/x", {}, 1.0, 1.0)


async def test_a_server_that_goes_silent_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.Event().wait()

    async with server(silent) as (url, _):
        with pytest.raises(TimeoutError):
            await Connections().get(url + "/x", {}, 1.0, 0.1)


async def test_credentials_in_the_url_are_basic_auth_and_never_sent_with_a_token() -> None:
    seen: list[list[str]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _request(reader))
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with server(answer) as (url, _):
        authed = url.replace("http://", "http://al%40ice:s3cret@")
        assert (await Connections().get(authed + "/x", {}, 1.0, 1.0)).status == 404
        assert "Authorization: Basic YWxAaWNlOnMzY3JldA==" in seen[0]
        with pytest.raises(ProtocolError):
            await Connections().get(authed + "/x", {"Authorization": "Bearer t"}, 1.0, 1.0)


async def test_a_post_carries_its_body_and_keeps_the_connection() -> None:
    """The gateway's tree route is a POST that only reads: body sent with its length, answer read whole."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            lines = await _request(reader)
            length = int(next(v for k, _, v in (x.partition(": ") for x in lines) if k == "Content-Length"))
            body = await reader.readexactly(length)
            answer = lines[0].encode() + b"|" + body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
            await writer.drain()

    pool = Connections()
    async with server(echo) as (url, accepted):
        first = await pool.request("POST", url + "/t", {}, 1.0, 1.0, b'{"trees": []}')
        second = await pool.request("POST", url + "/t", {}, 1.0, 1.0, b"x" * 100_000)
    pool.close()
    assert first.status == 200 and first.body == b'POST /t HTTP/1.1|{"trees": []}'
    assert second.body == b"POST /t HTTP/1.1|" + b"x" * 100_000
    assert len(accepted) == 1
