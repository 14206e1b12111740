"""Settings, read once from ``SYNCD_*`` environment variables into a frozen object.

Every knob that bounds resources lives here with its default, so the limits a
worker runs under can be read in one place:

===========================  ==================  =====================================
variable                     default             meaning
===========================  ==================  =====================================
SYNCD_S3_ENDPOINT            (AWS)               S3 endpoint URL (``http://`` or ``https://``
                                                 host[:port]); unset means AWS
SYNCD_BUCKET                 syncd               bucket (3-63 characters: lowercase letters,
                                                 digits, dots, hyphens); created if missing
                                                 only by what creates volumes (the agent,
                                                 ``volume create``, ``put``, ``commit``)
SYNCD_STORE_BACKEND          obstore             the S3 client: ``obstore`` (Rust
                                                 object_store; less CPU per byte) or
                                                 ``aiobotocore`` (store/select.py)
SYNCD_PREFIX                 volumes             key prefix inside the bucket
SYNCD_OWNER                  default             owner whose volumes we see
SYNCD_CACHE_DIR              ~/.cache/syncd      local chunk cache directory
SYNCD_CACHE_SIZE             10 GiB              cache size bound (LRU eviction)
SYNCD_CACHE_LARGE            ref                 chunks a hydrate writes (large and small
                                                 files): ``ref`` caches a reference into
                                                 the hydrated file, ``copy`` a second
                                                 copy of the bytes
SYNCD_STATE_DIR              ~/.local/state/syncd  local sync indexes
SYNCD_CHUNK_SIZE             512 KiB             average chunk size of files cut by content
                                                 (FastCDC: min /4, max *4; 64 KiB-4 MiB)
SYNCD_PACK_THRESHOLD         1 MiB               files below this are packed
SYNCD_PACK_SIZE              8 MiB               target size of one pack object
SYNCD_LARGE_PACK_SIZE        32 MiB              consecutive new chunks of one large file
                                                 share a pack up to this size (read back
                                                 with one ranged GET); 0: a chunk each
SYNCD_MAX_CONNECTIONS        32                  concurrent requests to the store
SYNCD_MAX_INFLIGHT_BYTES     64 MiB              chunk bytes held in memory at once
SYNCD_RETRIES                6                   attempts for a transient failure (at least)
SYNCD_RETRY_BASE_DELAY       0.1                 first backoff delay, seconds (doubling, <= 5)
SYNCD_STORE_DEADLINE         30                  seconds one store request keeps retrying
                                                 a transient failure (an outage) once the
                                                 store has answered; then it fails
SYNCD_CONNECT_TIMEOUT        10                  seconds
SYNCD_READ_TIMEOUT           60                  seconds
SYNCD_MULTIPART_THRESHOLD    64 MiB              objects above this use multipart
SYNCD_MULTIPART_PART_SIZE    16 MiB              part size for multipart uploads
SYNCD_STALE_UPLOAD_AGE       86400               seconds after which an unfinished
                                                 multipart upload counts as abandoned
SYNCD_GATEWAY                (none)              comma-separated gateway URLs
SYNCD_GATEWAY_TOKEN          (none)              bearer token for the gateways
SYNCD_GATEWAY_HEAD_TTL       1                   seconds a gateway serves a HEAD before
                                                 refetching it; workers read a HEAD they
                                                 wrote from the store for this long
SYNCD_ROOT                   /volumes            where the agent mounts volumes
SYNCD_SOCKET                 /run/syncd.sock     the agent's Unix socket
SYNCD_ALLOW_UIDS             (none)              other uids (numbers or user names,
                                                 comma-separated) whose tasks may use the
                                                 agent; the first owns the volume files
SYNCD_ALLOW_GROUP            (none)              a group (gid or name) whose members may
                                                 use the agent; the socket's group, and the
                                                 group of the volume files
SYNCD_KEEP_SNAPSHOTS         (all)               prune: keep the newest N snapshots
SYNCD_KEEP_DAYS              (all)               prune: keep snapshots younger than D days
SYNCD_PRUNE_GRACE            3600                prune: never delete objects younger than this (s)
===========================  ==================  =====================================

Sizes accept plain bytes or a suffix (``512K``, ``8M``, ``10G``). The endpoint
and the bucket name are checked here, before any request: a mistyped one is
named with the rule it breaks instead of surfacing as a client library's panic
or the server's ``InvalidBucketName``.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from syncd.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
BUCKET_RULE = ("3-63 characters: lowercase letters, digits, dots and hyphens, starting and ending "
               "with a letter or digit")


def check_bucket_name(name: str) -> str:
    """S3's bucket naming rules, so a bad name fails before any request, with the rule."""
    if not _BUCKET.match(name) or ".." in name or ".-" in name or "-." in name or _IPV4.match(name):
        raise ConfigError(f"SYNCD_BUCKET {name!r} is not a valid bucket name ({BUCKET_RULE}; "
                          "not an IP address, no '..')")
    return name


