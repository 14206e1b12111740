"""The agent as a real subprocess on the real server: write-back, flush, crash, single-flight."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from syncd import Volume, volume
from syncd.cli.core import main
from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.sdk.volume import AgentClient

from .agentutil import Agents, latest_files, wait_for
from .conftest import worker_config
from .faultproxy import FaultProxy, Rule
from .treeutil import make_tree, snapshot_tree

QUIET = ("--debounce", "60", "--max-delay", "120")   # no background commit during the test


def test_background_write_back_commit_and_reload(config: Config, agents: Agents, tmp_path: Path) -> None:
    agent = agents.start(config)
    vol = volume("/my-volume", socket_path=config.socket)
    assert vol.path == config.root / "my-volume" and vol.path.is_dir()

    (vol / "label").mkdir()
    (vol / "label" / "log.txt").write_text("written by a task\n")
    # nobody calls commit: the watcher notices, waits for quiet, commits
    wait_for(lambda: latest_files(config, "my-volume").get("label/log.txt") == 18, what="write-back")
    wait_for(lambda: not agent.mount_status("my-volume")["pending"], what="clean mount")

    (vol / "now.txt").write_text("x" * 1000)
    vol.commit("explicit")                      # durable when it returns
    assert latest_files(config, "my-volume")["now.txt"] == 1000

    other = tmp_path / "elsewhere"              # another worker commits
    other.mkdir()
    (other / "theirs.txt").write_text("from worker 2\n")

    async def commit_elsewhere() -> None:
        async with open_engine(worker_config(config, tmp_path, "w2")) as engine:
            await commit(engine, "my-volume", other)
    asyncio.run(commit_elsewhere())
    assert not (vol / "theirs.txt").exists()
    vol.reload()
    assert (vol / "theirs.txt").read_text() == "from worker 2\n"
    assert (vol / "now.txt").exists() and (vol / "label" / "log.txt").exists()


def test_concurrent_mounts_of_one_volume_hydrate_once(config: Config, agents: Agents,
                                                      tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=120)

    async def seed() -> set[str]:
        async with open_engine(worker_config(config, tmp_path, "seed")) as engine:
            await commit(engine, "shared", src)
            _, snap = await engine.repo.latest("shared")
        assert snap is not None
        return {c.pack or c.id for e in snap.entries.values() for c in e.chunks}
    objects = asyncio.run(seed())

    agent = agents.start(config)
    barrier = threading.Barrier(8)
    paths: list[Path] = []

    def task() -> None:
        barrier.wait()
        paths.append(volume("shared", socket_path=config.socket).path)
    threads = [threading.Thread(target=task) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(paths) == 8 and len(set(paths)) == 1
    status = agent.status()
    assert status["mounts"][0]["hydrates"] == 1
    # every pack and chunk was fetched exactly once, however many tasks asked
    assert status["store"]["data_gets"] == len(objects)
    assert snapshot_tree(paths[0]) == snapshot_tree(src)
    # the agent's /metrics tells where the bytes came from: all from the store, once
    from syncd.sdk.volume import _UnixConnection
    conn = _UnixConnection(str(config.socket), 10)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    conn.close()
    stored = next(line for line in metrics.splitlines()
                  if line.startswith('syncd_fetch_bytes_total{source="store"}'))
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert float(stored.split()[-1]) == total


def test_sigterm_flushes_pending_writes(config: Config, agents: Agents, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    agent = agents.start(config, *QUIET)
    vol = volume("flush", socket_path=config.socket)
    (vol / "pending.bin").write_bytes(b"p" * 300_000)
    assert latest_files(config, "flush") == {}
    monkeypatch.setenv("SYNCD_SOCKET", str(config.socket))
    wait_for(lambda: agent.mount_status("flush")["pending"], what="the watcher to see the write")
    assert main(["status"]) == 0                     # `syncd status` shows it
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[0] == "flush")
    assert "pending writes" in line
    assert agent.terminate() == 0
    assert latest_files(config, "flush") == {"pending.bin": 300_000}
    assert not config.socket.exists()


def test_kill_9_and_restart_loses_nothing(config: Config, agents: Agents) -> None:
    agent = agents.start(config, *QUIET)
    vol = volume("crash", socket_path=config.socket)
    (vol / "committed.txt").write_text("committed\n")
    vol.commit()
    (vol / "pending.txt").write_text("pending at the crash\n")
    agent.kill()                                       # SIGKILL: no flush
    (vol.path / "while-down.txt").write_text("written while the agent was down\n")
    assert set(latest_files(config, "crash")) == {"committed.txt"}

    # a task that commits while the agent is down waits for it to come back
    waiting = Volume("crash", client=AgentClient(config.socket, connect_wait=60))
    results: list[dict[str, Any]] = []
    committer = threading.Thread(target=lambda: results.append(waiting.commit("during the restart")))
    committer.start()
    restarted = agents.start(config, *QUIET)
    committer.join(60)
    # the restarted agent resumed the mount from its state file and committed what was pending
    assert results and results[0]["seq"] >= 2
    assert set(latest_files(config, "crash")) == {"committed.txt", "pending.txt", "while-down.txt"}
    # the mount is listed once its incremental hydrate (after that commit) finished
    def resumed() -> dict[str, Any] | None:
        status = restarted.status()
        return status if status["mounts"] else None
    status = wait_for(resumed, what="resumed mount")
    assert [m["name"] for m in status["mounts"]] == ["crash"]
    assert status["store"]["data_gets"] == 0            # the local copy was reused, not downloaded again
    assert (vol.path / "pending.txt").read_text() == "pending at the crash\n"


def test_a_volume_deleted_elsewhere_is_not_resurrected(config: Config, agents: Agents, tmp_path: Path) -> None:
    agents.start(config)
    vol = volume("gone", socket_path=config.socket)
    (vol / "old.txt").write_text("from the deleted volume\n")
    vol.commit()

    async def delete_elsewhere() -> None:       # e.g. `syncd volume rm gone --yes` on a laptop
        async with open_engine(worker_config(config, tmp_path, "laptop")) as engine:
            await engine.repo.delete("gone")
    asyncio.run(delete_elsewhere())

    again = volume("gone", socket_path=config.socket)   # create-or-refer: a new, empty volume
    assert list(again.path.iterdir()) == []
    again.commit()
    assert latest_files(config, "gone") == {}


def test_two_agents_writing_back_in_the_background_merge(config: Config, agents: Agents,
                                                         tmp_path: Path) -> None:
    config_b = worker_config(config, tmp_path, "worker-b")
    agents.start(config)
    agents.start(config_b)
    a = volume("both", socket_path=config.socket)
    b = volume("both", socket_path=config_b.socket)
    for i in range(5):                                  # nobody commits explicitly
        (a / f"a{i}.txt").write_text(f"a{i}\n")
        (b / f"b{i}.txt").write_text(f"b{i}\n")
    expected = {f"a{i}.txt" for i in range(5)} | {f"b{i}.txt" for i in range(5)}
    wait_for(lambda: set(latest_files(config, "both")) == expected, what="both workers' write-back")
    for vol in (a, b):
        vol.reload()
        assert {p.name for p in vol.path.iterdir()} == expected



def test_agent_killed_at_seeded_random_points_loses_no_write(config: Config, agents: Agents,
                                                             tmp_path: Path) -> None:
    """kill -9 the agent at random moments of write-back and explicit commits, restart it each time.

    The kill point is drawn from a seeded RNG (a random delay after the
    writes, with background write-back every 0.2 s and, half the time, an
    explicit commit in flight). After the last restart every file ever
    written is in the volume, byte for byte.
    """
    import os
    import random
    import time

    rng = random.Random(20261125)
    fast = ("--poll", "0.05", "--debounce", "0.2", "--max-delay", "0.5")
    agent = agents.start(config, *fast)
    vol = volume("chaos", socket_path=config.socket)
    expected: dict[str, bytes] = {}
    for trial in range(8):
        for j in range(rng.randint(1, 4)):
            data = rng.randbytes(rng.randint(0, 400_000))
            (vol.path / f"t{trial}-{j}.bin").write_bytes(data)
            expected[f"t{trial}-{j}.bin"] = data
        committer = None
        if rng.random() < 0.5:
            committer = threading.Thread(target=lambda: _ignore_errors(vol.commit))
            committer.start()
        time.sleep(rng.uniform(0.0, 0.6))          # the kill point, drawn from the seed
        agent.kill()
        if committer is not None:
            committer.join(30)
        agent = agents.start(config, *fast)
    vol.commit()
    assert latest_files(config, "chaos") == {name: len(data) for name, data in expected.items()}
    out = tmp_path / "check"

    async def fetch() -> None:
        async with open_engine(worker_config(config, tmp_path, "checker")) as engine:
            await hydrate(engine, "chaos", out)
    asyncio.run(fetch())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == expected
    assert not [p for p in os.listdir(vol.path) if p.startswith(".syncd-tmp-")]


def _ignore_errors(fn: Any) -> None:
    try:
        fn()
    except Exception:
        pass


async def test_a_commit_in_flight_when_the_agent_dies_returns_once_the_restart_committed(
        config: Config, agents: Agents, proxy: FaultProxy) -> None:
    """A task's commit() is on its way (the agent's HEAD advance held by the proxy) when the agent
    is killed: the SDK sends it again to the restarted agent (a commit run twice is run once) and
    returns when the file is in the bucket, instead of failing with "Remote end closed" (seen by
    bench/soak.py: 2 eager commits in 10 minutes)."""
    faulty = config.replace(s3_endpoint=proxy.endpoint)
    agent = await asyncio.to_thread(agents.start, faulty)
    vol = await asyncio.to_thread(volume, "vol", socket_path=faulty.socket, owner=faulty.owner)
    proxy.rules = [Rule("stall", method="PUT", path="/vol/HEAD", delay=30.0, times=1)]
    (vol.path / "a.txt").write_text("in flight\n")
    job = asyncio.ensure_future(asyncio.to_thread(vol.commit, "in flight"))
    while not proxy.injected["stall"]:                 # the commit (or write-back) is at its advance
        await asyncio.sleep(0.05)
    assert not job.done()
    await asyncio.to_thread(agent.kill)
    await asyncio.to_thread(agents.start, faulty)
    result = await job
    assert result["volume"] == "vol"
    assert (await asyncio.to_thread(latest_files, faulty, "vol")) == {"a.txt": 10}
