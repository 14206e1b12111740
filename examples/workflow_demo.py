"""The product page's workflow example, end to end, on one machine.

What runs:

* an embedded SeaweedFS S3 server: the bucket, the only thing workers share;
* two workers, ``worker-a`` and ``worker-b``: each a ``syncd agent`` process
  with its own volume root, chunk cache, state directory and socket, plus a
  small process pool that stands in for the workflow engine's executor;
* the workflow from the product page: three parallel ``create_new_files``
  tasks (spread over both workers), then ``read_existing`` on a worker, run
  twice. The first dispatch shows 3 files, the second 6.

Tasks are the product page's code; the volume is attached around each task
with ``syncd.sdk.workflow.attached`` (mount before, commit after), which is what
``dispatch(workflow, volume=my_volume)`` does on a real workflow engine.

Run it with ``./scripts/demo.sh`` (sets up a virtualenv first) or, inside an
environment with ``syncd[demo]`` installed, ``python examples/workflow_demo.py``.
Every process it starts is stopped when it ends, also on failure or Ctrl-C;
their pids are kept in ``<workdir>/pids`` so scripts/demo.sh can clean up
even after ``kill -9``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from syncd import Volume, volume
from syncd.errors import AgentUnavailable
from syncd.sdk.volume import AgentClient
from syncd.sdk.workflow import attached
from syncd.store.devserver import CREDENTIALS, SeaweedServer

LABELS = ("model-1a-small", "model-3c-small", "model-3c-large")

# As on the product page: a module-level volume the tasks use. In each worker
# process it binds to that worker's agent (SYNCD_SOCKET) on first use.
my_volume = Volume("/my-volume")


# ------------------------------------------------------------------ the tasks (product page)

def create_new_files(label: str) -> tuple[str, str]:
    # Create directory if it does not exist.
    label_dir = my_volume / label
    label_dir.mkdir(exist_ok=True)
    # Write to new log file on volume (milliseconds: the two dispatches may share a second).
    timestamp = datetime.now().strftime("%H-%M-%S-%f")[:-3]
    new_log_file = label_dir / f"log_{timestamp}.txt"
    new_log_file.write_text(f"This file was created at {timestamp}.\n")
    return label, os.environ["DEMO_WORKER"]


def read_existing(labels: list[str]) -> tuple[dict[str, str], str]:
    log_contents = {}
    # Read log files in the directory.
    for label in labels:
        for log_file in sorted((my_volume / label).glob("log_*.txt")):
            log_contents[str(log_file)] = log_file.read_text()
    return log_contents, os.environ["DEMO_WORKER"]


def run_attached(fn: Callable[..., Any], *args: Any) -> Any:
    """What a workflow engine does around each task when a volume is attached."""
    with attached(my_volume, fn.__name__):
        return fn(*args)


# ------------------------------------------------------------------ the machinery

class Pids:
    """The pid file scripts/demo.sh reads to kill leftovers if this process is killed."""

    def __init__(self, path: Path) -> None:
        self.path, self.pids = path, set[int]()

    def add(self, pid: int) -> None:
        self.pids.add(pid)
        self._write()

    def remove(self, pid: int) -> None:
        self.pids.discard(pid)
        self._write()

    def _write(self) -> None:
        self.path.write_text("".join(f"{p}\n" for p in sorted(self.pids)))


SHORT_DIRS: list[Path] = []


def _short_dir(preferred: Path) -> Path:
    """Unix socket paths (the agents', SeaweedFS's) are limited to 107 bytes: in a deep
    checkout, use a short temporary directory instead (removed at the end)."""
    if len(os.fsencode(preferred)) <= 80:
        return preferred
    SHORT_DIRS.append(Path(tempfile.mkdtemp(prefix=f"syncd-demo-{preferred.name}-")))
    return SHORT_DIRS[-1]


def _set_env(env: dict[str, str]) -> None:
    os.environ.update(env)


class Worker:
    def __init__(self, name: str, workdir: Path, base_env: dict[str, str], pids: Pids) -> None:
        self.name, self.pids = name, pids
        home = workdir / name
        self.env = {**base_env, "DEMO_WORKER": name, "SYNCD_ROOT": str(home / "volumes"),
                    "SYNCD_CACHE_DIR": str(home / "cache"), "SYNCD_STATE_DIR": str(home / "state"),
                    "SYNCD_SOCKET": str(_short_dir(home) / "agent.sock")}
        self.log = home / "agent.log"
        home.mkdir(parents=True)
        self.agent: subprocess.Popen[bytes] | None = None
        self.pool: ProcessPoolExecutor | None = None

    def start(self, timeout: float = 30.0) -> Worker:
        with open(self.log, "ab") as log:
            self.agent = subprocess.Popen([sys.executable, "-m", "syncd", "agent"], env={**os.environ, **self.env},
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pids.add(self.agent.pid)
        client = AgentClient(self.env["SYNCD_SOCKET"], timeout=5, connect_wait=0)
        deadline = time.monotonic() + timeout
        while True:
            if self.agent.poll() is not None:
                raise RuntimeError(f"{self.name}'s agent exited; see {self.log}")
            with contextlib.suppress(AgentUnavailable):
                client.call("GET", "/v1/status")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}'s agent did not start in {timeout:.0f}s; see {self.log}")
            time.sleep(0.05)
        self.pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_set_env, initargs=(self.env,))
        return self

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        assert self.pool is not None
        return self.pool.submit(run_attached, fn, *args)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        agent, self.agent = self.agent, None
        if agent is None:
            return
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)       # the agent flushes pending writes, then exits
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
        self.pids.remove(agent.pid)


def dispatch(workers: list[Worker], first: int) -> dict[str, str]:
    """One run of the workflow: three parallel create tasks, then one read task."""
    futures = [workers[(first + i) % len(workers)].submit(create_new_files, label)
               for i, label in enumerate(LABELS)]
    log_dirs = []
    for future in futures:
        label, where = future.result(120)
        print(f"  create_new_files({label!r}) ran on {where}")
        log_dirs.append(label)
    contents, where = workers[(first + 1) % len(workers)].submit(read_existing, log_dirs).result(120)
    print(f"  read_existing(...) ran on {where}\n")
    for k, v in contents.items():
        print(f"File: {k}\nContents: {v}", end="")
    print()
    return dict(contents)


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[list[Worker]]:
    pids = Pids(workdir / "pids")
    server = SeaweedServer(_short_dir(workdir / "s3"))
    workers: list[Worker] = []
    try:
        server.start()
        assert server.proc is not None
        pids.add(server.proc.pid)
        print(f"S3 (SeaweedFS) at {server.endpoint}")
        base_env = {**CREDENTIALS, "SYNCD_S3_ENDPOINT": server.endpoint, "SYNCD_BUCKET": "demo",
                    "SYNCD_OWNER": "demo-user"}
        for name in ("worker-a", "worker-b"):
            workers.append(Worker(name, workdir, base_env, pids).start())
            print(f"{name}: agent pid {workers[-1].agent.pid if workers[-1].agent else '?'}, "
                  f"volumes under {workers[-1].env['SYNCD_ROOT']}")
        yield workers
    finally:
        for worker in workers:
            worker.stop()
        if server.proc is not None:
            pid = server.proc.pid
            server.stop()
            pids.remove(pid)
        for short in SHORT_DIRS:
            shutil.rmtree(short, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.environ.get("SYNCD_DEMO_DIR", ".demo"))
    workdir = Path(parser.parse_args().workdir).resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # run the finally blocks
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with cluster(workdir) as workers:
        a = workers[0]
        # The driver creates the volume (or refers to it), like cc.volume("/my_volume").
        driver_volume = volume("/my-volume", socket_path=a.env["SYNCD_SOCKET"])
        print(f"volume {driver_volume.name!r} ready\n")
        counts = []
        for n in (1, 2):
            print(f"=== dispatch {n}")
            counts.append(len(dispatch(workers, first=n - 1)))
    ok = counts == [3, 6]
    print(f"dispatch 1 saw {counts[0]} files, dispatch 2 saw {counts[1]}: "
          + ("as on the product page." if ok else "UNEXPECTED (expected 3 then 6)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
