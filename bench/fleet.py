"""Fleet benchmark: many workers read one volume through a pool of gateways on one SeaweedFS.

A volume of one large file and thousands of small ones is committed; then
``--workers`` simulated workers (asyncio clients spread over ``--procs``
processes) each read it the way a hydrate does, through ``--gateways``
gateway processes (rendezvous placement, failover to the next gateway and the
store), and the benchmark reports:

* origin bytes and requests: what the store served, i.e. the workers' own
  store reads plus every gateway's ``syncd_gateway_origin_*`` counters, in
  total, per worker, and as a ratio of one copy of the volume: the bytes and
  GETs of one cold read with no gateway (HEAD, snapshot, trees, packs,
  chunks), measured before the runs (``origin_x_chunk_bytes`` is the ratio to
  the distinct chunk bytes alone);
* wall time from the common start signal to the last worker's end;
* per-request latency p50/p99 (HEAD, snapshot, each pack batch, each large
  chunk: the calls a hydrate makes);
* CPU seconds of each gateway and of all workers;
* failed workers and wrong chunks (every chunk is re-hashed here once more).

What a simulated worker reads is exactly what ``engine.hydrate`` reads,
through the same engine (``open_engine`` with ``SYNCD_GATEWAY``: HEAD and the
snapshot through the GatewayStore, packs in pack-size batches with
``get_packed``, each large chunk with ``place_nearby`` and else streamed from the
store), without writing files: 100 copies on this disk would measure the disk.
Each worker has its own engine (own fetcher, budget, gateway sessions and
breakers, no local cache), the workers of one process share one S3 client.

Modes, alternated in each repetition: ``pool`` (all gateways up),
``pool-kill`` (once the pool has served a third of the fleet's bytes, the
gateway that served most is SIGKILLed, and restarted ``--down`` seconds later
on the same port and cache; the killed incarnation's origin counters are
scraped just before the kill, so they may miss the last milliseconds of its
reads), and ``six-direct`` / ``six-gateway``: six worker processes of one
simulated worker each, reading straight from the store or through one cold
gateway (the issue's "six workers direct vs through one gateway"; the
hydrate-with-files version of it is bench/fanout.py). ``medians`` has the
medians per mode and ``six_gateway_wall_x_direct``.

    python bench/fleet.py --quick            # 24 workers, small volume: ~1 min
    python bench/fleet.py --out fleet.json   # 100 workers, 3 gateways

It starts its own SeaweedFS unless SYNCD_S3_ENDPOINT is set. The machine's
load (``uptime``) is recorded before and after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyspy  # noqa: E402  (bench/pyspy.py, beside this file)

from gateway.guard import ServerLimits  # noqa: E402
from syncd.config import Config, MiB, parse_size  # noqa: E402
from syncd.format.chunking import content_id  # noqa: E402

VOLUME = "fleet"
TICKS = os.sysconf("SC_CLK_TCK")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def make_volume(root: Path, large: int, small_files: int, small_size: int) -> None:
    (root / "model").mkdir(parents=True)
    with open(root / "model" / "weights.bin", "wb") as f:
        for left in range(large, 0, -4 * MiB):
            f.write(os.urandom(min(left, 4 * MiB)))
    for i in range(small_files):
        d = root / "data" / f"d{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.json").write_bytes(os.urandom(small_size // 2 + (i * 97) % small_size))


async def commit_volume(config: Config, src: Path) -> dict[str, int]:
    from syncd.engine.commit import commit
    from syncd.engine.wiring import open_engine
    async with open_engine(config) as eng:
        sid = (await commit(eng, VOLUME, src)).snapshot or ""
        snap = await eng.repo.snapshot(VOLUME, sid)
        snap_bytes = len((await eng.store.get(eng.layout.snapshot(VOLUME, sid))).data)
    refs = [r for e in snap.entries.values() for r in e.chunks]
    # one copy of the volume = what one cold hydrate reads from the store with no gateway: HEAD, the
    # snapshot, its trees (one ranged GET per level and pack), every pack and chunk
    async with open_engine(config, use_cache=False) as eng:
        got, wrong = await read_like_hydrate(eng, [])
        assert wrong == 0
        one_bytes, one_gets = eng.counter.bytes_in, eng.counter.calls["get"]
        tree_gets = sum(n for key, n in eng.counter.keys.items() if "/trees/" in key)
    return {"volume_bytes": sum({r.id: r.size for r in refs}.values()), "objects": one_gets,
            "one_copy_bytes": one_bytes, "tree_gets": tree_gets,
            "snapshot_bytes": snap_bytes, "files": len(snap.entries)}


# -- one worker process: --worker-proc N runs N simulated workers ---------------------------------

class _Shared:
    """One S3 client for the workers of a process; each engine's close leaves it open."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def close(self) -> None:
        return None


