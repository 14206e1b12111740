"""The lazy mount when things break: store faults, a killed mount process, a full upper layer."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from syncd.config import Config, MiB
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import Engine, open_engine

from .faultproxy import FaultProxy, Rule
from .mountutil import MountProcess, fuse_missing

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")






def read(path: Path) -> bytes:
    return path.read_bytes()


async def test_store_faults_give_eio_never_wrong_bytes(config: Config, proxy: FaultProxy, tmp_path: Path,
                                                       mounts: list[MountProcess]) -> None:
    faulty = config.replace(s3_endpoint=proxy.endpoint, read_timeout=1.0, connect_timeout=1.0,
                            retries=2, retry_base_delay=0.01)
    source = tmp_path / "src"
    source.mkdir()
    data = {name: os.urandom(2 * MiB) for name in ("a.bin", "b.bin", "c.bin")}
    for name, body in data.items():
        (source / name).write_bytes(body)
    async with open_engine(config) as engine:
        await commit(engine, "vol", source)
    m = MountProcess(faulty, "vol", tmp_path / "mnt")
    mounts.append(m)
    await asyncio.to_thread(m.start)
    for fault, name in (("garble", "a.bin"), ("slowdown", "b.bin"), ("truncate", "c.bin")):
        proxy.rules = [Rule(fault, "GET", "/chunks/")]
        with pytest.raises(OSError) as info:
            await asyncio.to_thread(read, m.path / name)
        assert info.value.errno == errno.EIO, fault
        proxy.rules = []
        assert await asyncio.to_thread(read, m.path / name) == data[name], fault   # nothing bad was kept
    status = await asyncio.to_thread(m.call, "status")
    assert status["read_errors"] >= 3
    assert await asyncio.to_thread(m.stop) == 0


async def test_killed_mount_keeps_fsynced_writes_and_is_reclaimed(engine: Engine, config: Config, tmp_path: Path,
                                                                  mounts: list[MountProcess]) -> None:
    await engine.repo.create("vol")
    m = MountProcess(config, "vol", tmp_path / "mnt", "--debounce", "3600", "--max-delay", "3600")
    mounts.append(m)
    m.start()
    with open(m.path / "durable.txt", "wb") as f:
        f.write(b"fsynced\n")
        f.flush()
        os.fsync(f.fileno())
    (m.path / "volatile.txt").write_bytes(b"never fsynced\n")
    m.kill()
    with pytest.raises(OSError) as info:
        os.stat(m.path)
    assert info.value.errno == errno.ENOTCONN
    out = tmp_path / "eager"
    await hydrate(engine, "vol", out)
    assert (out / "durable.txt").read_bytes() == b"fsynced\n"   # fsync returned: it is in the bucket
    again = MountProcess(config, "vol", m.path)                  # the dead mount point is reclaimed
    mounts.append(again)
    again.start()
    assert (again.path / "durable.txt").read_bytes() == b"fsynced\n"
    assert again.stop() == 0


async def test_full_upper_layer_is_enospc_and_loses_nothing(engine: Engine, config: Config, tmp_path: Path,
                                                            mounts: list[MountProcess]) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "kept.bin").write_bytes(b"k" * 1000)
    await commit(engine, "vol", source)
    m = MountProcess(config, "vol", tmp_path / "mnt", "--upper-limit", "1M")
    mounts.append(m)
    m.start()
    (m.path / "fits.bin").write_bytes(b"f" * 300_000)
    with pytest.raises(OSError) as info, open(m.path / "too-big.bin", "wb") as f:
        for _ in range(4):
            f.write(b"x" * 400_000)
            f.flush()
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as info:
        with open(m.path / "kept.bin", "r+b") as f:
            f.write(b"y" * 2 * MiB)
    assert info.value.errno == errno.ENOSPC
    assert (m.path / "kept.bin").read_bytes() == b"k" * 1000     # the failed write changed nothing
    assert (m.path / "fits.bin").read_bytes() == b"f" * 300_000
    (m.path / "too-big.bin").unlink()
    m.call("commit")
    out = tmp_path / "eager"
    await hydrate(engine, "vol", out)
    assert (out / "kept.bin").read_bytes() == b"k" * 1000
    assert (out / "fits.bin").read_bytes() == b"f" * 300_000
    assert m.stop() == 0


async def test_stopping_fuse_tolerates_a_waiter_already_woken() -> None:
    """The stop's ``terminate`` fails the FUSE fd's waiters; one whose fd became readable a moment
    before is already done. pyfuse3's own shim raised InvalidStateError there (the mount exited 1
    and the waiters after it were never woken); ours skips it and wakes the rest."""
    import pyfuse3.asyncio as shim

    from syncd.mount.process import _notify_closing

    loop = asyncio.get_running_loop()
    woken, waiting = loop.create_future(), loop.create_future()
    woken.set_result(None)
    shim._read_futures[4242] = {woken, waiting}
    try:
        _notify_closing(4242)
    finally:
        del shim._read_futures[4242]
    assert isinstance(waiting.exception(), shim.ClosedResourceError) and woken.result() is None
