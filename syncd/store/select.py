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


async def open_store(config: Config, *, create_bucket: bool = True) -> ObjectStore:
    if config.store_backend == "aiobotocore":
        from syncd.store.s3 import S3Store
        return await S3Store.open(config, create_bucket=create_bucket)
    from syncd.store.obstore import ObstoreStore
    return await ObstoreStore.open(config, create_bucket=create_bucket)