async def read_like_hydrate(eng: Any, latencies: list[float]) -> tuple[int, int]:
    """The reads of ``hydrate(eng, VOLUME, ...)`` without the writes; (bytes, wrong chunks)."""
    from syncd.limits import gather_all

    async def timed(coro: Any) -> Any:
        started = time.monotonic()
        result = await coro
        latencies.append(time.monotonic() - started)
        return result

    head = await timed(eng.repo.head(VOLUME))
    snap = await timed(eng.repo.snapshot(VOLUME, head.snapshot))
    groups: dict[str, list[Any]] = defaultdict(list)
    large = []
    for entry in snap.entries.values():
        packs = {c.pack for c in entry.chunks}
        if len(packs) == 1 and None not in packs:
            groups[entry.chunks[0].pack].append(entry)
        else:
            large += entry.chunks
    totals = [0, 0]

    async def pack_batch(pack: str, refs: list[Any]) -> None:
        held = await eng.budget.acquire(sum(r.size for r in refs))
        try:
            found = await timed(eng.fetcher.get_packed(VOLUME, pack, refs))
            totals[0] += sum(len(v) for v in found.values())
            totals[1] += sum(content_id(found[r.id]) != r.id for r in refs)
        finally:
            await eng.budget.release(held)

    async def discard(position: int, pieces: list[bytes]) -> None:
        return None

    async def chunk(ref: Any) -> None:
        held = await eng.budget.acquire(ref.size)
        try:
            started = time.monotonic()
            if not await eng.fetcher.place_nearby(VOLUME, ref, lambda position, view: None):  # verified inside
                await eng.fetcher.stream_from_store(VOLUME, ref, discard)  # verified inside
            latencies.append(time.monotonic() - started)
            totals[0] += ref.size
        finally:
            await eng.budget.release(held)

    tasks = []
    for pack, entries in groups.items():
        batch: list[Any] = []
        size = 0
        for entry in sorted(entries, key=lambda e: e.chunks[0].offset):
            if batch and size + entry.size > eng.config.pack_size:
                tasks.append(pack_batch(pack, batch))
                batch, size = [], 0
            batch += entry.chunks
            size += entry.size
        if batch:
            tasks.append(pack_batch(pack, batch))
    tasks += [chunk(ref) for ref in large]
    await gather_all(tasks)
    return totals[0], totals[1]


