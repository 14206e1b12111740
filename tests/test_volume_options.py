"""Mount options on a real agent: ``read_only=True`` never commits, ``sub_path`` mounts one directory."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncd import volume
from syncd.config import Config
from syncd.errors import VolumeNotFound
from syncd.local import robind

from .agentutil import Agents, latest_files


def _seq(config: Config, name: str) -> int:
    import asyncio

    from syncd.engine.wiring import open_engine

    async def read() -> int:
        async with open_engine(config, use_cache=False) as engine:
            return (await engine.repo.head(name)).seq
    return asyncio.run(read())


def _open_to_nobody(path: Path) -> None:
    for p in [path, *path.parents]:
        if p == Path("/"):
            break
        if not p.stat().st_mode & 0o001:     # others may enter a sealed view already (0555, read-only)
            p.chmod(p.stat().st_mode | 0o711)


def test_read_only_and_sub_path(config: Config, agents: Agents, monkeypatch: pytest.MonkeyPatch) -> None:
    agents.start(config)
    monkeypatch.setenv("SYNCD_SOCKET", str(config.socket))
    with pytest.raises(VolumeNotFound):
        volume("data", read_only=True)                       # a view of nothing: refused
    writer = volume("data", sub_path="models/a")             # created, and the task sees only it
    assert writer.path == config.root / "data" / "models" / "a"
    (writer / "w.bin").write_bytes(b"weights")
    (writer.path.parent / "b.txt").write_text("beside\n")
    writer.commit()
    seq = _seq(config, "data")
    assert set(latest_files(config, "data")) == {"models/a/w.bin", "models/b.txt"}

    ro = volume("data", read_only=True, sub_path="models")
    assert sorted(os.listdir(ro)) == ["a", "b.txt"]
    assert (ro / "a" / "w.bin").read_bytes() == b"weights"
    assert not os.access(ro / "b.txt", os.W_OK) or os.geteuid() == 0
    with pytest.raises(PermissionError):
        ro.put_file(b"x", "new.txt")
    with pytest.raises(PermissionError):
        ro.remove_file("b.txt")
    assert ro.commit()["changed"] == 0
    shipped = pickle.loads(pickle.dumps(ro))                   # the options travel with the name
    assert shipped.read_only and shipped.sub_path == "models"

    # as an unprivileged task user: reading works, every write fails (EACCES; EROFS on a sealed view)
    _open_to_nobody(ro.path)
    script = ("import errno,pathlib,sys; p=pathlib.Path(sys.argv[1]); print((p/'b.txt').read_text(), end='')\n"
              "for f in (lambda: (p/'b.txt').write_text('x'), lambda: (p/'c.txt').write_text('x'),"
              " lambda: (p/'a'/'w.bin').unlink(), lambda: (p/'d').mkdir()):\n"
              "    try: f(); sys.exit('a write succeeded')\n"
              "    except OSError as e:\n"
              "        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS): raise\n")
    python = sys.executable if os.geteuid() != 0 else shutil.which("python3", path="/usr/bin:/bin")
    if python is not None:                                     # a python the nobody user may run
        nobody = subprocess.run([python, "-c", script, str(ro.path)], user=65534 if os.geteuid() == 0 else None,
                                capture_output=True, text=True, timeout=60)
        assert nobody.returncode == 0 and nobody.stdout == "beside\n", nobody.stderr
    if os.geteuid() == 0 and not robind.sealed(ro.path):       # root ignores modes: write anyway...
        (ro.path / "b.txt").chmod(0o644)
        (ro.path / "b.txt").write_text("root wrote this\n")
    writer.commit()
    assert _seq(config, "data") == seq                         # ...nothing reaches the volume
    assert (writer.path.parent / "b.txt").read_text() == "beside\n"
