"""One conformance suite for every ObjectStore backend, on the real SeaweedFS.

Each test runs once per backend (``obstore``, ``aiobotocore``) on the bare
backend (no retry wrapper), so it sees exactly what the backend does: ranged
and streamed reads, conditional PUTs (a 20-writer ``If-None-Match`` race with
exactly one winner, ``If-Match`` advance), multipart, listing and deleting, the
fault proxy's resets, 503s, truncated and stalled bodies (each one request,
one TransientStoreError, and the next request works), a PUT cut off after its
headers (the old object survives), and credentials from the standard AWS
chain (a shared credentials file, no environment variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from syncd.config import Config, MiB
from syncd.engine.wiring import open_engine
from syncd.errors import NotFound, PreconditionFailed, TransientStoreError
from syncd.store.base import Blob, ObjectStore, open_stream, put_immutable, read_into
from syncd.store.devserver import CREDENTIALS
from syncd.store.obstore import ObstoreStore
from syncd.store.select import BACKENDS, open_store

from .faultproxy import FaultProxy, Rule


@pytest.fixture(params=BACKENDS)
def cfg(request: pytest.FixtureRequest, config: Config) -> Config:
    return config.replace(store_backend=request.param, multipart_threshold=6 * MiB,
                          multipart_part_size=5 * MiB)


@pytest.fixture
async def store(cfg: Config) -> AsyncIterator[ObjectStore]:
    s = await open_store(cfg)
    try:
        yield s
    finally:
        await s.close()


def key(cfg: Config, name: str) -> str:
    return f"{cfg.prefix}/{name}"


async def read_stream(store: ObjectStore, k: str, start: int | None = None, end: int | None = None) -> bytes:
    async with open_stream(store, k, start, end) as stream:
        data = b"".join([p async for p in stream.pieces])
        assert len(data) == stream.size
        return data


async def test_default_backend_is_obstore(config: Config) -> None:
    assert Config().store_backend == "obstore" and Config.from_env({}).store_backend == "obstore"
    assert Config.from_env({"SYNCD_STORE_BACKEND": "aiobotocore"}).store_backend == "aiobotocore"
    async with open_engine(config) as eng:
        bottom = eng.counter.inner.inner.inner  # type: ignore[attr-defined]
        assert isinstance(bottom, ObstoreStore)


async def test_whole_ranged_and_streamed_reads(store: ObjectStore, cfg: Config) -> None:
    data = os.urandom(3 * MiB + 123)
    k = key(cfg, "obj")
    etag = await store.put(k, data)
    info = await store.head(k)
    assert (info.size, info.etag) == (len(data), etag) and info.last_modified > 0
    assert (await store.get(k)).data == data
    assert (await store.get(k)).etag == etag
    assert (await store.get(k, 10, 1000)).data == data[10:1000]
    assert (await store.get(k, 2 * MiB)).data == data[2 * MiB:]
    assert await read_stream(store, k) == data
    assert await read_stream(store, k, MiB + 7, 3 * MiB) == data[MiB + 7:3 * MiB]
    with pytest.raises(NotFound):
        await store.get(k, len(data) + 10, len(data) + 20)   # 416: no such bytes
    for missing in (store.get(key(cfg, "nope")), store.head(key(cfg, "nope"))):
        with pytest.raises(NotFound):
            await missing
    with pytest.raises(NotFound):
        await read_stream(store, key(cfg, "nope"))


class Collect:
    """A read_into sink that keeps what it was given (and can refuse a size)."""

    def __init__(self, refuse: int | None = None) -> None:
        self.sizes: list[int] = []
        self.data = bytearray()
        self.refuse = refuse

    def begin(self, size: int) -> None:
        if size == self.refuse:
            raise ValueError("refused")
        self.sizes.append(size)

    def write(self, view: memoryview) -> None:
        self.data += view


async def read_sink(store: ObjectStore, k: str, start: int | None = None, end: int | None = None) -> bytes | None:
    sink = Collect()
    if not await read_into(store, k, start, end, sink):
        return None
    assert sink.sizes == [len(sink.data)]
    return bytes(sink.data)


async def test_reads_into_a_sink(store: ObjectStore, cfg: Config) -> None:
    data = os.urandom(3 * MiB + 123)
    k = key(cfg, "sink")
    await store.put(k, data)
    assert await read_sink(store, k) == data   # every backend reads into sinks (signed URL, rangeread.py)
    assert await read_sink(store, k, MiB + 7, 3 * MiB) == data[MiB + 7:3 * MiB]
    for _ in range(20):                  # kept-alive connections are reused, answers stay whole
        assert await read_sink(store, k, 5, 6) == data[5:6]
    with pytest.raises(ValueError, match="refused"):   # refused before a byte was written
        await read_into(store, k, 0, 10, Collect(refuse=10))
    assert await read_sink(store, k, 0, 10) == data[:10]
    with pytest.raises(NotFound):
        await read_sink(store, key(cfg, "nope"))
    with pytest.raises(NotFound):
        await read_sink(store, k, len(data) + 10, len(data) + 20)


async def test_a_cancelled_read_into_stops_writing(store: ObjectStore, cfg: Config) -> None:
    k = key(cfg, "slow")
    await store.put(k, os.urandom(8 * MiB))
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Slow(Collect):
        def write(self, view: memoryview) -> None:
            loop.call_soon_threadsafe(started.set)
            super().write(view)
            import time
            time.sleep(0.05)   # a slow disk: the read is still going when it is cancelled

    sink = Slow()
    task = asyncio.ensure_future(read_into(store, k, None, None, sink))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    written = len(sink.data)
    await asyncio.sleep(0.2)
    assert len(sink.data) == written < 8 * MiB   # the thread had stopped when the cancel returned


async def test_if_none_match_race_has_exactly_one_winner(store: ObjectStore, cfg: Config) -> None:
    k = key(cfg, "race")
    bodies = [f"writer {i}".encode() * 100 for i in range(20)]
    results = await asyncio.gather(*(store.put(k, b, if_none_match=True) for b in bodies), return_exceptions=True)
    winners = [i for i, r in enumerate(results) if isinstance(r, str)]
    assert len(winners) == 1, results
    assert all(isinstance(r, PreconditionFailed) for i, r in enumerate(results) if i not in winners)
    assert (await store.get(k)).data == bodies[winners[0]]


async def test_if_match_advances_only_from_the_current_etag(store: ObjectStore, cfg: Config) -> None:
    k = key(cfg, "head")
    first = await store.put(k, b"v1", if_none_match=True)
    second = await store.put(k, b"v2", if_match=first)
    assert second != first and (await store.get(k)).data == b"v2"
    with pytest.raises(PreconditionFailed):
        await store.put(k, b"v3", if_match=first)          # a writer that read v1 loses
    assert (await store.get(k)).data == b"v2"
    with pytest.raises((PreconditionFailed, NotFound)):
        await store.put(key(cfg, "absent"), b"x", if_match=first)


async def test_multipart_and_put_immutable(store: ObjectStore, cfg: Config) -> None:
    big = os.urandom(13 * MiB + 5)                         # above the 6 MiB threshold: 3 parts
    k = key(cfg, "big")
    await store.put(k, big)
    assert (await store.head(k)).size == len(big) and (await store.get(k)).data == big
    assert await put_immutable(store, key(cfg, "imm"), big) is True
    assert await put_immutable(store, key(cfg, "imm"), big) is False   # already there, whole
    await store.put(key(cfg, "imm"), b"")                  # a damaged leftover ...
    assert await put_immutable(store, key(cfg, "imm"), big) is True    # ... is rewritten
    assert (await store.get(key(cfg, "imm"))).data == big
    assert await store.abort_stale_uploads(cfg.prefix + "/", 3600) == 0


async def test_listing_and_deleting(store: ObjectStore, cfg: Config) -> None:
    names = ["a/1", "a/2/x", "a/3", "ab/1", "b/1"]
    await asyncio.gather(*(store.put(key(cfg, n), n.encode()) for n in names))
    listed = [o async for o in store.list_objects(key(cfg, "a/"))]
    assert [o.key for o in listed] == [key(cfg, n) for n in ("a/1", "a/2/x", "a/3")]
    assert [o.size for o in listed] == [3, 5, 3] and all(o.etag for o in listed)
    assert [o.key async for o in store.list_objects(key(cfg, "a"))] == [key(cfg, n) for n in names[:4]]
    assert await store.list_prefixes(cfg.prefix + "/") == [key(cfg, p) for p in ("a/", "ab/", "b/")]
    assert await store.list_prefixes(key(cfg, "a/")) == [key(cfg, "a/2/")]
    await store.delete([key(cfg, n) for n in names] + [key(cfg, "never-there")])
    assert [o async for o in store.list_objects(cfg.prefix + "/")] == []
    assert await store.list_prefixes(key(cfg, "nothing/")) == []


@contextlib.asynccontextmanager
async def through_proxy(cfg: Config, s3_endpoint: str) -> AsyncIterator[tuple[ObjectStore, FaultProxy]]:
    proxy = await FaultProxy(s3_endpoint).start()
    s = await open_store(cfg.replace(s3_endpoint=proxy.endpoint, read_timeout=0.5, connect_timeout=1.0))
    try:
        yield s, proxy
    finally:
        await s.close()
        await proxy.close()


GET_FAULTS = {"reset": 0.0, "slowdown": 0.0, "truncate": 0.0, "stall": 2.0, "stall_body": 2.0}


@pytest.mark.parametrize("fault", sorted(GET_FAULTS))
async def test_get_faults_are_transient_and_the_next_request_works(
        cfg: Config, s3_endpoint: str, fault: str) -> None:
    data = os.urandom(2 * MiB)
    async with through_proxy(cfg, s3_endpoint) as (s, proxy):
        k = key(cfg, "f")
        await s.put(k, data)
        reads = [(lambda: whole(s.get(k)), data), (lambda: read_stream(s, k), data),
                 (lambda: whole(s.get(k, 100, MiB)), data[100:MiB])]
        reads.append((lambda: read_sink(s, k, 100, 2 * MiB), data[100:2 * MiB]))
        for n, (read, expected) in enumerate(reads, 1):
            proxy.rules = [Rule(fault, method="GET", times=1, delay=GET_FAULTS[fault])]
            with pytest.raises(TransientStoreError):
                await read()
            assert proxy.injected[fault] == n
            assert await read() == expected


async def whole(blob: Awaitable[Blob]) -> bytes:
    return (await blob).data


@pytest.mark.parametrize("fault", ["reset", "reset_after", "slowdown", "stall"])
async def test_put_and_head_faults_are_transient(cfg: Config, s3_endpoint: str, fault: str) -> None:
    async with through_proxy(cfg, s3_endpoint) as (s, proxy):
        k = key(cfg, "p")
        proxy.rules = [Rule(fault, method="PUT", times=1, delay=2.0)]
        with pytest.raises(TransientStoreError):
            await s.put(k, b"body", if_none_match=True)
        if fault == "reset_after":   # it landed: the retry's precondition says so
            with pytest.raises(PreconditionFailed):
                await s.put(k, b"body", if_none_match=True)
        else:
            await s.put(k, b"body", if_none_match=True)
        proxy.rules = [Rule(fault if fault != "reset_after" else "reset", method="HEAD", times=1, delay=2.0)]
        with pytest.raises(TransientStoreError):
            await s.head(k)
        assert (await s.head(k)).size == 4


async def test_put_cut_off_after_its_headers_keeps_the_old_object(cfg: Config, s3_endpoint: str) -> None:
    async with through_proxy(cfg, s3_endpoint) as (s, proxy):
        k = key(cfg, "HEAD")
        etag = await s.put(k, b"old contents")
        proxy.rules = [Rule("cut_request", method="PUT", delay=0.0)]
        for put in (lambda: s.put(k, b'{"format": 1}', if_match=etag), lambda: s.put(k, b'{"format": 1}')):
            with pytest.raises(TransientStoreError):
                await put()
        proxy.rules = []
        assert (await s.get(k)).data == b"old contents"


async def test_credentials_from_a_shared_credentials_file(cfg: Config, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {CREDENTIALS['AWS_ACCESS_KEY_ID']}\n"
                     f"aws_secret_access_key = {CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s = await open_store(cfg)
    try:
        k = key(cfg, f"cred-{uuid.uuid4().hex[:6]}")
        await s.put(k, b"signed with file credentials")
        assert (await s.get(k)).data == b"signed with file credentials"
    finally:
        await s.close()