def check_endpoint(url: str) -> str:
    """An ``http://`` or ``https://`` URL with a host and, if any, a numeric port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        hint = f"; did you mean http://{url}?" if "://" not in url else ""
        raise ConfigError(f"SYNCD_S3_ENDPOINT {url!r} must start with http:// or https://{hint}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"SYNCD_S3_ENDPOINT {url!r} has a port that is not a number from 0 to 65535") from exc
    if not parts.hostname or parts.query or parts.fragment or port == 0:
        raise ConfigError(f"SYNCD_S3_ENDPOINT {url!r} must be http(s)://HOST[:PORT], "
                          "for example http://127.0.0.1:8333")
    return url


def parse_ids(text: str, kind: str) -> tuple[int, ...]:
    """``"1000,alice"`` -> ``(1000, 1001)``: numbers as they are, names looked up (``kind``
    ``"user"`` in the passwd database, ``"group"`` in the group database)."""
    ids: list[int] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        if word.isdigit():
            ids.append(int(word))
            continue
        try:
            ids.append(pwd.getpwnam(word).pw_uid if kind == "user" else grp.getgrnam(word).gr_gid)
        except KeyError as exc:
            raise ConfigError(f"no {kind} named {word!r} on this machine (give its number instead)") from exc
    return tuple(ids)


def parse_size(text: str) -> int:
    """``"8M"`` -> 8388608. Raises ConfigError on anything else."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"not a size: {text!r} (use bytes or a K/M/G/T suffix)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


