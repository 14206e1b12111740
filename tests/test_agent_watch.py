"""The agent's write-back driven by inotify, and its polling fallback, as a real subprocess on the real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from syncd import volume
from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.wiring import open_engine

from .agentutil import Agents, latest_files, wait_for
from .conftest import worker_config


def test_a_write_is_committed_with_no_walk_after_the_watcher_started(config: Config, agents: Agents) -> None:
    agent = agents.start(config)
    vol = volume("/watched", socket_path=config.socket)
    wait_for(lambda: (agent.mount_status("watched")["watch"] or {}).get("mode"), what="the watcher")
    assert agent.mount_status("watched")["watch"]["mode"] == "inotify"
    (vol / "deep" / "er").mkdir(parents=True)
    (vol / "deep" / "er" / "a.txt").write_text("one\n")
    wait_for(lambda: latest_files(config, "watched").get("deep/er/a.txt") == 4, what="write-back")
    (vol / "deep" / "er" / "a.txt").write_text("two!!\n")
    wait_for(lambda: latest_files(config, "watched").get("deep/er/a.txt") == 6, what="second write-back")
    wait_for(lambda: not agent.mount_status("watched")["pending"], what="a clean mount")
    watch = agent.mount_status("watched")["watch"]
    assert watch["scans"] == 1                     # the start; the writes cost no walk
    assert watch["hinted_commits"] >= 2            # and their commits lstat'ed the touched paths only


def test_the_agent_polls_when_inotify_cannot_watch_the_tree(config: Config, agents: Agents,
                                                          tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "x").write_text("x\n")

    async def seed() -> None:
        async with open_engine(worker_config(config, tmp_path, "seed")) as engine:
            await commit(engine, "polled", src)
    asyncio.run(seed())
    agent = agents.start(config, "--max-watches", "2")          # the mount has 3 directories
    vol = volume("/polled", socket_path=config.socket)
    wait_for(lambda: (agent.mount_status("polled")["watch"] or {}).get("mode") == "poll", what="polling")
    (vol / "a" / "y").write_text("yy\n")
    wait_for(lambda: latest_files(config, "polled").get("a/y") == 3, what="write-back by polling")
    assert "polling every" in agent.log()
