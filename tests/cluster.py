"""A distributed SeaweedFS on loopback: one master, three volume servers, a filer with its S3 gateway.

Every guarantee syncd makes was tested against one ``weed server`` process;
users run on a store whose nodes restart. This starts the pieces as separate
processes, each ``weed`` itself (no shell between), so a test can SIGKILL
exactly one volume server or the filer and start it again on the same ports
and directory::

    weed master  -defaultReplication=001     every volume written twice, on two volume servers
    weed volume  -mserver=<master>           x3, each its own directory
    weed filer   -s3                         the S3 endpoint syncd talks to

All ports are free loopback ports picked up front (gRPC ones included), the
S3 side ports (iceberg, lance) are off, and the filer and S3 gateway use
sockets in the cluster's directory. Readiness is a real signed PUT through the
filer that lands on the volume servers (so all three must have joined: the
master grows volumes with replication 001 only once two servers are up), and
``wait_writable`` after a restart checks the same. SeaweedFS is slow to stop
on SIGTERM: ``stop`` waits briefly, then SIGKILLs the node's own pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.store.devserver import CREDENTIALS, free_port, weed_binary

VOLUME_SERVERS = 3
READY_TIMEOUT = 90.0


@dataclass
class Node:
    """One weed process: how to start it again on the same ports and directory."""

    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    down: bool = False  # stopped or killed on purpose

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([weed_binary(), *self.args], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, **CREDENTIALS})
        self.down = False

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed node: no goodbye to the master."""
        self.down = True
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, grace: float = 2.0) -> None:
        self.down = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    root: Path
    master: Node = field(init=False)
    volumes: list[Node] = field(init=False)
    filer: Node = field(init=False)
    s3: Node = field(init=False)
    s3_port: int = field(init=False)

    def __post_init__(self) -> None:
        ip = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        master_port, master_grpc = free_port(), free_port()
        mdir = self._dir("master")
        self.master = Node("master", ["master", *ip, f"-port={master_port}", f"-port.grpc={master_grpc}",
                                      f"-mdir={mdir}", "-defaultReplication=001", "-volumeSizeLimitMB=64",
                                      "-telemetry=false"], mdir / "weed.log")
        mserver = f"127.0.0.1:{master_port}.{master_grpc}"  # host:port.grpcPort
        self.volumes = []
        for i in range(VOLUME_SERVERS):
            vdir = self._dir(f"volume{i}")
            self.volumes.append(Node(f"volume{i}", [
                "volume", *ip, f"-port={free_port()}", f"-port.grpc={free_port()}", f"-mserver={mserver}",
                f"-dir={vdir}", "-max=0", "-minFreeSpace=1", "-preStopSeconds=0"], vdir / "weed.log"))
        fdir = self._dir("filer")
        filer_port, filer_grpc = free_port(), free_port()
        self.filer = Node("filer", [
            "filer", *ip, f"-port={filer_port}", f"-port.grpc={filer_grpc}", f"-master={mserver}",
            f"-localSocket={fdir}/filer.sock", f"-defaultStoreDir={fdir}"], fdir / "weed.log")
        self.s3_port = free_port()  # its S3 gateway: `weed filer -s3` never opened its port here (4.48)
        self.s3 = Node("s3", [
            "s3", *ip, f"-port={self.s3_port}", f"-port.grpc={free_port()}",
            f"-filer=127.0.0.1:{filer_port}.{filer_grpc}", "-port.iceberg=0", "-port.lance=0",
            f"-localSocket={fdir}/s3.sock"], fdir / "s3.log")

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def nodes(self) -> list[Node]:
        return [self.master, *self.volumes, self.filer, self.s3]

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        self.wait_writable()
        return self

    def heal(self) -> None:
        """Start every node that is not running (a test killed it), then wait until writes land."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_writable()

    def wait_writable(self, timeout: float = READY_TIMEOUT) -> None:
        """Until a signed PUT through the filer succeeds and reads back (all of it replicated)."""
        client = _client(self.endpoint)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None and not node.down:
                    raise RuntimeError(f"{node.name} exited with {node.proc.returncode}; see {node.log}")
            try:
                client.create_bucket(Bucket="syncd-ready-probe")
            except Exception:
                pass
            try:
                body = os.urandom(64 * 1024)  # above the filer's inline limit: it goes to volume servers
                client.put_object(Bucket="syncd-ready-probe", Key="ready", Body=body)
                if client.get_object(Bucket="syncd-ready-probe", Key="ready")["Body"].read() == body:
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.3)
        raise RuntimeError(f"the SeaweedFS cluster did not become writable in {timeout:.0f}s: {last}; "
                           f"see the logs under {self.root}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def _client(endpoint: str) -> Any:
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10))
