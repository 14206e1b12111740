"""The agent's lazy mode: ``volume(name, mode="lazy")`` is a FUSE mount served by a child process."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.mount.spawn import mounted_at
from syncd.sdk.volume import volume

from . import agentutil
from .agentutil import Agents, latest_files
from .conftest import worker_config
from .mountutil import fuse_missing
from .test_workflow import LABELS, Worker, create_new_files, read_existing

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")


@pytest.fixture
def unmount_leftovers(tmp_path: Path) -> Iterator[None]:
    """Agents killed at teardown leave their mount processes to notice; detach what is left."""
    yield
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith(str(tmp_path)):
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)


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
