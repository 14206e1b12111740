"""``ObstoreStore``: the ObjectStore backend on ``obstore`` (Rust ``object_store`` + reqwest + tokio).

Why a second backend: the HTTP client, not Python as such, set syncd's speed.
aiobotocore runs botocore's request pipeline (model lookup, event hooks,
signing, XML parsing) on the event loop for every request, and aiohttp hands
the body over in small reads; obstore signs and moves bytes on its own tokio
threads and gives Python whole pieces of a body. Measured on this machine in
the ``bench/sweep.py`` A/B runs (docs/BENCHMARKS.md): the same cold hydrate with
less CPU per GiB and a shorter start-up (no botocore import on the read path).

It moves bytes and translates failures, nothing else, like ``S3Store``. Its
own retries are off (``max_retries=0``), so ``RetryingStore`` alone decides
and counts. Translation at the boundary::

    NotFoundError (a FileNotFoundError), HTTP 404, 416   -> NotFound
    AlreadyExistsError, PreconditionError, HTTP 412      -> PreconditionFailed
    HTTP 408, 409, 429, 5xx; connection resets, timeouts,
    bodies cut short (no HTTP status at all)             -> TransientStoreError
    PermissionDeniedError, UnauthenticatedError, 401, 403 -> AccessDenied
    other 4xx, bad paths or configuration                -> StoreError
    no credentials anywhere in the AWS chain             -> ConfigError

obstore raises one ``GenericError`` for every HTTP status it has no class for;
the status is only in its message, so :func:`_status` reads it from there (the
one place syncd looks at error text, because the library offers nothing else).

Conditional writes map one to one: ``If-None-Match: *`` is ``mode="create"``,
``If-Match: <etag>`` is ``mode={"e_tag": etag}`` (object_store's ``etag``
conditional-put mode, which SeaweedFS, MinIO and AWS all honour). The
``Content-MD5`` guard of ``S3Store`` (SeaweedFS stores an *empty* object when a
client dies right after a PUT's headers, even under If-Match) cannot be set per
request here; ``x-amz-checksum-sha256`` does the same job (SeaweedFS rejects a
body that does not match it; tests/test_store_conformance.py cuts a PUT off and
checks), so two handles share the settings: ``_guarded`` sends that checksum and
takes every PUT that may replace an object or is small, ``_data`` takes the
large ``If-None-Match`` PUTs of new chunks and packs without it (SHA-256 over
every uploaded byte would cost more CPU than the chunk's own id; a damaged new
object is repaired by ``put_immutable``, see base.py).

Large reads skip obstore's body stream: :meth:`ObstoreStore.read_into` signs
the GET with obstore (a pre-signed URL, so credentials and signing stay
object_store's) and receives the body on a blocking socket in a worker thread
straight into the caller's sink (rangeread.py: no per-piece buffers, the CPU
a cold hydrate spent on them).

What object_store has no API for, and stays on aiobotocore (``S3Store``, opened
only when needed, so a hydrate never imports botocore): creating the bucket
(checked with one LIST at open, created if that says NoSuchBucket) and listing
and aborting unfinished multipart uploads (``abort_stale_uploads``). Conditional
multipart uploads are not offered either: conditional PUTs are single PUTs
(SeaweedFS takes them at any size; AWS up to 5 GiB, the chunk size limit).

Credentials come from the standard AWS chain: ``AWS_ACCESS_KEY_ID`` and friends
directly from the environment (no import needed), otherwise botocore's resolver
(shared credentials and config files, profiles, SSO, container and instance
metadata), asked again whenever the credentials it returned expire.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import obstore as obs
import obstore.exceptions as obx
from obstore.store import S3Store as _ObS3

from syncd.config import Config
from syncd.errors import AccessDenied, ConfigError, NotFound, PreconditionFailed, StoreError, TransientStoreError
from syncd.store.base import Blob, BlobStream, ObjectInfo
from syncd.store.rangeread import Sink, ThreadedReads
from syncd.store.reach import check_bucket as check_bucket_of

if TYPE_CHECKING:
    from syncd.store.s3 import S3Store

STREAM_PIECE = 256 * 1024  # pieces of at least this much, as s3.STREAM_PIECE (the gateway relays each)
SIGNED_FOR = datetime.timedelta(minutes=15)  # a pre-signed GET is used at once; this is slack for clocks
GUARD_BELOW = 1 << 20      # If-None-Match PUTs up to this size carry the checksum too (as s3.MD5_ALWAYS_BELOW)
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>(\w+)</Code>")


def _status(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status and S3 error code in an obstore error's text, when it has them."""
    text = str(exc)
    status, code = _STATUS.search(text), _CODE.search(text)
    return (int(status.group(1)) if status else None), (code.group(1) if code else "")


