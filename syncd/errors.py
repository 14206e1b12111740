"""Every error syncd raises on purpose.

Errors from lower layers (botocore, aiohttp, the OS) are translated at the
boundary where they are caught, with ``raise Mapped(...) from exc``, so callers
only ever handle these classes. Retry decisions are made on the class alone,
never on message text::

    SyncdError
    ├── ConfigError            bad settings or arguments
    ├── InvalidName            a volume or owner name breaks the naming rules
    ├── VolumeNotFound         the volume has no commit point
    ├── SnapshotNotFound       a snapshot id that the volume does not hold
    ├── ManifestError          a manifest or pack index is malformed or hostile
    ├── IntegrityError         bytes did not hash to the id they were fetched by
    ├── LocalConflict          hydrate would destroy local data it does not own
    ├── CommitConflict         the commit point moved too often to merge
    ├── LocalIOError           the local filesystem refused (ENOSPC, EROFS, ...)
    ├── PermissionDenied       a request for another owner's volumes
    ├── AgentUnavailable       no agent answers on SYNCD_SOCKET, or it is shutting down
    └── StoreError             the object store refused (permanent)
        ├── AccessDenied       401/403: the credentials, or their rights
        ├── NotFound           no such key
        ├── PreconditionFailed a conditional write lost the race
        │   └── UnsurePrecondition  ... on a retry: an earlier attempt may have
        │                           landed with its answer lost
        └── TransientStoreError  throttling, 5xx, dropped or truncated transfers:
                                 worth retrying
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base class of every error syncd raises on purpose."""

    exit_code = 1


class ConfigError(SyncdError):
    exit_code = 2


class InvalidName(SyncdError):
    exit_code = 2


class VolumeNotFound(SyncdError):
    exit_code = 3


class SnapshotNotFound(SyncdError):
    exit_code = 3


class ManifestError(SyncdError):
    exit_code = 4


class IntegrityError(SyncdError):
    exit_code = 4


class LocalConflict(SyncdError):
    """Hydrate refused to overwrite or delete local files it does not own."""

    exit_code = 5

    def __init__(self, message: str, paths: list[str]) -> None:
        super().__init__(message)
        self.paths = paths


class CommitConflict(SyncdError):
    exit_code = 6


class LocalIOError(SyncdError):
    exit_code = 7


class PermissionDenied(SyncdError):
    exit_code = 2


class AgentUnavailable(SyncdError):
    exit_code = 9


class StoreError(SyncdError):
    exit_code = 8


class AccessDenied(StoreError):
    """The store refused the credentials or their rights (HTTP 401/403); ``code`` is S3's error code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NotFound(StoreError):
    pass


class PreconditionFailed(StoreError):
    pass


class UnsurePrecondition(PreconditionFailed):
    """A retried conditional write failed its precondition: maybe because an earlier attempt landed."""


class TransientStoreError(StoreError):
    pass