@dataclasses.dataclass(frozen=True)
class Config:
    s3_endpoint: str | None = None
    bucket: str = "syncd"
    store_backend: str = "obstore"
    prefix: str = "volumes"
    owner: str = "default"
    region: str = "us-east-1"
    cache_dir: Path = Path.home() / ".cache" / "syncd"
    cache_size: int = 10 * GiB
    cache_large: str = "ref"
    state_dir: Path = Path.home() / ".local" / "state" / "syncd"
    chunk_size: int = 512 * KiB
    pack_threshold: int = 1 * MiB
    pack_size: int = 8 * MiB
    large_pack_size: int = 32 * MiB
    max_connections: int = 32
    max_inflight_bytes: int = 64 * MiB
    mount_memory: int = 128 * MiB       # a lazy mount's verified chunks in memory, read ahead included
    mount_open_files: int = 256         # a lazy mount's upper-file descriptors kept open (least recently used)
    retries: int = 6
    retry_base_delay: float = 0.1
    store_deadline: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    multipart_threshold: int = 64 * MiB
    multipart_part_size: int = 16 * MiB
    stale_upload_age: float = 86400.0
    gateways: tuple[str, ...] = ()
    gateway_token: str | None = None
    gateway_head_ttl: float = 1.0
    root: Path = Path("/volumes")
    socket: Path = Path("/run/syncd.sock")
    allow_uids: tuple[int, ...] = ()    # tasks of these uids may use the agent (docs/AGENT.md)
    allow_group: int | None = None      # and tasks in this group
    keep_snapshots: int | None = None
    keep_days: float | None = None
    prune_grace: float = 3600.0
    create_bucket: bool = True          # False: a missing bucket is an error (the CLI's read commands)

    def __post_init__(self) -> None:
        if self.s3_endpoint is not None:
            check_endpoint(self.s3_endpoint)
        check_bucket_name(self.bucket)
        if self.chunk_size < 64 * KiB or self.chunk_size > 4 * MiB:
            raise ConfigError("SYNCD_CHUNK_SIZE (the average chunk size) must be between 64 KiB and 4 MiB")
        if self.pack_threshold > 4 * self.chunk_size:
            raise ConfigError("SYNCD_PACK_THRESHOLD must not exceed 4 x SYNCD_CHUNK_SIZE (the largest chunk)")
        if self.large_pack_size < 0 or self.large_pack_size > 5 * GiB:
            raise ConfigError("SYNCD_LARGE_PACK_SIZE must be between 0 and 5 GiB (one PUT)")
        if self.max_inflight_bytes < self.chunk_size:
            raise ConfigError("SYNCD_MAX_INFLIGHT_BYTES must hold at least one average chunk")
        if self.store_backend not in ("obstore", "aiobotocore"):
            raise ConfigError("SYNCD_STORE_BACKEND must be 'obstore' or 'aiobotocore'")
        if self.cache_large not in ("ref", "copy"):
            raise ConfigError("SYNCD_CACHE_LARGE must be 'ref' or 'copy'")
        if self.max_connections < 1 or self.retries < 1:
            raise ConfigError("SYNCD_MAX_CONNECTIONS and SYNCD_RETRIES must be >= 1")
        if not 0 <= self.store_deadline <= 86400:
            raise ConfigError("SYNCD_STORE_DEADLINE must be between 0 and 86400 seconds")
        if self.multipart_part_size < 5 * MiB:
            raise ConfigError("SYNCD_MULTIPART_PART_SIZE must be at least 5 MiB (S3's minimum)")
        if (self.keep_snapshots is not None and self.keep_snapshots < 1) or \
                (self.keep_days is not None and self.keep_days < 0) or self.prune_grace < 0:
            raise ConfigError("SYNCD_KEEP_SNAPSHOTS must be >= 1, SYNCD_KEEP_DAYS and SYNCD_PRUNE_GRACE >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Build a Config from ``env`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}

        def text(name: str, field: str) -> None:
            if env.get(name):
                values[field] = env[name]

        def size(name: str, field: str) -> None:
            if env.get(name):
                values[field] = parse_size(env[name])

        def number(name: str, field: str, kind: type[int] | type[float]) -> None:
            if env.get(name):
                try:
                    values[field] = kind(env[name])
                except ValueError as exc:
                    raise ConfigError(f"{name} must be a number, not {env[name]!r}") from exc

        text("SYNCD_S3_ENDPOINT", "s3_endpoint")
        text("SYNCD_BUCKET", "bucket")
        text("SYNCD_OWNER", "owner")
        text("SYNCD_CACHE_LARGE", "cache_large")
        text("SYNCD_STORE_BACKEND", "store_backend")
        if "SYNCD_PREFIX" in env:
            values["prefix"] = env["SYNCD_PREFIX"].strip("/")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            values["region"] = region
        for name, field in (("SYNCD_CACHE_DIR", "cache_dir"), ("SYNCD_STATE_DIR", "state_dir"),
                            ("SYNCD_ROOT", "root"), ("SYNCD_SOCKET", "socket")):
            if env.get(name):
                values[field] = Path(env[name]).expanduser()
        for name, field in (("SYNCD_CACHE_SIZE", "cache_size"), ("SYNCD_CHUNK_SIZE", "chunk_size"),
                            ("SYNCD_PACK_THRESHOLD", "pack_threshold"), ("SYNCD_PACK_SIZE", "pack_size"),
                            ("SYNCD_LARGE_PACK_SIZE", "large_pack_size"),
                            ("SYNCD_MAX_INFLIGHT_BYTES", "max_inflight_bytes"),
                            ("SYNCD_MOUNT_MEMORY", "mount_memory"),
                            ("SYNCD_MULTIPART_THRESHOLD", "multipart_threshold"),
                            ("SYNCD_MULTIPART_PART_SIZE", "multipart_part_size")):
            size(name, field)
        number("SYNCD_MAX_CONNECTIONS", "max_connections", int)
        number("SYNCD_MOUNT_OPEN_FILES", "mount_open_files", int)
        number("SYNCD_RETRIES", "retries", int)
        number("SYNCD_RETRY_BASE_DELAY", "retry_base_delay", float)
        number("SYNCD_STORE_DEADLINE", "store_deadline", float)
        number("SYNCD_CONNECT_TIMEOUT", "connect_timeout", float)
        number("SYNCD_READ_TIMEOUT", "read_timeout", float)
        number("SYNCD_STALE_UPLOAD_AGE", "stale_upload_age", float)
        number("SYNCD_KEEP_SNAPSHOTS", "keep_snapshots", int)
        number("SYNCD_KEEP_DAYS", "keep_days", float)
        number("SYNCD_PRUNE_GRACE", "prune_grace", float)
        number("SYNCD_GATEWAY_HEAD_TTL", "gateway_head_ttl", float)
        if env.get("SYNCD_GATEWAY"):
            values["gateways"] = tuple(u.strip().rstrip("/") for u in env["SYNCD_GATEWAY"].split(",") if u.strip())
        text("SYNCD_GATEWAY_TOKEN", "gateway_token")
        if env.get("SYNCD_ALLOW_UIDS"):
            values["allow_uids"] = parse_ids(env["SYNCD_ALLOW_UIDS"], "user")
        if env.get("SYNCD_ALLOW_GROUP"):
            groups = parse_ids(env["SYNCD_ALLOW_GROUP"], "group")
            if len(groups) != 1:
                raise ConfigError("SYNCD_ALLOW_GROUP names one group (a gid or a group name)")
            values["allow_group"] = groups[0]
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def file_owner(self) -> tuple[int, int] | None:
        """``(uid, gid)`` the agent gives volume files and directories when tasks of other uids
        use it: the first of ``allow_uids`` (else the agent's uid) and ``allow_group`` (else the
        agent's gid). None when only the agent's own uid may use it: files stay as created."""
        if not self.allow_uids and self.allow_group is None:
            return None
        return (self.allow_uids[0] if self.allow_uids else os.geteuid(),
                self.allow_group if self.allow_group is not None else os.getegid())

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
