"""What a user is told when the first request to the object store fails.

Each backend opens with one request (the bucket check). When that fails, the
client library's text names its own internals (``Generic S3 error: Error
performing list request ... HTTP error: error sending request``), not the cause.
So the cause is found again, in our code and by exception class, not by
reading that text: :func:`probe` opens a plain connection to the endpoint
(asyncio: nothing blocks the loop), to the first address the name resolves to,, does the TLS handshake for
``https`` and sends one ``HEAD /``, and names the first step that fails::

    socket.gaierror                        -> DNS failure (the host name)
    ECONNREFUSED                           -> connection refused (server down, wrong port)
    ssl.SSLCertVerificationError           -> TLS: certificate not trusted
    ssl.SSLError                           -> TLS handshake failed (http server behind https://?)
    TimeoutError                           -> timeout (no answer)
    other OSError                          -> its strerror

If every step works, the server answers HTTP and the failure lies elsewhere:
the library's first line is kept.

:func:`check_bucket` runs that first request. A transient failure where the
endpoint does not answer HTTP at all (the probe names a cause) is reported at
once: a mistyped endpoint is heard about, not waited for. One where the server
answers but the request failed (503 SlowDown, a 5xx, a connection reset
mid-request) is retried like any request (store/wrap.py: backoff, at least
SYNCD_RETRIES attempts and for SYNCD_STORE_DEADLINE seconds): a worker, a
mount process or a gateway starting while the store is throttling or
restarting must not fail for it. The library's full text is always logged at
INFO, so ``-v`` shows it. A refusal of the credentials (401/403, ``AccessDenied``)
says to check them instead of repeating the bucket name as a prefix.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from syncd.config import Config
from syncd.errors import AccessDenied, StoreError, TransientStoreError
from syncd.store.base import ObjectStore
from syncd.store.wrap import RetryingStore

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 5.0


def where(config: Config) -> str:
    return config.s3_endpoint or f"AWS S3 ({config.region})"


async def explain(config: Config, exc: StoreError) -> StoreError:
    """A clearer error for a failed bucket check, or ``exc`` itself when there is nothing to add."""
    log.info("the object store client said: %s", exc)
    if isinstance(exc, AccessDenied):
        return AccessDenied(f"the object store at {where(config)} refused the request for bucket "
                            f"{config.bucket!r} ({exc.code or 'access denied'}): check the credentials "
                            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and that they may use this bucket",
                            exc.code)
    if isinstance(exc, TransientStoreError):
        reason = await probe(config, min(config.connect_timeout, PROBE_TIMEOUT))
        return TransientStoreError(f"cannot reach the object store at {where(config)} "
                                   f"(bucket {config.bucket!r}): {reason or _first_line(exc)}")
    return exc


class _Unreachable(Exception):
    """Nothing answers HTTP at the endpoint: final, not worth retrying (not a TransientStoreError)."""


async def check_bucket(config: Config, store: ObjectStore, ensure: Callable[[], Awaitable[None]]) -> None:
    """``ensure()`` (the backend's bucket check) under the retry policy of the module docstring;
    its failure explained in our words."""
    async def attempt() -> None:
        try:
            await ensure()
        except TransientStoreError as exc:
            log.info("the object store client said: %s", exc)
            reason = await probe(config, min(config.connect_timeout, PROBE_TIMEOUT))
            if reason is not None:
                raise _Unreachable(reason) from exc
            raise

    retrier = RetryingStore(store, config.retries, config.retry_base_delay, deadline=config.store_deadline)
    retrier.answered = True      # only failures of a server that answers HTTP come back to it
    try:
        await retrier.call(f"bucket check of {config.bucket!r}", attempt)
    except _Unreachable as exc:
        raise TransientStoreError(f"cannot reach the object store at {where(config)} "
                                  f"(bucket {config.bucket!r}): {exc}") from exc.__cause__
    except TransientStoreError as exc:
        raise TransientStoreError(f"cannot reach the object store at {where(config)} "
                                  f"(bucket {config.bucket!r}): {_first_line(exc)}") from exc
    except StoreError as exc:
        better = await explain(config, exc)
        if better is not exc:
            raise better from exc
        raise


def _first_line(exc: BaseException) -> str:
    return "the server answered, but the request failed: " + str(exc).split("\n", 1)[0][:200]


async def probe(config: Config, seconds: float) -> str | None:
    """Why a connection to the endpoint fails, in our words; None if it works and HTTP answers."""
    timeout = seconds
    url = urlsplit(config.s3_endpoint or f"https://s3.{config.region}.amazonaws.com")
    tls = url.scheme == "https"
    host, port = url.hostname or "", url.port or (443 if tls else 80)
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM), timeout)
    except (socket.gaierror, TimeoutError):
        return f"DNS lookup of {host!r} failed (check the host name in SYNCD_S3_ENDPOINT)"
    address = str(infos[0][4][0])         # the address a client tries first; one error class, not a list
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            address, port, ssl=ssl.create_default_context() if tls else None,
            server_hostname=host if tls else None), timeout)
    except ssl.SSLCertVerificationError as exc:
        return f"TLS error: the certificate of {host} is not trusted ({exc.verify_message})"
    except ssl.SSLError:
        return f"TLS error: the handshake with {host}:{port} failed (a plain http server? try http://)"
    except TimeoutError:
        return f"timeout: no answer from {host}:{port} within {timeout:g}s (a firewall, or the wrong host?)"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return f"connection refused by {host}:{port} (is the server running, on that port?)"
        return f"network error connecting to {host}:{port}: {exc.strerror or exc}"
    try:
        writer.write(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await asyncio.wait_for(writer.drain(), timeout)
        answer = await asyncio.wait_for(reader.read(1), timeout)
    except TimeoutError:
        return f"timeout: {host}:{port} accepted the connection but sent no answer within {timeout:g}s"
    except OSError as exc:
        return f"the connection to {host}:{port} was dropped ({exc.strerror or exc})"
    finally:
        writer.close()
    if not answer:
        return f"{host}:{port} closed the connection without an answer (not an S3 server?)"
    return None

