"""Worker processes for the multi-process tests (concurrent writers, kill -9 crashes).

Two modes, both started with ``python -m tests.procworker MODE JSON``:

``writer``  one of N concurrent writers: it owns a working directory, a cache and
            a state directory, and makes ``commits`` commits to one volume. Each
            commit adds a file only it writes, rewrites its own ``own.txt``,
            rewrites one of a few ``shared/`` files every writer rewrites, and
            every tenth commit deletes one of its older files. It prints one JSON
            line per commit: which commit, the snapshot it produced and its seq.

``zygote``  imports syncd once, then reads one JSON job per stdin line, forks a
            child that runs the job (``commit`` or ``hydrate``) and SIGKILLs the
            child ``kill_after`` seconds into the work (counted from when the
            child touches the ``ready`` file, once its engine is open, so kills
            land in the work and not in interpreter set-up), or once the file
            ``kill_when_exists`` appears, unless it finished first. It answers one JSON line per job:
            ``{"killed": bool, "status": int, "elapsed": float}``. Forking from an
            idle, single-threaded process makes a trial cost milliseconds instead
            of an interpreter start, so a hundred kill -9 trials stay cheap; and
            since the zygote kills before it reaps, a pid is never reused under us.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine

_PATHS = ("cache_dir", "state_dir", "root", "socket")


def config_to_json(config: Config) -> dict[str, Any]:
    doc = asdict(config)
    for name in _PATHS:
        doc[name] = str(doc[name])
    doc["gateways"] = list(config.gateways)
    return doc


def config_from_json(doc: dict[str, Any]) -> Config:
    values = dict(doc)
    for name in _PATHS:
        values[name] = Path(values[name])
    values["gateways"] = tuple(values["gateways"])
    return Config(**values)


def shared_name(writer: int, k: int, shared: int) -> str:
    return f"shared/s{(writer + k) % shared}.txt"


def writer_contents(writer: int, k: int) -> dict[str, bytes | None]:
    """What commit ``k`` of ``writer`` changes: path -> new bytes, or None for a deletion."""
    out: dict[str, bytes | None] = {
        f"w{writer}/c{k}.txt": f"writer {writer} file {k}\n".encode(),
        f"w{writer}/own.txt": f"writer {writer} version {k}\n".encode(),
    }
    if k % 10 == 9:
        out[f"w{writer}/c{k - 5}.txt"] = None
    return out


def shared_content(writer: int, k: int) -> bytes:
    return f"shared by writer {writer} at commit {k}\n".encode()


async def run_writer(job: dict[str, Any]) -> None:
    config = config_from_json(job["config"])
    work = Path(job["dir"])
    writer, shared = int(job["writer"]), int(job["shared"])
    async with open_engine(config) as engine:
        for k in range(int(job["commits"])):
            changes = writer_contents(writer, k)
            changes[shared_name(writer, k, shared)] = shared_content(writer, k)
            for rel, data in changes.items():
                path = work / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                if data is None:
                    path.unlink()
                else:
                    path.write_bytes(data)
            result = await commit(engine, job["volume"], work, message=f"w{writer} c{k}")
            print(json.dumps({"writer": writer, "k": k, "snapshot": result.snapshot, "seq": result.seq,
                              "attempts": result.attempts}), flush=True)


async def run_job(job: dict[str, Any]) -> None:
    config = config_from_json(job["config"])
    async with open_engine(config, use_cache=bool(job.get("cache", True))) as engine:
        if job.get("ready"):
            Path(job["ready"]).touch()      # the work starts now: kill_after counts from here
        if job["op"] == "commit":
            await commit(engine, job["volume"], Path(job["dir"]))
        elif job["op"] == "hydrate":
            await hydrate(engine, job["volume"], Path(job["dir"]))
        else:
            raise ValueError(f"unknown op {job['op']!r}")


def run_forked(job: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: run the job, never return into the zygote's loop
        code = 0
        try:
            asyncio.run(run_job(job))
        except BaseException as exc:
            print(f"job failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    ready = Path(job["ready"]) if job.get("ready") else None
    ready_at = None if ready else started
    trigger = Path(job["kill_when_exists"]) if job.get("kill_when_exists") else None
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if ready_at is None and ready is not None and ready.exists():
            ready_at = time.monotonic()
        late = (job.get("kill_after") is not None and ready_at is not None
                and time.monotonic() >= ready_at + float(job["kill_after"]))
        if late or (trigger and trigger.exists()):
            os.kill(pid, signal.SIGKILL)  # our own child, not yet reaped: the pid is still ours
            _, status = os.waitpid(pid, 0)
            killed = os.WIFSIGNALED(status)
            break
        time.sleep(0.0005)
    if ready is not None:
        ready.unlink(missing_ok=True)
    ended = time.monotonic()
    return {"killed": killed, "status": status, "elapsed": ended - started,
            "work": ended - (ready_at if ready_at is not None else ended)}


def warm_botocore() -> None:
    """Load botocore's S3 model once in the zygote, so each forked child opens its client in
    milliseconds instead of ~0.2 s of JSON parsing (kills should land in the work)."""
    from aiobotocore.session import get_session

    import syncd.store.s3

    session = get_session()

    async def make_client() -> None:
        async with session.create_client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                                         aws_access_key_id="x", aws_secret_access_key="x"):
            pass

    asyncio.run(make_client())
    syncd.store.s3.get_session = lambda: session  # type: ignore[attr-defined]


def zygote() -> None:
    warm_botocore()
    for line in sys.stdin:
        if not line.strip():
            continue
        print(json.dumps(run_forked(json.loads(line))), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        asyncio.run(run_writer(json.loads(sys.argv[2])))
    elif sys.argv[1] == "zygote":
        zygote()
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
