"""Object stores: the one seam that moves bytes, and the wrappers stacked on it.

    base.py       the ``ObjectStore`` protocol, ``Blob``/``BlobStream``, conditional-put helpers
    obstore.py    ``ObstoreStore`` on obstore (Rust object_store): the default backend
    s3.py         ``S3Store`` on aiobotocore: the other backend, and what obstore cannot do
    select.py     ``open_store``: SYNCD_STORE_BACKEND picks one
    wrap.py       retry, limit and counting wrappers, each an ``ObjectStore`` itself
    devserver.py  an embedded SeaweedFS for the demo and the tests

A store never hashes and never knows about volumes; the engine verifies what comes back.
"""

from syncd.store.base import Blob, BlobStream, ObjectInfo, ObjectStore

__all__ = ["Blob", "BlobStream", "ObjectInfo", "ObjectStore"]
