"""The agent's lazy mode: ``volume(name, mode="lazy")`` is a FUSE mount served by a child process."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.engine.wiring import open_engine
from syncd.mount.spawn import control_path, mounted_at, work_dir
from syncd.sdk.volume import volume

from . import agentutil
from .agentutil import Agents, detach_under, latest_files
from .conftest import worker_config
from .mountutil import MountProcess, fuse_missing
from .test_workflow import LABELS, Worker, create_new_files, read_existing

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")


@pytest.fixture
def unmount_leftovers(tmp_path: Path) -> Iterator[None]:
    """Agents killed at teardown leave their mount processes to notice, and the seals below their
    mount points; detach what is left."""
    yield
    detach_under(tmp_path)


@pytest.mark.slow   # two agents and a dispatch pair: ~15 s on an idle 2-core machine
def test_seed_workflow_with_a_lazy_and_an_eager_worker(config: Config, agents: Agents, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       unmount_leftovers: None) -> None:
    """tests/test_workflow.py's product-page workflow, worker A lazy (SYNCD_MOUNT_MODE), B eager."""
    eager_env = agentutil.env_for
    monkeypatch.setattr(agentutil, "env_for", lambda c: {**eager_env(c), "SYNCD_MOUNT_MODE": "lazy"})
    lazy_agent = agents.start(config)
    monkeypatch.setattr(agentutil, "env_for", eager_env)
    config_b = worker_config(config, tmp_path, "worker-b")
    agents.start(config_b)
    workers = [Worker(config.socket), Worker(config_b.socket)]

    def dispatch(first: int) -> dict[str, str]:
        futures = [workers[(first + i) % 2].run(create_new_files, label) for i, label in enumerate(LABELS)]
        labels = [f.result(60) for f in futures]
        return workers[(first + 1) % 2].run(read_existing, labels).result(60)

    first = dispatch(0)
    assert len(first) == 3 and {k.split("/")[0] for k in first} == set(LABELS)
    second = dispatch(1)
    assert len(second) == 6 and set(first) < set(second)
    assert len(latest_files(config, "my-volume")) == 6
    assert lazy_agent.mount_status("my-volume")["mode"] == "lazy"
    assert mounted_at(config.root / "my-volume")
    for w in workers:
        w.pool.shutdown()
    lazy_agent.kill()                    # kill -9: the orphaned mount process commits and unmounts
    agentutil.wait_for(lambda: not mounted_at(config.root / "my-volume"), 30, "the orphaned mount to stop")


def test_sdk_lazy_mode_commits_and_flushes_on_sigterm(config: Config, agents: Agents,
                                                      unmount_leftovers: None) -> None:
    agent = agents.start(config)
    mountpoint = config.root / "shared"
    lazy = volume("shared", socket_path=config.socket, owner=config.owner, mode="lazy")
    assert lazy.path == mountpoint and mounted_at(mountpoint)
    assert agent.mount_status("shared")["mode"] == "lazy"
    (lazy / "run").mkdir()
    (lazy / "run" / "log.txt").write_text("from the lazy worker\n")
    lazy.commit("lazy write")
    assert latest_files(config, "shared") == {"run/log.txt": 21}
    assert volume("shared", socket_path=config.socket, owner=config.owner).path == mountpoint  # stays lazy
    (lazy / "run" / "late.txt").write_text("flushed by SIGTERM\n")
    assert agent.terminate() == 0          # the agent stops its mount processes: commit, unmount
    assert not mounted_at(mountpoint)
    assert latest_files(config, "shared") == {"run/log.txt": 21, "run/late.txt": 19}
    again = agents.start(config)           # a restart mounts it again, lazily
    resumed = agentutil.wait_for(lambda: next((m for m in again.status()["mounts"] if m["name"] == "shared"), None),
                                 30, "the lazy mount to be resumed")
    assert resumed["mode"] == "lazy" and mounted_at(mountpoint)
    assert (mountpoint / "run" / "late.txt").read_text() == "flushed by SIGTERM\n"
    assert again.terminate() == 0 and not mounted_at(mountpoint)


def _lazy_pid(agent: agentutil.AgentProcess, name: str) -> int | None:
    mount = next((m for m in agent.status()["mounts"] if m["name"] == name and m["mode"] == "lazy"), None)
    return int(mount["pid"]) if mount is not None and mounted_at(agent.config.root / name) else None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())            # through the lazy mount: a commit


