"""``Volume.listdir/read_file/put_file/remove_file`` with only configuration: no agent, no mount."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from syncd import Volume
from syncd.config import Config
from syncd.errors import SnapshotNotFound, VolumeNotFound


def test_file_methods_without_an_agent(no_agent_env: Config, tmp_path: Path) -> None:
    v = Volume("/my_volume")
    with pytest.raises(VolumeNotFound):
        v.listdir()
    data = random.Random(1).randbytes(3 * no_agent_env.chunk_size + 5)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    v.put_file(local, "models/big.bin")                          # creates the volume
    v.put_file(io.BytesIO(b"hello\n"), "models/readme.txt")
    v.put_file(b"top\n", "top.txt")
    assert [(e.path, e.type) for e in v.listdir()] == [("models", "dir"), ("top.txt", "file")]
    assert [e.path for e in v.listdir("models", recursive=True)] == ["models/big.bin", "models/readme.txt"]
    pieces = list(v.read_file("models/big.bin"))
    assert len(pieces) >= 2 and b"".join(pieces) == data        # streamed chunk by chunk
    assert b"".join(v.read_file("models/readme.txt")) == b"hello\n"
    v.remove_file("models", recursive=True)
    assert [e.path for e in v.listdir()] == ["top.txt"]
    with pytest.raises(SnapshotNotFound):
        v.read_file("models/big.bin")
