"""``syncd://VOLUME/PATH`` for fsspec, and so for pandas, pyarrow, dask, xarray and universal-pathlib.

Registered through the ``fsspec.specs`` entry point (``pip install syncd[fsspec]``),
so ``fsspec.open("syncd://my-volume/data.parquet")`` and
``pd.read_parquet("syncd://my-volume/data.parquet")`` find it by protocol. The
owner, bucket and endpoint come from the usual ``SYNCD_*`` configuration; pass
``storage_options={"owner": "bob", "bucket": ..., "s3_endpoint": ..., "prefix": ...}``
(any ``Config`` field) to reach another owner's volumes or another store.
``syncd://`` alone lists the owner's volumes as directories.

No agent and no local copy: every call reads or edits the volume's snapshots
in the bucket through engine/edit.py, on the shared engine of sdk/direct.py.

Reads. ``open("rb")`` pins the file's entry (its chunk list) at open time and
fetches byte ranges through the engine's fetcher: only the chunks a range
overlaps are fetched, each verified against its hash and kept in the chunk
cache. The default block size is the file's chunk size, so reading a parquet
footer costs the one or two chunks the footer lies in, whatever the file's size.

Writes. ``open("wb")`` chunks and uploads the bytes as they are written and
publishes the file on ``close``; ``pipe``, ``put``, ``rm``, ``mv``, ``cp`` and
``mkdir`` are each one snapshot (a bulk ``put``/``cp``/``rm`` of many paths is
one snapshot too), through the conditional commit: a concurrent writer's
changes to other paths are never lost. Inside ``with fs.transaction:``
everything written becomes one snapshot per volume when the block ends (and
nothing, if it raises); until then, reads see the volume without the pending
writes, as fsspec's transactions promise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import threading
from collections.abc import Iterator
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem  # type: ignore[import-untyped]
from fsspec.transaction import Transaction  # type: ignore[import-untyped]

from syncd.config import Config
from syncd.engine import edit
from syncd.engine.wiring import Engine
from syncd.errors import ConfigError, SnapshotNotFound, SyncdError, VolumeNotFound
from syncd.format.layout import normalize_volume_name
from syncd.format.manifest import Entry
from syncd.sdk.direct import Direct, direct

READ_BLOCKS = 4      # chunk-sized blocks an open file keeps in memory (the chunk cache keeps more)
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(Config)}


def _info(name: str, entry: Entry) -> dict[str, Any]:
    kind = {"file": "file", "dir": "directory", "symlink": "link"}[entry.kind]
    out: dict[str, Any] = {"name": name, "size": entry.size if entry.kind == "file" else 0, "type": kind,
                           "mode": entry.mode, "mtime": entry.mtime_ns / 1e9}
    if entry.kind == "symlink":
        out["destination"] = entry.target
    return out


def _directory(name: str) -> dict[str, Any]:
    return {"name": name, "size": 0, "type": "directory"}


class SyncdTransaction(Transaction):  # type: ignore[misc]
    """One snapshot per volume for everything written inside ``with fs.transaction:``."""

    def start(self) -> None:
        super().start()
        self.fs._txn = {}

    def complete(self, commit: bool = True) -> None:
        fs = self.fs
        try:
            super().complete(commit)
        finally:
            batches, fs._txn = fs._txn, None
        for batch in (batches or {}).values():
            if commit:
                fs._run(lambda engine, b=batch: b.publish())
            else:
                fs._run(lambda engine, b=batch: b.abort())


class SyncdFileSystem(AbstractFileSystem):  # type: ignore[misc]
    protocol = "syncd"
    root_marker = ""
    transaction_type = SyncdTransaction

    def __init__(self, config: Config | None = None, runner: Direct | None = None, **options: Any) -> None:
        overrides = {k: options.pop(k) for k in list(options) if k in _CONFIG_FIELDS}
        super().__init__(**options)
        base = config or (runner.config if runner else Config.from_env())
        self.config = base.replace(**overrides) if overrides else base
        self._direct: Direct = runner or direct(self.config)
        self._txn: dict[str, edit.Batch] | None = None   # the open transaction's batches
        self._local = threading.local()

    # ------------------------------------------------ plumbing

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        text = str(path)
        if text.startswith("syncd://"):
            text = text[len("syncd://"):]
        return text.strip("/")

    def _run(self, fn: Any) -> Any:
        try:
            return self._direct.run(fn)
        except (SnapshotNotFound, VolumeNotFound) as exc:
            raise FileNotFoundError(str(exc)) from exc

    def _split(self, path: str) -> tuple[str, str]:
        path = self._strip_protocol(path)
        volume, _, rest = path.partition("/")
        try:
            return normalize_volume_name(volume), edit.normalize_path(rest)
        except SyncdError as exc:
            raise ValueError(str(exc)) from exc

    def _entry(self, volume: str, sub: str) -> Entry | None:
        """The entry at ``sub`` of the latest snapshot (the trees on that path only), or None."""
        return self._run(lambda engine: edit.entry(engine, volume, sub))  # type: ignore[no-any-return]

    def _listing(self, volume: str, sub: str, recursive: bool = False) -> tuple[Entry, list[Entry]] | None:
        """The entry at ``sub`` and its listing (the subtree below it only), or None if nothing is there."""
        async def run(engine: Engine) -> tuple[Entry, list[Entry]] | None:
            try:
                _, top, entries = await edit.listing(engine, volume, sub, recursive)
            except SnapshotNotFound:
                return None
            return top, entries
        return self._run(run)  # type: ignore[no-any-return]

    def _pending(self) -> dict[str, edit.Batch] | None:
        """The batches edits join: the transaction's, else this thread's ``_one_snapshot``'s."""
        if self._txn is not None:
            return self._txn
        return getattr(self._local, "batches", None)

    @contextlib.contextmanager
    def _batch(self, volume: str) -> Iterator[edit.Batch]:
        """The pending batch for ``volume``, or a new one published when the block ends."""
        pending = self._pending()
        if pending is not None:
            found = pending.get(volume)
            if found is None:
                found = pending[volume] = edit.Batch(self._engine(), volume, create=True)
            yield found
            return
        batch = edit.Batch(self._engine(), volume, create=True)
        try:
            yield batch
        except BaseException:
            self._run(lambda engine: batch.abort())
            raise
        self._run(lambda engine: batch.publish())

    def _engine(self) -> Engine:
        async def get(engine: Engine) -> Engine:
            return engine
        return self._run(get)  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def _one_snapshot(self) -> Iterator[None]:
        """Every edit inside the block (in this thread) joins one batch per volume."""
        if self._pending() is not None:
            yield
            return
        batches: dict[str, edit.Batch] = {}
        self._local.batches = batches
        try:
            yield
        except BaseException:
            for b in batches.values():
                self._run(lambda engine, b=b: b.abort())
            raise
        finally:
            self._local.batches = None
        for b in batches.values():
            self._run(lambda engine, b=b: b.publish())

    # ------------------------------------------------ reading

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        if not path:
            names = self._run(lambda engine: engine.repo.names())
            rows = [_directory(n) for n in sorted(names)]
        else:
            volume, sub = self._split(path)
            found = self._listing(volume, sub)
            if found is None:
                raise FileNotFoundError(path)
            top, entries = found
            if top.kind == "dir":
                rows = [_info(f"{volume}/{e.path}", e) for e in entries]
            else:
                rows = [_info(path, top)]
        return rows if detail else [r["name"] for r in rows]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if not path:
            return _directory("")
        volume, sub = self._split(path)
        entry = self._entry(volume, sub)          # FileNotFoundError if the volume does not exist
        if not sub:
            return _directory(volume)
        if entry is None:
            raise FileNotFoundError(path)
        return _info(path, entry)

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False,
             **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if not path or maxdepth is not None:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        volume, sub = self._split(path)
        try:
            found = self._listing(volume, sub, recursive=True)
        except FileNotFoundError:
            return {} if detail else []
        out: dict[str, dict[str, Any]] = {}
        if found is not None and found[0].kind != "dir":
            out[path] = _info(path, found[0])
        elif found is not None:
            if withdirs and sub:
                out[path] = _info(path, found[0])
            for e in found[1]:
                if withdirs or e.kind != "dir":
                    out[f"{volume}/{e.path}"] = _info(f"{volume}/{e.path}", e)
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        volume, sub = self._split(path)
        entry = self._file_entry(volume, sub, path)
        size = entry.size
        lo = 0 if start is None else (max(size + start, 0) if start < 0 else start)
        hi = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        if lo >= hi:
            return b""
        return self._run(lambda engine: edit.read_bytes(engine, volume, entry, lo, hi))  # type: ignore[no-any-return]

    def _file_entry(self, volume: str, sub: str, path: str) -> Entry:
        entry = self._entry(volume, sub)
        if entry is None:
            raise FileNotFoundError(path)
        if entry.kind == "dir":
            raise IsADirectoryError(path)
        if entry.kind != "file":
            raise OSError(f"{path} is a symlink to {entry.target}; open its target")
        return entry

    def modified(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path).get("mtime", 0), datetime.UTC)

    created = modified

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict[str, Any] | None = None, **kwargs: Any) -> SyncdFile:
        if "x" in mode and self.exists(path):
            raise FileExistsError(path)
        if "r" in mode:   # blocks aligned with the file's own chunks: a read fetches what it touches
            kwargs.setdefault("cache_type", "blockcache")
            if kwargs["cache_type"] == "blockcache":
                cache_options = {"maxblocks": READ_BLOCKS, **(cache_options or {})}
        return SyncdFile(self, path, mode.replace("x", "w"), block_size, autocommit=autocommit,
                         cache_options=cache_options, **kwargs)

    # ------------------------------------------------ writing

    def _edit(self, path: str, op: Any) -> None:
        volume, sub = self._split(path)
        with self._batch(volume) as batch:
            op(batch, sub)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        volume, sub = self._split(path)
        if not sub:
            self._run(lambda engine: engine.repo.create(volume))
            return
        if self.exists(path):
            raise FileExistsError(path)
        self._edit(path, lambda batch, sub: batch.mkdir(sub))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if self.exists(path):
            if not exist_ok or not self.isdir(path):
                raise FileExistsError(path)
            return
        self.mkdir(path)

    def rmdir(self, path: str) -> None:
        if self.ls(path, detail=False):
            raise OSError(f"directory not empty: {path}")
        self._edit(path, lambda batch, sub: batch.remove(sub))

    def rm_file(self, path: str) -> None:
        self._file_entry(*self._split(path), path)
        self._edit(path, lambda batch, sub: batch.remove(sub))

    _rm = rm_file

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        with self._one_snapshot():
            for p in sorted(paths, reverse=True):
                if not self._split(p)[1]:
                    raise ValueError(f"refusing to remove a whole volume through fsspec: {p}")
                self._edit(p, lambda batch, sub: batch.remove(sub, recursive=True, missing_ok=True))

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        v1, s1 = self._split(path1)
        v2, s2 = self._split(path2)
        if v1 != v2:   # another volume: the bytes move (through this process)
            entry = self._file_entry(v1, s1, path1)
            data = self._run(lambda engine: edit.read_bytes(engine, v1, entry))
            self.pipe_file(path2, data)
            return
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        self._edit(path1, lambda batch, sub: batch.copy(s1, s2))

    def copy(self, *args: Any, **kwargs: Any) -> None:
        with self._one_snapshot():
            super().copy(*args, **kwargs)

    def put(self, *args: Any, **kwargs: Any) -> None:
        with self._one_snapshot():
            super().put(*args, **kwargs)

    def pipe(self, *args: Any, **kwargs: Any) -> None:
        with self._one_snapshot():
            super().pipe(*args, **kwargs)

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:
        if isinstance(path1, str) and isinstance(path2, str):
            (v1, s1), (v2, s2) = self._split(path1), self._split(path2)
            if v1 == v2 and s1 and s2 and self.exists(path1) and not self.isdir(path2):
                self._edit(path1, lambda batch, sub: batch.move(s1, s2))
                return
        with self._one_snapshot():
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if mode == "create" and self.exists(path):
            raise FileExistsError(path)
        volume, sub = self._split(path)
        with self._batch(volume) as batch:
            self._run(lambda engine: batch.write(sub, bytes(value)))


