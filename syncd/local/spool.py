"""An append-only spill file: records written in batches, read back in the same order.

A commit must not write its index rows before HEAD names the snapshot they
describe (a crash in between would leave rows claiming a commit that never
happened), and must be able to replay its changes onto a newer HEAD when
another writer got there first. For a million changed files, holding them
until then would hold the volume; so they go here as they are made, in
batches (msgpack, length-prefixed), and are read back batch by batch.

The file lives in the state directory (never in the volume), is private
(0600, ``O_EXCL``), and is removed when the spool is closed; a process killed
in between leaves a ``spool-*`` file that the next spool in that directory
removes (every spool is owned by a commit holding its directory's lock, so
none outlives its process for a reason). Blocking: call from worker threads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import msgspec

from syncd.errors import LocalIOError

PREFIX = "spool-"
STALE_AFTER = 24 * 3600.0       # a leftover older than this is another process's crash
_LEN = struct.Struct("<I")


class Spool:
    def __init__(self, directory: Path) -> None:
        self.path = directory / f"{PREFIX}{secrets.token_hex(8)}"
        self.batches = 0
        self.records = 0
        self._encoder = msgspec.msgpack.Encoder()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _remove_stale(directory)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LocalIOError(f"cannot create a spool file in {directory}: {exc.strerror}") from exc
        self._file = os.fdopen(fd, "w+b")

    def add(self, records: list[Any]) -> None:
        """Append one batch (any msgpack-able values)."""
        if not records:
            return
        data = self._encoder.encode(records)
        try:
            self._file.write(_LEN.pack(len(data)))
            self._file.write(data)
        except OSError as exc:
            raise LocalIOError(f"cannot write the spool file {self.path}: {exc.strerror}") from exc
        self.batches += 1
        self.records += len(records)

    def batches_in_order(self) -> Generator[list[Any], None, None]:
        """Every batch, in the order written (the spool may be read any number of times)."""
        try:
            self._file.flush()
            with open(self.path, "rb") as f:
                while head := f.read(_LEN.size):
                    (size,) = _LEN.unpack(head)
                    yield msgspec.msgpack.decode(f.read(size))
        except OSError as exc:
            raise LocalIOError(f"cannot read the spool file {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _remove_stale(directory: Path) -> None:
    now = time.time()
    for entry in os.scandir(directory):
        if entry.name.startswith(PREFIX):
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER:
                    os.unlink(entry.path)