def translate(exc: BaseException, key: str) -> Exception:
    """Map an obstore failure on ``key`` to a syncd error class."""
    first = str(exc).split("\n", 1)[0][:300]
    if isinstance(exc, (obx.AlreadyExistsError, obx.PreconditionError, obx.NotModifiedError)):
        return PreconditionFailed(f"{key}: precondition failed")
    if isinstance(exc, (obx.NotFoundError, FileNotFoundError)):
        return NotFound(f"{key}: not found")
    if isinstance(exc, (obx.PermissionDeniedError, obx.UnauthenticatedError)):
        return AccessDenied(f"{key}: access denied: {first}", _status(exc)[1])
    if isinstance(exc, (obx.InvalidPathError, obx.UnknownConfigurationKeyError, obx.NotSupportedError)):
        return StoreError(f"{key}: {first}")
    status, code = _status(exc)
    if status is None:  # no answer: reset, timeout, a body cut short
        return TransientStoreError(f"{key}: {first}")
    what = f"{key}: {status} {code}".rstrip()
    if status in (404, 416):
        return NotFound(what)
    if status == 412:
        return PreconditionFailed(f"{key}: precondition failed")
    if status in (408, 409, 429) or status >= 500:
        return TransientStoreError(what)
    if status in (401, 403):
        return AccessDenied(what, code)
    return StoreError(what)


class _BotocoreCredentials:
    """obstore's credential-provider callback over botocore's chain (files, profiles, IMDS)."""

    def __init__(self) -> None:
        import botocore.session  # only without credentials in the environment

        self._session = botocore.session.get_session()

    def __call__(self) -> dict[str, Any]:
        creds = self._session.get_credentials()
        if creds is None:
            raise ConfigError("no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                              "or configure a profile")
        frozen = creds.get_frozen_credentials()
        expiry = getattr(creds, "_expiry_time", None)
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token, "expires_at": expiry}


def _credentials(env: dict[str, str]) -> dict[str, Any]:
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        out: dict[str, Any] = {"access_key_id": key, "secret_access_key": secret}
        if env.get("AWS_SESSION_TOKEN"):
            out["session_token"] = env["AWS_SESSION_TOKEN"]
        return out
    provider = _BotocoreCredentials()
    provider()  # no credentials anywhere: a ConfigError now, not an access error per request
    return {"credential_provider": provider}


def _handle(config: Config, creds: dict[str, Any], *, checksum: bool) -> _ObS3:
    options: dict[str, Any] = {
        "connect_timeout": datetime.timedelta(seconds=config.connect_timeout),
        "read_timeout": datetime.timedelta(seconds=config.read_timeout),
        "timeout": datetime.timedelta(hours=1),   # whole request: a body may take long, reads may not stall
        "pool_max_idle_per_host": str(config.max_connections + 4),
        "allow_http": bool(config.s3_endpoint and config.s3_endpoint.startswith("http://")),
    }
    kwargs: dict[str, Any] = {"region": config.region, "unsigned_payload": True, "conditional_put": "etag"}
    if config.s3_endpoint:
        kwargs.update(endpoint=config.s3_endpoint, virtual_hosted_style_request=False)
    if checksum:
        kwargs["checksum_algorithm"] = "SHA256"
    try:
        return _ObS3(config.bucket, client_options=options,  # type: ignore[arg-type]
                     retry_config={"max_retries": 0, "retry_timeout": datetime.timedelta(seconds=1)},
                     **kwargs, **creds)
    except obx.BaseError as exc:
        raise ConfigError(f"obstore S3 configuration: {exc}") from exc


