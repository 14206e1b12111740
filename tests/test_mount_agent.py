"""The agent's lazy mode: ``volume(name, mode="lazy")`` is a FUSE mount served by a child process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.mount.spawn import mounted_at
from syncd.sdk.volume import volume

from .agentutil import latest_files
from .conftest import worker_config
from .mountutil import fuse_missing

pytestmark = pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")


def test_lazy_and_eager_workers_share_a_volume(config: Config, tmp_path: Path, agents: object) -> None:
    lazy_agent = agents.start(config)  # type: ignore[attr-defined]
    mountpoint = config.root / "shared"
    try:
        lazy = volume("shared", socket_path=config.socket, owner=config.owner, mode="lazy")
        assert lazy.path == mountpoint and mounted_at(mountpoint)
        (lazy / "run").mkdir()
        (lazy / "run" / "log.txt").write_text("from the lazy worker\n")
        lazy.commit("lazy write")
        assert latest_files(config, "shared") == {"run/log.txt": 21}
        assert lazy_agent.mount_status("shared")["mode"] == "lazy"

        other = worker_config(config, tmp_path, "w2")
        agents.start(other)  # type: ignore[attr-defined]
        eager = volume("shared", socket_path=other.socket, owner=other.owner)
        assert (eager / "run" / "log.txt").read_text() == "from the lazy worker\n"
        (eager / "run" / "eager.txt").write_text("from the eager worker\n")
        eager.commit("eager write")

        lazy.reload()
        assert (lazy / "run" / "eager.txt").read_text() == "from the eager worker\n"
        assert volume("shared", socket_path=config.socket, owner=config.owner).path == mountpoint  # stays lazy
        assert lazy_agent.terminate() == 0          # SIGTERM: the mount process commits and unmounts
        assert not mounted_at(mountpoint)
    finally:
        if mounted_at(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
