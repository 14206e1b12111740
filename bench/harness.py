"""Measuring one command the same way for every tool, and the shared bench context.

Every contender runs as a child process (``python -m syncd ...`` like ``s5cmd``
or ``aws``), so each pays its own start-up and is measured by the kernel the
same way: wall time around the process, and ``os.wait4``'s resource usage of
the child (user + system CPU of it and every descendant it waited for, and its
peak resident set). The S3 server's own CPU time is read from
``/proc/<pid>/stat`` before and after, so a tool that makes the server work
harder is visible too.

``Context`` holds what every scenario needs: the server, the bucket, the
environments for syncd and for the competitors, and the scratch directories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUCKET = "bench"
RAW = "raw"


@dataclass
class Run:
    """One timed execution of one tool."""
    tool: str
    wall: float
    cpu: float
    rss_kib: int
    server_cpu: float
    nbytes: int
    extra: dict[str, Any] = field(default_factory=dict)


def process_cpu_seconds(pid: int) -> float:
    """utime+stime of the running process ``pid`` (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def server_cpu_seconds(pid: int | None) -> float:
    """utime+stime of process ``pid`` and its waited-for children, in seconds (0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def run_procs(tool: str, cmds: Sequence[Sequence[str]], env: dict[str, str] | Sequence[dict[str, str]],
              nbytes: int, server_pid: int | None) -> Run:
    """Start every command at once (``env`` shared or one per command), wait for all;
    wall time, summed CPU, largest RSS."""
    envs = [env] * len(cmds) if isinstance(env, dict) else list(env)
    before = server_cpu_seconds(server_pid)
    files = [(tempfile.TemporaryFile(), tempfile.TemporaryFile()) for _ in cmds]
    rss_files = [tempfile.NamedTemporaryFile("r", suffix=".rss") for _ in cmds] if TIME else []
    wrapped = [[TIME, "-f", "%M", "-o", f.name, *c] for c, f in zip(cmds, rss_files)] if TIME else cmds
    start = time.perf_counter()
    procs = [subprocess.Popen(list(c), env=e, stdout=out, stderr=err)
             for c, e, (out, err) in zip(wrapped, envs, files)]
    cpu, rss = 0.0, 0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss)
    wall = time.perf_counter() - start
    if rss_files:  # the tool's own peak, not inflated by the pages it inherited from us before exec
        rss = max(_last_int(f.read()) for f in rss_files)
        for f in rss_files:
            f.close()
    run = Run(tool, wall, cpu, rss, server_cpu_seconds(server_pid) - before, nbytes)
    run.extra["stdout"] = []
    for proc, (out, err) in zip(procs, files):
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool}: {' '.join(map(str, proc.args))} exited {proc.returncode}:\n"  # type: ignore[arg-type]
                               f"{err.read().decode(errors='replace')[-2000:]}")
        run.extra["stdout"].append(out.read().decode(errors="replace"))
        out.close()
        err.close()
    return run


def _last_int(text: str) -> int:
    lines = [line for line in text.split() if line.strip().isdigit()]
    return int(lines[-1]) if lines else 0


# GNU time reports the peak RSS of a child forked from a 2 MiB process; without it we fall back to
# wait4's ru_maxrss, which also counts the runner's pages the child held between fork and exec.
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


@dataclass
class Context:
    endpoint: str
    server_pid: int | None
    work: Path
    syncd_env: dict[str, str]
    tool_env: dict[str, str]
    tools: list[str]
    reps: int
    sizes: dict[str, int]
    log: Any = print

    @property
    def s3(self) -> str:
        return f"s3://{BUCKET}"

    def fresh(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def syncd_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "syncd", "--json", "-q", *args]

    def syncd(self, tool: str, args: Sequence[str], nbytes: int, *, cache: Path, state: Path,
              count: int = 1) -> Run:
        env = {**self.syncd_env, "SYNCD_CACHE_DIR": str(cache), "SYNCD_STATE_DIR": str(state)}
        run = run_procs(tool, [self.syncd_cmd(*args)] * count, env, nbytes, self.server_pid)
        try:
            run.extra["result"] = json.loads(run.extra["stdout"][0])
        except (ValueError, IndexError):
            pass
        return run

    def s5cmd(self, *args: str, count: int = 1, nbytes: int = 0) -> Run:
        cmd = [s5cmd_binary(), "--endpoint-url", self.endpoint, *args]
        return run_procs("s5cmd", [cmd] * count, self.tool_env, nbytes, self.server_pid)

    def aws(self, *args: str, nbytes: int = 0) -> Run:
        cmd = [aws_binary(), "--endpoint-url", self.endpoint, "s3", *args, "--only-show-errors"]
        return run_procs("aws", [cmd], self.tool_env, nbytes, self.server_pid)

    def boto3(self, *args: str, nbytes: int = 0) -> Run:
        cmd = [sys.executable, str(Path(__file__).with_name("boto3_xfer.py")), self.endpoint, *args]
        return run_procs("boto3", [cmd], self.tool_env, nbytes, self.server_pid)

    def restic(self, *args: str, nbytes: int = 0, cache: Path | None = None) -> Run:
        """``restic -r s3:<endpoint>/bench/restic ...`` with a fresh cache dir (a cold restore)."""
        cmd = [restic_binary(), "-r", self.restic_repo, "--cache-dir", str(cache or self.fresh("restic-cache")),
               "-q", *args]
        return run_procs("restic", [cmd], self.restic_env, nbytes, self.server_pid)

    @property
    def restic_repo(self) -> str:
        return f"s3:{self.endpoint}/{BUCKET}/restic"

    @property
    def restic_env(self) -> dict[str, str]:
        return {**self.tool_env, "RESTIC_PASSWORD": "bench"}

    def rclone(self, *args: str, nbytes: int = 0) -> Run:
        """``rclone`` with its remote ``s3:`` configured through the environment, defaults otherwise."""
        env = {**self.tool_env, "RCLONE_CONFIG": str(self.work / "no-rclone.conf"),
               "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "SeaweedFS",
               "RCLONE_CONFIG_S3_ENDPOINT": self.endpoint,
               "RCLONE_CONFIG_S3_ACCESS_KEY_ID": self.tool_env["AWS_ACCESS_KEY_ID"],
               "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": self.tool_env["AWS_SECRET_ACCESS_KEY"]}
        return run_procs("rclone", [[rclone_binary(), *args]], env, nbytes, self.server_pid)

    def agent_mount(self, volume: str, nbytes: int) -> Run:
        """The agent path: a fresh ``syncd agent`` (own cache, state, root; started untimed), then
        one timed mount request over its socket, which hydrates inside the agent. CPU is the
        agent's during the request, RSS its peak (VmHWM)."""
        from syncd.sdk.volume import AgentClient

        base = self.fresh("agent")
        env = {**self.syncd_env, "SYNCD_CACHE_DIR": str(base / "cache"), "SYNCD_STATE_DIR": str(base / "state"),
               "SYNCD_ROOT": str(base / "root"), "SYNCD_SOCKET": str(base / "agent.sock")}
        with open(base / "agent.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "syncd", "agent"], env=env, stdout=log, stderr=log)
        try:
            client = AgentClient(base / "agent.sock", env["SYNCD_OWNER"], connect_wait=60)
            client.call("GET", "/v1/status")
            cpu, server = process_cpu_seconds(proc.pid), server_cpu_seconds(self.server_pid)
            start = time.perf_counter()
            client.call("POST", f"/v1/volumes/{volume}/mount")
            wall = time.perf_counter() - start
            run = Run("syncd agent", wall, process_cpu_seconds(proc.pid) - cpu, peak_rss_kib(proc.pid),
                      server_cpu_seconds(self.server_pid) - server, nbytes)
        finally:
            proc.terminate()
            proc.wait(30)
        return run

    def admin(self, *args: str) -> None:
        """Untimed housekeeping with s5cmd (uploads of reference data, deletes)."""
        subprocess.run([s5cmd_binary(), "--endpoint-url", self.endpoint, *args], env=self.tool_env,
                       check=True, stdout=subprocess.DEVNULL)

    def syncd_admin(self, *args: str, cache: Path, state: Path) -> dict[str, Any]:
        env = {**self.syncd_env, "SYNCD_CACHE_DIR": str(cache), "SYNCD_STATE_DIR": str(state)}
        out = subprocess.run(self.syncd_cmd(*args), env=env, check=True, capture_output=True)
        return json.loads(out.stdout) if out.stdout.strip() else {}


def s5cmd_binary() -> str:
    return shutil.which("s5cmd") or str(Path(sys.executable).with_name("s5cmd"))


def environments(work: Path, endpoint: str, syncd_extra: Sequence[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """(every tool's environment, syncd's): the dev server's credentials and no AWS config files;
    syncd on the bench bucket as owner ``bench``, plus ``KEY=VALUE`` overrides. Without
    PYTHONDONTWRITEBYTECODE, so syncd reads its .pyc files as an installed package does (with it, a
    checkout recompiled every module on every start: ~0.1 s; bench/run.py compiles them first)."""
    from syncd.store.devserver import CREDENTIALS
    installed = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    base = {**installed, **CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials")}
    syncd = {**base, "SYNCD_S3_ENDPOINT": endpoint, "SYNCD_BUCKET": BUCKET, "SYNCD_PREFIX": "volumes",
             "SYNCD_OWNER": "bench"}
    syncd.update(kv.split("=", 1) for kv in syncd_extra)
    return base, syncd


def restic_binary() -> str:
    return shutil.which("restic") or "restic"


def rclone_binary() -> str:
    return shutil.which("rclone") or str(Path(sys.executable).with_name("rclone"))


def aws_binary() -> str:
    return shutil.which("aws") or str(Path(sys.executable).with_name("aws"))


def write_random(path: Path, size: int, block: int = 8 << 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for off in range(0, size, block):
            f.write(os.urandom(min(block, size - off)))


def make_small_tree(root: Path, files: int, dirs: int, size: int) -> int:
    for i in range(files):
        d = root / f"d{i % dirs:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(size))
    return files * size


def drop_page_cache() -> None:
    """Make the next read cold (root only; a no-op elsewhere): bench/mount.py, bench/juicefs.py."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        pass