class ObstoreStore:
    """An S3 bucket seen through obstore. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._creds = _credentials(dict(os.environ))
        self._data = _handle(config, self._creds, checksum=False)
        self._guarded_handle: _ObS3 | None = None   # made on the first guarded PUT (start-up: ~15 ms each)
        self._control: S3Store | None = None
        self._reads = ThreadedReads(config.connect_timeout, config.read_timeout, config.max_connections)

    @classmethod
    async def open(cls, config: Config, *, check_bucket: bool = True) -> ObstoreStore:
        """Open and check the bucket (created if missing when ``config.create_bucket``)."""
        self = cls(config)
        if check_bucket:
            try:
                await check_bucket_of(config, self, self.ensure_bucket)   # retried, explained (reach.py)
            except BaseException:
                await self.close()
                raise
        return self

    @property
    def _guarded(self) -> _ObS3:
        if self._guarded_handle is None:
            self._guarded_handle = _handle(self.config, self._creds, checksum=True)
        return self._guarded_handle

    async def _s3(self) -> S3Store:
        """The aiobotocore store, for what object_store cannot do (opened on first use)."""
        if self._control is None:
            from syncd.store.s3 import S3Store
            self._control = await S3Store.open(self.config, check_bucket=False)
        return self._control

    async def ensure_bucket(self) -> None:
        try:
            async for _ in obs.list(self._data, prefix="syncd-bucket-probe/", chunk_size=1):
                break
            return
        except Exception as exc:
            mapped = translate(exc, self.config.bucket)
            if not isinstance(mapped, NotFound):
                raise mapped from exc
        await (await self._s3()).ensure_bucket()   # creates it, or says it is missing

    async def close(self) -> None:
        control, self._control = self._control, None
        self._reads.close()
        if control is not None:
            await control.close()

    async def read_into(self, key: str, start: int | None, end: int | None, sink: Sink) -> bool:
        """GET ``key`` (bytes [start, end) when given) into ``sink`` from a worker thread (rangeread.py).

        Raises as :meth:`get` does, and ``rangeread.Unsupported`` for an answer the direct reader
        does not take. Cancelled, it stops the read and returns once the thread has."""
        try:
            url = await obs.sign_async(self._data, "GET", key, SIGNED_FOR)
        except Exception as exc:
            raise translate(exc, key) from exc
        await self._reads.read(url, start, end, sink)
        return True

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> Blob:
        try:
            result = await obs.get_async(self._data, key, options=_range(start, end))
            data = (await result.bytes_async()).to_bytes()
        except Exception as exc:
            raise translate(exc, key) from exc
        first, last = result.range
        if len(data) != last - first:
            raise TransientStoreError(f"{key}: truncated body ({len(data)} of {last - first} bytes)")
        return Blob(data, result.meta["e_tag"] or "")

    @contextlib.asynccontextmanager
    async def get_stream(self, key: str, start: int | None = None,
                         end: int | None = None) -> AsyncIterator[BlobStream]:
        """Like :meth:`get`, but the body is yielded in pieces (>= 256 KiB but the last) as it arrives."""
        try:
            result = await obs.get_async(self._data, key, options=_range(start, end))
        except Exception as exc:
            raise translate(exc, key) from exc
        first, last = result.range
        yield BlobStream(last - first, result.meta["e_tag"] or "",
                         _pieces(result.stream(min_chunk_size=STREAM_PIECE), key, last - first))

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        handle = self._data if if_none_match and not if_match and len(data) > GUARD_BELOW else self._guarded
        mode: Any = {"e_tag": if_match} if if_match is not None else "create" if if_none_match else "overwrite"
        multipart = mode == "overwrite" and len(data) > self.config.multipart_threshold
        try:
            result = await obs.put_async(handle, key, data, mode=mode, use_multipart=multipart,
                                         chunk_size=self.config.multipart_part_size,
                                         max_concurrency=max(1, min(8, self.config.max_connections)))
        except Exception as exc:
            raise translate(exc, key) from exc
        return result["e_tag"] or ""

    async def head(self, key: str) -> ObjectInfo:
        try:
            meta = await obs.head_async(self._data, key)
        except Exception as exc:
            raise translate(exc, key) from exc
        return _info(meta)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        # object_store lists whole path segments: a prefix that ends mid-name lists its parent
        base = prefix if not prefix or prefix.endswith("/") else prefix.rpartition("/")[0]
        try:
            async for page in obs.list(self._data, prefix=base or None, chunk_size=1000):
                for meta in page:
                    if meta["path"].startswith(prefix):
                        yield _info(meta)
        except Exception as exc:
            raise translate(exc, prefix) from exc

    async def list_prefixes(self, prefix: str) -> list[str]:
        base = prefix if not prefix or prefix.endswith("/") else prefix.rpartition("/")[0]
        try:
            result = await obs.list_with_delimiter_async(self._data, prefix=base or None)
        except Exception as exc:
            raise translate(exc, prefix) from exc
        return sorted(p + "/" for p in result["common_prefixes"] if (p + "/").startswith(prefix))

    async def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            try:
                await obs.delete_async(self._data, batch)
            except Exception as exc:
                mapped = translate(exc, batch[0])
                if not isinstance(mapped, NotFound):
                    raise mapped from exc

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        return await (await self._s3()).abort_stale_uploads(prefix, older_than)


def _range(start: int | None, end: int | None) -> Any:
    if start is None and end is None:
        return None
    if end is None:
        return {"range": {"offset": start or 0}}
    return {"range": (start or 0, end)}


def _info(meta: Any) -> ObjectInfo:
    modified = meta.get("last_modified")
    return ObjectInfo(meta["path"], int(meta["size"]), meta.get("e_tag") or "",
                      modified.timestamp() if modified else 0.0)


async def _pieces(stream: Any, key: str, size: int) -> AsyncIterator[bytes]:
    received = 0
    try:
        async for piece in stream:
            received += len(piece)
            yield piece
    except Exception as exc:
        raise translate(exc, key) from exc
    if received != size:
        raise TransientStoreError(f"{key}: truncated body ({received} of {size} bytes)")