class SyncdFile(AbstractBufferedFile):  # type: ignore[misc]
    """A file of a volume: ranged reads by chunk, or a streamed write published on close."""

    def __init__(self, fs: SyncdFileSystem, path: str, mode: str, block_size: int | None, **kwargs: Any) -> None:
        self.volume, self.sub = fs._split(path)
        self.entry: Entry | None = None
        self._writer: edit.FileWriter | None = None
        self._batch_cm: Any = None
        if "r" in mode:
            self.entry = fs._file_entry(self.volume, self.sub, path)
            kwargs["size"] = self.entry.size
            chunk = self.entry.chunks[0].size if len(self.entry.chunks) > 1 else fs.config.chunk_size
        elif not self.sub:
            raise IsADirectoryError(path)
        super().__init__(fs, path, mode, block_size or (chunk if "r" in mode else fs.config.chunk_size), **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        entry = self.entry
        assert entry is not None
        return self.fs._run(lambda engine: edit.read_bytes(engine, self.volume, entry, start, end))  # type: ignore[no-any-return]

    def _initiate_upload(self) -> None:
        self._batch_cm = self.fs._batch(self.volume)
        batch = self._batch_cm.__enter__()
        self._writer = batch.writer(self.sub)

    def _upload_chunk(self, final: bool = False) -> bool:
        if self._writer is None:
            self._initiate_upload()
        writer = self._writer
        assert writer is not None
        data = self.buffer.getvalue()
        if data:
            self.fs._run(lambda engine: writer.write(data))
        if final:
            self.fs._run(lambda engine: writer.close())
            cm, self._batch_cm = self._batch_cm, None
            cm.__exit__(None, None, None)     # publishes, unless a transaction holds the batch
        return True

    def discard(self) -> None:
        if self._batch_cm is not None:
            cm, self._batch_cm = self._batch_cm, None
            with contextlib.suppress(Exception):
                cm.__exit__(ConfigError, ConfigError("discarded"), None)

    def commit(self) -> None:
        """Nothing to do: the transaction publishes the volume's batch (SyncdTransaction)."""