class _Failures(logging.Handler):
    """Collects what the fetch path logs about gateways that failed (fallbacks are otherwise silent)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: dict[str, int] = defaultdict(int)

    def emit(self, record: logging.LogRecord) -> None:
        if "failed" in record.msg or "bad bytes" in record.msg:
            text = record.getMessage()
            self.seen[text.split(": ", 2)[-1][:160]] += 1


async def worker_proc(count: int) -> None:
    from syncd.engine.wiring import open_engine
    from syncd.store.s3 import S3Store
    failures = _Failures()
    for name in ("syncd.data.fetch", "syncd.data.gatewaystore"):
        logging.getLogger(name).addHandler(failures)
        logging.getLogger(name).setLevel(logging.INFO)
    config = Config.from_env()
    backend = await S3Store.open(config.replace(max_connections=4 * config.max_connections), check_bucket=False)
    async with contextlib.AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(open_engine(config, backend=_Shared(backend), use_cache=False))
                   for _ in range(count)]
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def one(eng: Any) -> dict[str, Any]:
            latencies: list[float] = []
            started = time.monotonic()
            try:
                got, wrong = await read_like_hydrate(eng, latencies)
                error = None
            except Exception as exc:
                got, wrong, error = 0, 0, f"{type(exc).__name__}: {exc}"
            sources = [s for s in eng.fetcher.sources]
            return {"seconds": time.monotonic() - started, "bytes": got, "wrong": wrong, "error": error,
                    "gw_failures": sum(getattr(s, "failures", 0) for s in sources),
                    "gw_skipped": sum(getattr(s, "skipped", 0) for s in sources),
                    "store_gets": eng.counter.calls["get"], "store_bytes": eng.counter.bytes_in,
                    "latencies": latencies}

        results = await asyncio.gather(*(one(e) for e in engines))
    await backend.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"workers": results, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "gateway_failures": dict(failures.seen)}), flush=True)


# -- the parent: gateways, worker processes, the kill ------------------------------------------

class Gateway:
    def __init__(self, env: dict[str, str], port: int, cache: Path) -> None:
        self.env, self.port, self.cache = env, port, cache
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pool = ""  # --pool for peer fill (gateway/peers.py), "" for none
        self.past: list[dict[str, float]] = []  # metrics and CPU of killed incarnations

    def start(self) -> None:
        pool = ["--pool", self.pool, "--self-url", self.url] if self.pool else []
        # the simulated workers all connect from 127.0.0.1: the per-address bound (meant for one
        # real worker) is lifted to the total, as if each worker had its own address
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--no-auth", "--port", str(self.port),
                                      "--cache-dir", str(self.cache), "--max-per-client",
                                      str(ServerLimits.max_connections), *pool], cwd=ROOT, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line, deadline = b"", time.monotonic() + 60
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("gateway did not start")
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line += os.read(self.proc.stdout.fileno(), 4096)

    def cpu(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("#") or " " not in line:
                    continue
                name, value = line.rsplit(" ", 1)
                base = name.split("{", 1)[0]
                if base.endswith("_total"):
                    out[base.removeprefix("syncd_gateway_").removesuffix("_total")] += float(value)
                if base == "syncd_gateway_requests_total":
                    out["answered_" + name.split('code="', 1)[1].split('"', 1)[0]] += float(value)
                    if 'kind="connection"' in name:  # shed by the connection guard, not the request limit
                        out["answered_503_connections"] += float(value)
        out["cpu_s"] = self.cpu()
        return dict(out)

    def kill(self, last: dict[str, float]) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.past.append(last)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Killer(threading.Thread):
    """Once the pool has served ``threshold`` bytes, SIGKILLs the gateway that served most
    (the one whose loss hurts most) and restarts it ``down`` seconds later."""

    def __init__(self, gateways: list[Gateway], threshold: float, down: float) -> None:
        super().__init__(daemon=True)
        self.gateways, self.threshold, self.down = gateways, threshold, down
        self.stop = threading.Event()
        self.victim: int | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            last: list[dict[str, float]] = []
            with contextlib.suppress(OSError):
                last = [gw.metrics() for gw in self.gateways]
            if last and sum(m.get("served_bytes", 0) for m in last) >= self.threshold:
                self.victim = max(range(len(last)), key=lambda i: last[i].get("served_bytes", 0))
                gw = self.gateways[self.victim]
                gw.kill(gw.metrics() if gw.proc and gw.proc.poll() is None else last[self.victim])
                time.sleep(self.down)
                gw.start()
                return
            time.sleep(0.02)


def profile(gw: Gateway, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on a gateway until SIGINT (bench/pyspy.py)."""
    assert gw.proc is not None
    return pyspy.record(gw.proc.pid, out)


