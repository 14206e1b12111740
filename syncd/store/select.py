"""Choosing the backend: ``SYNCD_STORE_BACKEND`` names the ObjectStore that moves the bytes.

``obstore`` (the default) is :class:`syncd.store.obstore.ObstoreStore`, on the Rust
object_store crate: less CPU per byte and no botocore import on the read path
(docs/BENCHMARKS.md). ``aiobotocore`` is :class:`syncd.store.s3.S3Store`, the
original backend, kept for stores where object_store misbehaves and as the
reference in tests/test_store_conformance.py. Both are imported only when chosen.
"""

from __future__ import annotations

from syncd.config import Config
from syncd.store.base import ObjectStore

BACKENDS = ("obstore", "aiobotocore")


async def open_store(config: Config, *, check_bucket: bool = True) -> ObjectStore:
    """The chosen backend, its bucket checked by one request (``check_bucket``): created if missing
    when ``config.create_bucket``, else a ConfigError naming it. A failure of that first request is
    explained in our words (store/reach.py)."""
    if config.store_backend == "aiobotocore":
        from syncd.store.s3 import S3Store
        return await S3Store.open(config, check_bucket=check_bucket)
    from syncd.store.obstore import ObstoreStore
    return await ObstoreStore.open(config, check_bucket=check_bucket)
