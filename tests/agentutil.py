"""Agents as real subprocesses for tests: ``python -m syncd agent`` with a worker's env."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from syncd.config import Config
from syncd.errors import AgentUnavailable
from syncd.sdk.volume import AgentClient
from syncd.store.devserver import CREDENTIALS

T = TypeVar("T")


def env_for(config: Config) -> dict[str, str]:
    """The SYNCD_* environment that makes Config.from_env() return ``config``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env.update({k: os.environ.get(k, v) for k, v in CREDENTIALS.items()})
    env.update({
        "SYNCD_S3_ENDPOINT": config.s3_endpoint or "", "SYNCD_BUCKET": config.bucket,
        "SYNCD_PREFIX": config.prefix, "SYNCD_OWNER": config.owner,
        "SYNCD_CACHE_DIR": str(config.cache_dir), "SYNCD_STATE_DIR": str(config.state_dir),
        "SYNCD_ROOT": str(config.root), "SYNCD_SOCKET": str(config.socket),
        "SYNCD_CHUNK_SIZE": str(config.chunk_size), "SYNCD_PACK_THRESHOLD": str(config.pack_threshold),
        "SYNCD_PACK_SIZE": str(config.pack_size), "SYNCD_MAX_INFLIGHT_BYTES": str(config.max_inflight_bytes),
        "SYNCD_RETRIES": str(config.retries), "SYNCD_RETRY_BASE_DELAY": str(config.retry_base_delay),
        "SYNCD_STORE_DEADLINE": str(config.store_deadline),
    })
    if config.gateways:
        env["SYNCD_GATEWAY"] = ",".join(config.gateways)
    if config.gateway_token:
        env["SYNCD_GATEWAY_TOKEN"] = config.gateway_token
    if config.allow_uids:
        env["SYNCD_ALLOW_UIDS"] = ",".join(map(str, config.allow_uids))
    if config.allow_group is not None:
        env["SYNCD_ALLOW_GROUP"] = str(config.allow_group)
    return env


def wait_for(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class AgentProcess:
    def __init__(self, config: Config, log_dir: Path, *args: str) -> None:
        self.config = config
        self.args = ["--poll", "0.1", "--debounce", "0.3", *args]
        self.log_path = log_dir / f"agent-{config.owner}-{os.urandom(3).hex()}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = AgentClient(config.socket, config.owner, timeout=120, connect_wait=0)

    def start(self, timeout: float = 60.0) -> AgentProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "syncd", "agent", *self.args],
                                         env=env_for(self.config), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_for(self._ready, timeout, f"the agent on {self.config.socket}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
        try:
            self.client.call("GET", "/v1/status")
        except AgentUnavailable:
            return False
        return True

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call("GET", "/v1/status")
        return result

    def mount_status(self, name: str) -> dict[str, Any]:
        return next(m for m in self.status()["mounts"] if m["name"] == name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def latest_files(config: Config, volume: str) -> dict[str, int]:
    """path -> size of every file in the volume's latest snapshot, read straight from the bucket."""
    import asyncio

    from syncd.engine.wiring import open_engine

    async def read() -> dict[str, int]:
        async with open_engine(config, use_cache=False) as engine:
            _, snap = await engine.repo.latest(volume)
        return {p: e.size for p, e in (snap.entries if snap else {}).items() if e.kind == "file"}

    return asyncio.run(read())


class Agents:
    """Starts agents for one test and kills whatever is still running at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[AgentProcess] = []

    def start(self, config: Config, *args: str) -> AgentProcess:
        agent = AgentProcess(config, self.log_dir, *args)
        self.started.append(agent)
        return agent.start()

    def kill_all(self) -> None:
        for agent in self.started:
            agent.kill()
            detach_under(agent.config.root)    # read-only views, lazy mounts and the seals below them


def detach_under(root: Path) -> None:
    """Detach every mount below ``root``, newest first: FUSE mounts left by killed processes, the
    agent's read-only views and the seals it keeps below its lazy mount points (mount/spawn.py)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    for line in reversed(lines):
        point = line.split()[4]
        if point == str(root) or point.startswith(str(root) + "/"):
            command = ["fusermount3", "-u", "-z"] if " - fuse" in line else ["umount", "-l"]
            subprocess.run([*command, point], capture_output=True)

