"""``S3Store``: the ObjectStore backend for any S3 API, and the only aiobotocore import.

It moves bytes and translates failures, nothing else: no hashing, no caching,
no retries (botocore's own retries and aiohttp's silent one-time re-send of an
idempotent request on a dropped connection are switched off, so that the retry
wrapper alone decides, by exception class, and counts every attempt). Translation::

    404 / NoSuchKey / NoSuchBucket,
    416 InvalidRange (no such bytes)          -> NotFound
    412 PreconditionFailed                    -> PreconditionFailed
    409 ConditionalRequestConflict, 429, 5xx,
    SlowDown, throttling, RequestTimeout      -> TransientStoreError
    dropped connections, timeouts, bodies
    shorter than their Content-Length         -> TransientStoreError
    401, 403 (bad or unauthorised credentials) -> AccessDenied
    missing credentials                       -> ConfigError
    anything else                             -> StoreError

A PUT that may replace an object (``If-Match`` or unconditional) or is small
carries ``Content-MD5``. Not for integrity in flight (syncd verifies its own
ids) but because SeaweedFS, given a request whose client died after the
headers, stores an *empty* object, even over an existing one under
``If-Match``: a writer killed at that instant would blank HEAD. With
``Content-MD5`` the server rejects the short body instead. Large
``If-None-Match`` PUTs (new chunks and packs) skip the digest, which would
cost more CPU than hashing the chunk: at worst they leave an empty *new*
object, which no snapshot names and ``store.put_immutable`` repairs when the
same bytes are uploaded again.

Objects above ``multipart_threshold`` are uploaded with multipart (parts in
parallel, aborted on failure). A process killed mid-upload cannot abort, so
:meth:`S3Store.abort_stale_uploads` lists the unfinished uploads under a prefix
and aborts those older than a grace age (younger ones may belong to a writer
that is still running). botocore's CRC checksums are only computed where
S3 requires them, and bodies are sent as UNSIGNED-PAYLOAD even over plain http
(where botocore would SHA-256 each body on the event loop: 0.55 s of a 512 MiB
commit): syncd verifies xxh3 ids end to end, and a second hash over every byte
would cost as much CPU again.

``get_stream`` is the streaming variant of ``get`` (see store.open_stream):
the gateway uses it to hand bytes on to waiting readers as they arrive.

Large reads skip aiohttp's body stream (which hands Python a new ``bytes`` per
piece): :meth:`S3Store.read_into` pre-signs the GET with botocore (SigV4 query
signing: the credentials and signature stay botocore's) and receives the body on
a blocking socket in a worker thread straight into the caller's sink, as the
obstore backend does (store/rangeread.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import botocore.exceptions as bce
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import get_session

from syncd.config import Config
from syncd.errors import AccessDenied, ConfigError, NotFound, PreconditionFailed, StoreError, TransientStoreError
from syncd.store.base import Blob, BlobStream, ObjectInfo, missing_bucket
from syncd.store.rangeread import Sink, ThreadedReads
from syncd.store.reach import check_bucket as check_bucket_of

log = logging.getLogger(__name__)
STREAM_PIECE = 256 * 1024

SIGNED_FOR = 900             # seconds a pre-signed GET is valid: it is used at once, this is slack for clocks
MD5_ALWAYS_BELOW = 1 << 20   # bytes: below this every PUT carries Content-MD5 (see above)
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "ConditionalRequestConflict", "OperationAborted",
    "RequestLimitExceeded", "TooManyRequests",
}
_NETWORK_ERRORS = (
    bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError, aiohttp.ClientError,
    asyncio.TimeoutError, ConnectionError, OSError,
)


def translate(exc: BaseException, key: str) -> Exception:
    """Map a botocore/aiohttp failure on ``key`` to a syncd error class."""
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "NotFound", "404", "NoSuchBucket", "NoSuchUpload", "InvalidRange") \
                or status in (404, 416):
            return NotFound(f"{key}: {code or status}")
        if code == "PreconditionFailed" or status == 412:
            return PreconditionFailed(f"{key}: precondition failed")
        if status in (401, 403):
            return AccessDenied(f"{key}: {code or status} {err.get('Message', '')}".strip(), code)
        if code in _TRANSIENT_CODES or status in (408, 409, 429) or status >= 500:
            return TransientStoreError(f"{key}: {code or status} {err.get('Message', '')}".strip())
        return StoreError(f"{key}: {code or status} {err.get('Message', '')}".strip())
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return ConfigError(f"no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ({exc})")
    if isinstance(exc, _NETWORK_ERRORS):
        return TransientStoreError(f"{key}: {type(exc).__name__}: {exc}")
    return StoreError(f"{key}: {type(exc).__name__}: {exc}")


async def content_md5(data: bytes) -> str:
    """The ``Content-MD5`` header value of ``data`` (off the event loop when large)."""
    if len(data) > 1 << 20:
        digest = await asyncio.to_thread(lambda: hashlib.md5(data, usedforsecurity=False).digest())
    else:
        digest = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


class _SingleAttemptSession(AIOHTTPSession):  # type: ignore[misc]
    """aiohttp quietly re-sends an idempotent request once when its connection drops.

    That hidden retry has no backoff, is not counted, and doubles every bound the
    retry wrapper promises; switch it off so that RetryingStore alone decides.
    """

    async def _get_session(self, proxy_url: Any) -> Any:
        session = await super()._get_session(proxy_url)
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        return session


class S3Store:
    """An S3 bucket seen through aiobotocore. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bucket = config.bucket
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._reads = ThreadedReads(config.connect_timeout, config.read_timeout, config.max_connections)

    @classmethod
    async def open(cls, config: Config, *, check_bucket: bool = True) -> S3Store:
        """Open and check the bucket (created if missing when ``config.create_bucket``)."""
        self = cls(config)
        session = get_session()
        aio_config = AioConfig(
            max_pool_connections=config.max_connections + 4,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"total_max_attempts": 1},
            # UNSIGNED-PAYLOAD: botocore would otherwise SHA-256 every body sent over plain http
            # (a local MinIO/SeaweedFS), on the event loop; syncd verifies xxh3 ids on every read
            s3={"addressing_style": "path" if config.s3_endpoint else "auto",
                "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            http_session_cls=_SingleAttemptSession,
        )
        self._client = await self._stack.enter_async_context(session.create_client(
            "s3", endpoint_url=config.s3_endpoint, region_name=config.region, config=aio_config))
        if check_bucket:
            try:
                await check_bucket_of(config, self, self.ensure_bucket)   # retried, explained (reach.py)
            except BaseException:
                await self._stack.aclose()   # else aiohttp logs "Unclosed client session" at exit
                raise
        return self

    async def ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except Exception as exc:
            mapped = translate(exc, self.bucket)
            if not isinstance(mapped, NotFound):
                raise mapped from exc
        if not self.config.create_bucket:
            raise missing_bucket(self.config)
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if not self.config.s3_endpoint and self.config.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        try:
            await self._client.create_bucket(**kwargs)
        except bce.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise translate(exc, self.bucket) from exc
        except Exception as exc:
            raise translate(exc, self.bucket) from exc
        else:
            log.warning("created bucket %r at %s (it did not exist)", self.bucket,
                        self.config.s3_endpoint or "AWS S3")

    async def close(self) -> None:
        self._reads.close()
        await self._stack.aclose()

    async def read_into(self, key: str, start: int | None, end: int | None, sink: Sink) -> bool:
        """GET ``key`` (bytes [start, end) when given) into ``sink`` from a worker thread (rangeread.py).

        Raises as :meth:`get` does, and ``rangeread.Unsupported`` for an answer the direct reader
        does not take. Cancelled, it stops the read and returns once the thread has."""
        try:
            url = await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=SIGNED_FOR)
        except Exception as exc:
            raise translate(exc, key) from exc
        await self._reads.read(str(url), start, end, sink)
        return True

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start is not None or end is not None:
            first = start or 0
            kwargs["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
        try:
            resp = await self._client.get_object(**kwargs)
            async with resp["Body"] as body:
                data = await body.read()
        except Exception as exc:
            raise translate(exc, key) from exc
        expected = resp.get("ContentLength")
        if expected is not None and len(data) != expected:
            raise TransientStoreError(f"{key}: truncated body ({len(data)} of {expected} bytes)")
        return Blob(data, str(resp.get("ETag", "")))

    def _get_args(self, key: str, start: int | None, end: int | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start is not None or end is not None:
            first = start or 0
            kwargs["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
        return kwargs

    @contextlib.asynccontextmanager
    async def get_stream(self, key: str, start: int | None = None,
                         end: int | None = None) -> AsyncIterator[BlobStream]:
        """Like :meth:`get`, but the body is yielded in pieces as it arrives."""
        try:
            resp = await self._client.get_object(**self._get_args(key, start, end))
        except Exception as exc:
            raise translate(exc, key) from exc
        size = int(resp["ContentLength"])
        async with resp["Body"] as body:
            yield BlobStream(size, str(resp.get("ETag", "")), _pieces(body, key, size))

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        if len(data) > self.config.multipart_threshold and not if_match:
            return await self._put_multipart(key, data, if_none_match)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data}
        if not if_none_match or len(data) <= MD5_ALWAYS_BELOW:
            kwargs["ContentMD5"] = await content_md5(data)
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            resp = await self._client.put_object(**kwargs)
        except Exception as exc:
            raise translate(exc, key) from exc
        return str(resp.get("ETag", ""))

    async def _put_multipart(self, key: str, data: bytes, if_none_match: bool) -> str:
        part = self.config.multipart_part_size
        try:
            upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise translate(exc, key) from exc
        upload_id = upload["UploadId"]
        view = memoryview(data)
        limit = asyncio.Semaphore(max(1, min(8, self.config.max_connections)))

        async def one(number: int, offset: int) -> dict[str, Any]:
            async with limit:
                resp = await self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=bytes(view[offset:offset + part]))
                return {"PartNumber": number, "ETag": resp["ETag"]}

        try:
            parts = await asyncio.gather(*(one(i + 1, off) for i, off in enumerate(range(0, len(data), part))))
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id,
                                      "MultipartUpload": {"Parts": list(parts)}}
            if if_none_match:
                kwargs["IfNoneMatch"] = "*"
            resp = await self._client.complete_multipart_upload(**kwargs)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id))
            if isinstance(exc, Exception):
                raise translate(exc, key) from exc
            raise
        return str(resp.get("ETag", ""))

    async def head(self, key: str) -> ObjectInfo:
        try:
            resp = await self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise translate(exc, key) from exc
        modified = resp.get("LastModified")
        return ObjectInfo(key, int(resp["ContentLength"]), str(resp.get("ETag", "")),
                          modified.timestamp() if modified else 0.0)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"], int(item["Size"]), str(item.get("ETag", "")),
                                     item["LastModified"].timestamp())
        except Exception as exc:
            raise translate(exc, prefix) from exc

    async def list_prefixes(self, prefix: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        out: list[str] = []
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                out.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        except Exception as exc:
            raise translate(exc, prefix) from exc
        return sorted(out)

    async def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            try:
                resp = await self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except Exception as exc:
                raise translate(exc, batch[0]) from exc
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise StoreError(f"delete failed for {len(errors)} keys, first: {errors[0]}")

    async def multipart_uploads(self, prefix: str) -> list[tuple[str, str, float]]:
        """Unfinished multipart uploads under ``prefix``: ``(key, upload_id, initiated)``."""
        paginator = self._client.get_paginator("list_multipart_uploads")
        out: list[tuple[str, str, float]] = []
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend((u["Key"], u["UploadId"], u["Initiated"].timestamp()) for u in page.get("Uploads", []))
        except Exception as exc:
            raise translate(exc, prefix) from exc
        return out

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        cutoff = time.time() - older_than
        aborted = 0
        for key, upload_id, initiated in await self.multipart_uploads(prefix):
            if initiated > cutoff:
                continue
            try:
                await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception as exc:
                mapped = translate(exc, key)
                if not isinstance(mapped, NotFound):  # finished or aborted meanwhile: fine
                    raise mapped from exc
            aborted += 1
        return aborted


async def _pieces(body: Any, key: str, size: int) -> AsyncIterator[bytes]:
    received = 0
    try:
        while received < size:
            piece = await body.read(min(STREAM_PIECE, size - received))
            if not piece:
                break
            received += len(piece)
            yield piece
    except Exception as exc:
        raise translate(exc, key) from exc
    if received != size:
        raise TransientStoreError(f"{key}: truncated body ({received} of {size} bytes)")
