"""One agent per SYNCD_ROOT (issue 24 item 3): a second agent on a held root is refused and changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from syncd import volume
from syncd.agent.rootlock import LOCK_NAME, RootLock
from syncd.config import Config
from syncd.errors import ConfigError, LocalIOError

from .agentutil import Agents, env_for, latest_files


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