def run_fleet(args: argparse.Namespace, env: dict[str, str], work: Path, mode: str,
              volume: dict[str, int]) -> dict[str, Any]:
    from syncd.store.devserver import free_port
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load_before = uptime()
    gateways = [Gateway(env, free_port(), work / f"gw{i}") for i in range(args.gateways)]
    for gw in gateways:
        gw.pool = "" if args.no_peers else ",".join(g.url for g in gateways)
        gw.start()
    wenv = {**env, "SYNCD_GATEWAY": ",".join(gw.url for gw in gateways),
            "SYNCD_MAX_INFLIGHT_BYTES": str(args.inflight), "SYNCD_STATE_DIR": str(work / "state")}
    per = [args.workers // args.procs + (i < args.workers % args.procs) for i in range(args.procs)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker-proc", str(n)], cwd=ROOT, env=wenv,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for n in per if n]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError("a worker process did not start")
        cpu0 = [gw.cpu() for gw in gateways]
        spies = [profile(gw, args.profile / f"{mode}-gw{i}-rep{getattr(args, 'rep', 0) + 1}.txt")
                 for i, gw in enumerate(gateways)
                 if args.profile and mode == "pool"]
        killer = None
        if mode == "pool-kill":
            killer = Killer(gateways, args.workers * volume["volume_bytes"] / 3, args.down)
            killer.start()
        started = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        outputs = [json.loads(p.communicate()[0].decode().strip().splitlines()[-1]) for p in procs]
        wall = time.monotonic() - started
        if killer is not None:
            killer.stop.set()
            killer.join()
        final = [gw.metrics() for gw in gateways]
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for gw in gateways:
            gw.stop()
    workers = [w for out in outputs for w in out["workers"]]
    gw_totals = []
    for i, gw in enumerate(gateways):
        parts = [*gw.past, final[i]]
        total = {k: sum(p.get(k, 0.0) for p in parts) for k in final[i]}
        # CPU during the run; a restarted incarnation's includes its own start-up
        total["cpu_s"] = sum(p["cpu_s"] for p in parts) - cpu0[i]
        gw_totals.append(total)
    latencies = sorted(x for w in workers for x in w["latencies"])
    origin_bytes = sum(w["store_bytes"] for w in workers) + sum(g.get("origin_bytes", 0) for g in gw_totals)
    origin_reqs = sum(w["store_gets"] for w in workers) + sum(g.get("origin_requests", 0) for g in gw_totals)
    n = len(workers)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "mode": mode, "workers": n, "failed_workers": sum(1 for w in workers if w["error"]),
        "errors": sorted({w["error"] for w in workers if w["error"]})[:5],
        "wrong_chunks": sum(w["wrong"] for w in workers),
        "complete_workers": sum(1 for w in workers if w["bytes"] == volume["volume_bytes"]),
        "wall_s": round(wall, 3),
        "worker_s_p50": round(statistics.median(w["seconds"] for w in workers), 3),
        "worker_s_max": round(max(w["seconds"] for w in workers), 3),
        "origin_bytes": int(origin_bytes), "origin_x_volume": round(origin_bytes / volume["one_copy_bytes"], 4),
        "origin_x_chunk_bytes": round(origin_bytes / volume["volume_bytes"], 4),
        "origin_requests": int(origin_reqs), "origin_requests_x_objects": round(origin_reqs / volume["objects"], 4),
        "origin_bytes_per_worker": int(origin_bytes / n), "origin_requests_per_worker": round(origin_reqs / n, 3),
        "worker_store_bytes": sum(w["store_bytes"] for w in workers),
        "worker_store_gets": sum(w["store_gets"] for w in workers),
        "worker_gateway_failures": sum(w["gw_failures"] for w in workers),
        "worker_gateway_skips": sum(w["gw_skipped"] for w in workers),
        "gateway_failure_kinds": sorted({k for o in outputs for k in o["gateway_failures"]})[:8],
        "gateway_answers": [{k[9:]: int(v) for k, v in g.items() if k.startswith("answered_")} for g in gw_totals],
        "requests": len(latencies),
        "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2),
        "latency_ms_p99": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
        "gateway_cpu_s": [round(g["cpu_s"], 2) for g in gw_totals],
        "worker_cpu_s": round(sum(o["cpu_s"] for o in outputs), 2),
        "gateway_served_bytes": [int(g.get("served_bytes", 0)) for g in gw_totals],
        "gateway_sendfile_bytes": [int(g.get("sendfile_bytes", 0)) for g in gw_totals],
        "gateway_origin_bytes": [int(g.get("origin_bytes", 0)) for g in gw_totals],
        "gateway_peer_fills": [int(g.get("peer_fills", 0)) for g in gw_totals],
        "peers": not args.no_peers,
        "killed": [i for i, gw in enumerate(gateways) if gw.past],
        "uptime_before": load_before, "uptime_after": uptime(),
    }


