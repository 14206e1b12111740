"""A lazy mount never wipes uncommitted writes (issue 24 item 2, the lazy path).

The mount process is killed (``kill -9``) with writes not yet committed, the
volume is renamed or deleted elsewhere, and the volume is mounted again: the
writes are set aside by path under
``$SYNCD_STATE_DIR/mount/<owner>/.orphaned/<volume>-<UTC time>/`` (aside.py),
what was committed is not kept twice, nothing is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.config import Config, MiB
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.rename import rename
from syncd.engine.wiring import Engine, open_engine
from syncd.mount.spawn import config_to_json, mounted_at
from syncd.sdk.volume import volume

from .agentutil import Agents, detach_under, env_for, wait_for
from .checks import chunk_bytes
from .mountutil import MountProcess, fuse_missing

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")
QUIET = ("--debounce", "3600", "--max-delay", "3600")   # no background commit


def asides(config: Config, volume: str) -> list[Path]:
    top = config.state_dir / "mount" / config.owner / ".orphaned"
    return sorted(top.glob(f"{volume}-*")) if top.is_dir() else []


def files_under(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def mount_again(config: Config, volume: str, path: Path) -> subprocess.CompletedProcess[bytes]:
    """``syncd mount`` of a volume that no longer exists: it must fail, after setting aside."""
    env = {**env_for(config), "SYNCD_MOUNT_CONFIG": config_to_json(config)}
    return subprocess.run([sys.executable, "-m", "syncd.mount.process", volume, str(path)],
                          capture_output=True, env=env, timeout=60)


async def seed(engine: Engine, tmp_path: Path) -> bytes:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "committed.txt").write_bytes(b"committed before\n")
    (source / "edited.txt").write_bytes(b"old content\n")
    big = random.Random(8).randbytes(3 * MiB + 5000)     # fixed bytes: 4 chunks, the edit in the second
    (source / "sub" / "big.bin").write_bytes(big)
    await commit(engine, "vol", source)
    return big


async def quiet_mount(config: Config, tmp_path: Path, mounts: list[MountProcess]) -> MountProcess:
    m = MountProcess(config, "vol", tmp_path / "mnt", *QUIET)
    mounts.append(m)
    await asyncio.to_thread(m.start)
    return m


def write_uncommitted(m: MountProcess) -> None:
    (m.path / "sub" / "new.txt").write_bytes(b"new, never committed\n")
    (m.path / "edited.txt").write_bytes(b"edited, never committed\n")
    (m.path / "d1" / "d2").mkdir(parents=True)
    (m.path / "d1" / "d2" / "deep.bin").write_bytes(b"deep " * 1000)
    (m.path / "d1" / "d2" / "deep.bin").rename(m.path / "d1" / "d2" / "moved.bin")
    with open(m.path / "sub" / "big.bin", "r+b") as f:   # copy-up: only the second chunk is upper
        f.seek(MiB + 10)
        f.write(b"EDITED")


async def test_killed_mount_then_volume_renamed_sets_writes_aside_by_path(
        engine: Engine, config: Config, tmp_path: Path, mounts: list[MountProcess]) -> None:
    big = await seed(engine, tmp_path)
    m = await quiet_mount(config, tmp_path, mounts)
    (m.path / "committed-here.txt").write_bytes(b"written and committed through the mount\n")
    await asyncio.to_thread(m.call, "commit")
    await asyncio.to_thread(write_uncommitted, m)

    def noted() -> bool:
        status = m.call("status")
        return bool(status["noted_changes"] == status["changes"])
    await asyncio.to_thread(wait_for, noted, 30, "the recovery note to cover the writes")
    (m.path / "late.txt").write_bytes(b"written after the last note\n")   # path known or not: bytes kept
    m.kill()
    await rename(engine, "vol", "renamed")

    done = await asyncio.to_thread(mount_again, config, "vol", m.path)
    assert done.returncode != 0                                     # the volume is gone
    [where] = asides(config, "vol")
    assert str(where) in done.stderr.decode()
    got = files_under(where)
    info = json.loads(got.pop("ASIDE.json"))
    late = [k for k, v in got.items() if v == b"written after the last note\n"]
    assert len(late) == 1 and late[0] in ("late.txt", f".unplaced/{late[0].rsplit('/', 1)[-1]}")
    del got[late[0]]
    partial = got.pop("sub/big.bin.partial")
    assert got == {"sub/new.txt": b"new, never committed\n",
                   "edited.txt": b"edited, never committed\n",
                   "d1/d2/moved.bin": b"deep " * 1000}              # committed files are not kept twice
    [record] = [r for r in info["files"] if r["path"] == "sub/big.bin.partial"]
    assert record["volume_path"] == "sub/big.bin" and record["size"] == len(big)
    starts = list(itertools.accumulate((len(c) for c in chunk_bytes(big, config)), initial=0))
    [(lo, hi)] = [(a, b) for a, b in itertools.pairwise(starts) if a < MiB + 16 and b > MiB + 10]
    assert 0 < lo and hi < len(big)                                 # the edited chunk, inside the file,
    assert record["ranges"] == [[lo, hi]]                           # is exactly what was copied up
    want = big[:MiB + 10] + b"EDITED" + big[MiB + 16:]
    assert partial[lo:hi] == want[lo:hi]                            # the ranges hold the task's bytes
    out = tmp_path / "renamed"                                      # the renamed volume has the commits
    await hydrate(engine, "renamed", out)
    assert (out / "committed-here.txt").read_bytes() == b"written and committed through the mount\n"
    assert not (out / "sub" / "new.txt").exists()


async def test_killed_mount_of_a_live_volume_does_not_wipe_its_writes(
        engine: Engine, config: Config, tmp_path: Path, mounts: list[MountProcess]) -> None:
    await seed(engine, tmp_path)
    m = await quiet_mount(config, tmp_path, mounts)
    (m.path / "volatile.txt").write_bytes(b"never committed\n")
    m.kill()                                        # maybe before any note: kept unplaced then
    again = MountProcess(config, "vol", m.path)
    mounts.append(again)
    await asyncio.to_thread(again.start)
    [where] = asides(config, "vol")
    got = files_under(where)
    assert [k for k, v in got.items() if v == b"never committed\n"]
    assert "set aside" in again.log()
    assert await asyncio.to_thread(again.stop) == 0
    assert asides(config, "vol") == [where]         # a clean stop sets nothing more aside


async def test_failed_final_commit_of_a_deleted_volume_sets_writes_aside(
        engine: Engine, config: Config, tmp_path: Path, mounts: list[MountProcess]) -> None:
    await seed(engine, tmp_path)
    m = await quiet_mount(config, tmp_path, mounts)
    await asyncio.to_thread(write_uncommitted, m)
    await engine.repo.delete("vol")
    assert await asyncio.to_thread(m.stop) == 1    # the final commit fails: the volume is gone
    [where] = asides(config, "vol")
    got = files_under(where)
    del got["ASIDE.json"]
    assert set(got) == {"sub/new.txt", "edited.txt", "d1/d2/moved.bin", "sub/big.bin.partial"}
    assert got["sub/new.txt"] == b"new, never committed\n"
    assert "set aside" in m.log() or str(where) in m.log()


@pytest.fixture
def unmount_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    detach_under(tmp_path)


def test_agent_lazy_mount_killed_after_a_rename_sets_the_later_write_aside(
        config: Config, agents: Agents, unmount_leftovers: None) -> None:
    """Issue 24's sequence on a lazy mount: rename elsewhere, a write into the mount, then the
    mount process dies; the agent mounts it again, which sets the write aside and says where."""
    agent = agents.start(config)
    mountpoint = config.root / "shared"
    volume("shared", socket_path=config.socket, owner=config.owner, mode="lazy")
    with open(mountpoint / "a.txt", "wb") as f:
        f.write(b"committed\n")
        f.flush()
        os.fsync(f.fileno())                    # through the lazy mount: a commit

    async def rename_elsewhere() -> None:
        async with open_engine(config) as engine:
            await rename(engine, "shared", "cov-vol")
    asyncio.run(rename_elsewhere())
    (mountpoint / "post-rename.txt").write_bytes(b"written after the rename\n")
    [mount] = [m for m in agent.status()["mounts"] if m["name"] == "shared"]
    os.kill(int(mount["pid"]), signal.SIGKILL)

    [where] = wait_for(lambda: asides(config, "shared"), 60, "the agent's new mount process to set aside")
    wait_for(lambda: "not mounted again" in agent.log(), 60, "the agent to give up on the vanished volume")
    got = files_under(where)
    assert [k for k, v in got.items() if v == b"written after the rename\n"]
    assert str(where) in agent.log() and "set aside" in agent.log()
    assert not mounted_at(mountpoint)