def test_a_killed_mount_comes_back_and_writes_in_a_gap_fail_loudly(config: Config, agents: Agents,
                                                                   unmount_leftovers: None) -> None:
    """kill -9 of the mount process: the agent mounts it again by itself (no task asks). kill -9 of
    the agent: its mount process commits and unmounts; until the restarted agent mounts again a
    write to the mount point fails with EROFS, instead of landing on the bare directory where the
    next mount would hide it (an fsynced write in no volume: found by bench/soak.py)."""
    agent = agents.start(config)
    mountpoint = config.root / "shared"
    volume("shared", socket_path=config.socket, owner=config.owner, mode="lazy")
    _write_synced(mountpoint / "a.txt", b"before the kill\n")
    first = _lazy_pid(agent, "shared")
    assert first is not None
    os.kill(first, signal.SIGKILL)
    again = agentutil.wait_for(lambda: (p := _lazy_pid(agent, "shared")) != first and p, 60,
                               "the agent to mount the killed mount again")
    assert again and (mountpoint / "a.txt").read_bytes() == b"before the kill\n"
    _write_synced(mountpoint / "b.txt", b"after the revival\n")
    assert latest_files(config, "shared") == {"a.txt": 16, "b.txt": 18}
    assert "its process exited with -9; mounting it again" in agent.log()

    agent.kill()                                               # its mount process commits, unmounts
    agentutil.wait_for(lambda: not mounted_at(mountpoint), 60, "the orphaned mount to stop")
    with pytest.raises(OSError) as refused:
        _write_synced(mountpoint / "gap.txt", b"nobody serves this\n")
    assert refused.value.errno == errno.EROFS
    restarted = agents.start(config)
    agentutil.wait_for(lambda: _lazy_pid(restarted, "shared"), 60, "the lazy mount to be resumed")
    assert sorted(p.name for p in mountpoint.iterdir()) == ["a.txt", "b.txt"]
    assert restarted.terminate() == 0 and not mounted_at(mountpoint)
    assert latest_files(config, "shared") == {"a.txt": 16, "b.txt": 18}


def test_a_restarted_agent_takes_over_from_a_mount_process_still_serving(config: Config, agents: Agents,
                                                                         unmount_leftovers: None) -> None:
    """The agent restarts while a mount process of its previous life still serves the mount point
    (it has not noticed yet, or is still committing): the restart's resume asks it to stop and
    mounts in its place, instead of failing on a mount point that is busy."""
    agent = agents.start(config)
    volume("shared", socket_path=config.socket, owner=config.owner, mode="lazy")
    agent.terminate()
    mountpoint = config.root / "shared"
    old = MountProcess(config, "shared", mountpoint)          # the previous life's mount, still up
    old.control = control_path(work_dir(config, "shared", mountpoint))
    old.start()
    try:
        _write_synced(mountpoint / "late.txt", b"written through the old process\n")
        restarted = agents.start(config)
        pid = agentutil.wait_for(lambda: _lazy_pid(restarted, "shared"), 60, "the lazy mount to be resumed")
        assert old.proc is not None and old.proc.wait(60) == 0 and pid != old.proc.pid
        assert "still served by a mount process of a previous agent" in restarted.log()
        assert (mountpoint / "late.txt").read_bytes() == b"written through the old process\n"
    finally:
        old.kill()


def test_a_lazy_mount_that_cannot_be_resumed_is_retried_in_the_background(
        config: Config, agents: Agents, unmount_leftovers: None) -> None:
    """At the agent's start its lazy mount point is held by a mount nobody can ask to stop (not
    ours: another control socket): the resume fails, is logged, and is retried with backoff until
    the mount point is free, with no task asking."""
    agent = agents.start(config)
    volume("shared", socket_path=config.socket, owner=config.owner, mode="lazy")
    assert agent.terminate() == 0
    mountpoint = config.root / "shared"
    squatter = MountProcess(config, "shared", mountpoint)
    squatter.start()
    try:
        restarted = agents.start(config)
        agentutil.wait_for(lambda: "retrying in the background" in restarted.log(), 90, "the failed resume")
        assert _lazy_pid(restarted, "shared") is None
    finally:
        assert squatter.stop() == 0
    assert agentutil.wait_for(lambda: _lazy_pid(restarted, "shared"), 90, "the lazy mount to be retried")


def test_a_lazy_volume_deleted_while_the_agent_was_down_is_not_retried(config: Config, agents: Agents,
                                                                        unmount_leftovers: None) -> None:
    """The background retry is for a mount that can come back, not for a volume that is gone."""
    agent = agents.start(config)
    volume("shared", socket_path=config.socket, owner=config.owner, mode="lazy")
    assert agent.terminate() == 0

    async def delete() -> None:
        async with open_engine(config) as engine:
            await engine.repo.delete("shared")
    asyncio.run(delete())
    restarted = agents.start(config)
    agentutil.wait_for(lambda: "cannot resume the lazy mount of shared" in restarted.log(), 60, "the resume")
    assert "does not exist" in restarted.log() and "retrying in the background" not in restarted.log()
    assert _lazy_pid(restarted, "shared") is None