def bench(args: argparse.Namespace, endpoint: str, scratch: Path) -> dict[str, Any]:
    env = {**os.environ, "SYNCD_S3_ENDPOINT": endpoint, "SYNCD_PREFIX": f"fleet-{uuid.uuid4().hex[:8]}",
           "SYNCD_BUCKET": os.environ.get("SYNCD_BUCKET", "syncd-bench"), "PYTHONPATH": str(ROOT)}
    env.pop("SYNCD_GATEWAY", None)
    config = Config.from_env(env, cache_dir=scratch / "src-cache", state_dir=scratch / "src-state")
    make_volume(scratch / "src", args.large, args.small_files, args.small_size)
    volume = asyncio.run(commit_volume(config, scratch / "src"))
    shutil.rmtree(scratch / "src", ignore_errors=True)
    print(f"volume: {volume}", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    six = {"six-direct": 0, "six-gateway": 1}  # six worker processes, straight from the store or via one gateway
    for rep in range(args.reps):
        for mode in runs:
            sub = args if mode not in six else argparse.Namespace(
                **{**vars(args), "workers": 6, "procs": 6, "gateways": six[mode]})
            sub.rep = rep  # profile files per repetition
            run = run_fleet(sub, env, scratch / "work", mode, volume)
            runs[mode].append(run)
            print(f"rep {rep + 1} {mode}: wall {run['wall_s']} s, origin {run['origin_x_volume']}x bytes, "
                  f"{run['origin_requests_x_objects']}x requests, failed {run['failed_workers']}, "
                  f"p50/p99 {run['latency_ms_p50']}/{run['latency_ms_p99']} ms, gw cpu {run['gateway_cpu_s']}, "
                  f"killed {run['killed']}",
                  file=sys.stderr)
    medians = {mode: {k: round(statistics.median(r[k] for r in rs), 4)
                      for k in ("wall_s", "origin_x_volume", "origin_requests_x_objects")}
               for mode, rs in runs.items() if rs}
    if "six-direct" in medians and "six-gateway" in medians:
        medians["six_gateway_wall_x_direct"] = {
            "ratio": round(medians["six-gateway"]["wall_s"] / medians["six-direct"]["wall_s"], 3)}
    return {"workers": args.workers, "procs": args.procs, "gateways": args.gateways, "reps": args.reps,
            "chunk_size": config.chunk_size, "pack_size": config.pack_size, **volume, "medians": medians,
            "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=100)
    p.add_argument("--procs", type=int, default=4, help="worker processes (the workers are split over them)")
    p.add_argument("--gateways", type=int, default=3)
    p.add_argument("--large", type=parse_size, default=parse_size("128M"), help="size of the one large file")
    p.add_argument("--small-files", type=int, default=3000)
    p.add_argument("--small-size", type=parse_size, default=parse_size("8K"), help="mean small-file size")
    p.add_argument("--inflight", type=parse_size, default=parse_size("16M"), help="SYNCD_MAX_INFLIGHT_BYTES per worker")
    p.add_argument("--down", type=float, default=1.0, help="seconds the killed gateway stays down")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--modes", type=lambda t: t.split(","), default=["pool", "pool-kill", "six-direct", "six-gateway"],
                   help="comma-separated, alternated in each repetition: pool, pool-kill (one gateway killed and "
                   "restarted), six-direct and six-gateway (6 worker processes, no gateway or one)")
    p.add_argument("--no-peers", action="store_true", help="gateways without --pool (no peer fill)")
    p.add_argument("--quick", action="store_true", help="24 workers in 2 processes, 32 MiB + 1000 small files")
    p.add_argument("--out", type=Path)
    p.add_argument("--profile", type=Path, help="py-spy the gateways of the pool runs; collapsed stacks and "
                   "a summary go into this directory")
    p.add_argument("--worker-proc", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_proc:
        asyncio.run(worker_proc(args.worker_proc))
        return
    if args.quick:
        args.workers, args.procs, args.large, args.small_files = 24, 2, 32 * MiB, 1000
    with tempfile.TemporaryDirectory(prefix="syncd-fleet-") as tmp:
        scratch = Path(tmp)
        from syncd.store.devserver import endpoint_or_embedded
        with endpoint_or_embedded(scratch / "seaweedfs") as endpoint:
            result = bench(args, endpoint, scratch)
    if args.profile:
        pyspy.summarize_dir(args.profile, "pool-gw*.txt")
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
