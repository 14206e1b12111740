"""The product page's workflow across two agents, task failure, and a function service."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from syncd import Volume
from syncd.config import Config
from syncd.sdk.volume import AgentClient
from syncd.sdk.workflow import attached, with_volume

from .agentutil import Agents, latest_files
from .conftest import worker_config

LABELS = ("model-1a-small", "model-3c-small", "model-3c-large")


def create_new_files(my_volume: Volume, label: str) -> str:
    """The product page's task, unchanged but for a unique timestamp."""
    label_dir = my_volume / label
    label_dir.mkdir(exist_ok=True)
    timestamp = datetime.now().strftime("%H-%M-%S-%f")
    new_log_file = label_dir / f"log_{timestamp}.txt"
    new_log_file.write_text(f"This file was created at {timestamp}.\n")
    return label


def read_existing(my_volume: Volume, labels: list[str]) -> dict[str, str]:
    log_contents = {}
    for label in labels:
        for log_file in (my_volume / label).glob("log_*.txt"):
            log_contents[f"{label}/{log_file.name}"] = log_file.read_text()
    return log_contents


class Worker:
    """A worker: its own agent, and a pool whose tasks attach the volume through it."""

    def __init__(self, sock: Path) -> None:
        self.client = AgentClient(sock, timeout=60)
        self.pool = ThreadPoolExecutor(4)

    def run(self, fn, *args):  # type: ignore[no-untyped-def]
        def task():  # type: ignore[no-untyped-def]
            with attached(Volume("my-volume", client=self.client)) as vol:
                return fn(vol, *args)
        return self.pool.submit(task)


def test_workflow_example_across_two_workers(config: Config, agents: Agents, tmp_path: Path) -> None:
    config_b = worker_config(config, tmp_path, "worker-b")
    agents.start(config)
    agents.start(config_b)
    workers = [Worker(config.socket), Worker(config_b.socket)]

    def dispatch(first: int) -> dict[str, str]:
        futures = [workers[(first + i) % 2].run(create_new_files, label) for i, label in enumerate(LABELS)]
        labels = [f.result(60) for f in futures]          # three parallel tasks on two workers
        return workers[(first + 1) % 2].run(read_existing, labels).result(60)

    first = dispatch(0)
    assert len(first) == 3 and {k.split("/")[0] for k in first} == set(LABELS)
    second = dispatch(1)
    assert len(second) == 6 and set(first) < set(second)
    assert all(v.startswith("This file was created at ") for v in second.values())
    assert len(latest_files(config, "my-volume")) == 6
    for w in workers:
        w.pool.shutdown()


def test_a_failing_task_still_commits_what_it_wrote(config: Config, agents: Agents) -> None:
    agents.start(config)
    vol = Volume("results", client=AgentClient(config.socket))

    @with_volume(vol)
    def task() -> None:
        (vol / "partial.txt").write_text("half done\n")
        raise RuntimeError("task failed")

    with pytest.raises(RuntimeError, match="task failed"):
        task()
    assert set(latest_files(config, "results")) == {"partial.txt"}


class LogService:
    """Stands in for a function service: an initializer and endpoints sharing one volume."""

    def __init__(self, vol: Volume) -> None:       # the service initializer
        self.vol = vol
        with attached(vol, "service init") as mounted:
            self.log_file = mounted / "log_file.txt"
            self.log_file.write_text("This file was created by a service initializer.\n")

    def read_log(self) -> str:                        # an endpoint
        return self.log_file.read_text()

    @property
    def append(self):  # type: ignore[no-untyped-def]
        @with_volume(self.vol, "endpoint")
        def endpoint(line: str) -> int:
            with open(self.vol / "log_file.txt", "a") as log:
                log.write(line + "\n")
            return len(self.read_log().splitlines())
        return endpoint


def test_function_service_initializer_and_endpoints_share_one_mount(config: Config, agents: Agents,
                                                                     tmp_path: Path) -> None:
    agent = agents.start(config)
    service = LogService(Volume("service-vol", client=AgentClient(config.socket)))
    assert service.read_log().startswith("This file was created by a service initializer.")
    assert service.append("endpoint call 1") == 2
    assert service.append("endpoint call 2") == 3
    assert agent.mount_status("service-vol")["hydrates"] == 1     # one mount served them all
    # a replica of the service on another worker starts from what the first one committed
    config_b = worker_config(config, tmp_path, "replica")
    agents.start(config_b)
    replica = Volume("service-vol", client=AgentClient(config_b.socket))
    assert (replica / "log_file.txt").read_text().splitlines()[1:] == ["endpoint call 1", "endpoint call 2"]


def test_covalent_hooks_attach_the_volume(config: Config, agents: Agents,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs an electron through Covalent's own hook pipeline (rehydrate the hooks as its
    dispatcher does, execute with its executor wrapper), without a Covalent server."""
    pytest.importorskip("covalent")
    from covalent._workflow.depscall import DepsCall
    from covalent._workflow.transport import TransportableObject
    from covalent.executor.utils.wrappers import wrapper_fn

    from syncd.sdk.covalent import volume_electron

    agents.start(config)
    monkeypatch.setenv("SYNCD_SOCKET", str(config.socket))

    @volume_electron("/my_volume")
    def create_new_files(label: str, volume: Volume | None = None) -> str:
        assert volume is not None
        (volume / label).mkdir(exist_ok=True)
        (volume / label / "log.txt").write_text(f"written by {label}\n")
        return str(volume / label)

    hooks = create_new_files.electron_object.metadata["hooks"]
    call_before = [DepsCall().from_dict(h).apply() for h in hooks["call_before"]]
    call_after = [DepsCall().from_dict(h).apply() for h in hooks["call_after"]]
    out = wrapper_fn(TransportableObject(create_new_files.electron_object.function), call_before, call_after,
                     TransportableObject("model-1a-small"))
    assert out.get_deserialized() == str(config.root / "my_volume" / "model-1a-small")
    assert set(latest_files(config, "my_volume")) == {"model-1a-small/log.txt"}   # committed by call_after
