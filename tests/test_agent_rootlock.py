"""One agent per SYNCD_ROOT (issue 24 item 3): a second agent on a held root is refused and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd import volume
from syncd.agent.rootlock import LOCK_NAME, RootLock
from syncd.config import Config
from syncd.errors import ConfigError, LocalIOError

from .agentutil import Agents, env_for, latest_files, wait_for


def test_a_second_agent_on_a_held_root_is_refused(config: Config, agents: Agents, tmp_path: Path) -> None:
    first = agents.start(config, "--debounce", "60", "--max-delay", "120")
    vol = volume("owned", socket_path=config.socket)
    (vol / "mine.txt").write_text("the first agent's\n")
    vol.commit()
    before = first.mount_status("owned")["seq"]
    second = config.replace(socket=tmp_path / "second.sock", state_dir=tmp_path / "second-state")
    proc = subprocess.run([sys.executable, "-m", "syncd", "agent"], env=env_for(second),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "another agent" in proc.stderr and str(config.root) in proc.stderr and "SYNCD_ROOT" in proc.stderr
    assert not (tmp_path / "second.sock").exists()
    assert (vol.path / "mine.txt").read_text() == "the first agent's\n"
    assert first.mount_status("owned")["seq"] == before and set(latest_files(config, "owned")) == {"mine.txt"}
    first.kill()                                # kill -9: the kernel drops the lock with the process
    agents.start(second)                        # so a replacement starts at once


def test_the_lock_is_exclusive_per_open_and_refuses_a_planted_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    held = RootLock.acquire(root)
    with pytest.raises(ConfigError, match="another agent"):
        RootLock.acquire(root)
    held.release()
    RootLock.acquire(root).release()
    (root / LOCK_NAME).unlink()
    (root / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LocalIOError):
        RootLock.acquire(root)
    assert not (tmp_path / "elsewhere").exists()


def test_two_agents_started_at_once_one_serves_the_other_is_refused(config: Config, tmp_path: Path) -> None:
    """No window between the check and the lock: of two agents racing for one root, exactly one wins."""
    procs, logs = [], []
    try:
        for name in ("a", "b"):
            own = config.replace(socket=tmp_path / f"{name}.sock", state_dir=tmp_path / f"{name}-state")
            logs.append(tmp_path / f"{name}.log")
            with open(logs[-1], "wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "syncd", "agent"], env=env_for(own),
                                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        wait_for(lambda: any(p.poll() is not None for p in procs), 60, "one of the two to give up")
        [lost] = [i for i, p in enumerate(procs) if p.poll() is not None]
        won = 1 - lost
        assert procs[lost].returncode == 2 and "another agent" in logs[lost].read_text()
        sock = tmp_path / ("a.sock", "b.sock")[won]
        wait_for(lambda: sock.exists() or procs[won].poll() is not None, 60, "the winner to serve")
        assert procs[won].poll() is None and f"{procs[won].pid}" in (config.root / LOCK_NAME).read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_a_lock_file_left_by_a_dead_agent_does_not_block(tmp_path: Path) -> None:
    """What kill -9 leaves is a file naming a dead (or reused) pid: the lock itself died with it."""
    root = tmp_path / "root"
    RootLock.acquire(root).release()
    (root / LOCK_NAME).write_text("1\n")                  # pid 1: alive, and not an agent
    held = RootLock.acquire(root)
    assert (root / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    held.release()


def test_a_lazy_mount_process_outliving_a_killed_agent_holds_no_lock(config: Config, agents: Agents,
                                                                      tmp_path: Path) -> None:
    """The FUSE child is spawned without the lock's descriptor (O_CLOEXEC): a restart is immediate."""
    from .mountutil import fuse_missing
    if fuse_missing() is not None:
        pytest.skip(fuse_missing() or "")
    first = agents.start(config)
    try:
        vol = volume("lazy", socket_path=config.socket, mode="lazy")
        (vol / "a.txt").write_text("through FUSE\n")
        first.kill()                                    # the mount process is still alive at this point
        second = agents.start(config.replace(socket=tmp_path / "second.sock"))
        assert second.status()["root"] == str(config.root)
    finally:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(str(tmp_path)):
                subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
