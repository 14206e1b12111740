"""Fan-out benchmark: N workers hydrate one volume at once, through a gateway vs. straight from S3.

Each worker is its own process with its own cache and state (as on separate
machines). For each mode and repetition the benchmark starts the workers
together and measures:

* wall time, from the first spawn to the last exit (includes each process's
  Python start-up), and the hydrate makespan: the slowest worker's hydrate;
* origin bytes: what the object store sent, i.e. the workers' own store reads
  (HEAD, snapshot, any fallback) plus, through a gateway, the gateway's
  ``syncd_gateway_origin_bytes_total``; reported also as a ratio of the
  volume's size (1.0 = the store served the volume exactly once);
* whether every worker's tree is byte-identical to the source.

The gateway is restarted with an empty cache for every repetition, so every
run is a cold fan-out (``gateway-warm`` measures a second fan-out through a
gateway that already served one: every object a hit, sent by sendfile).
A further mode, ``gateway-killed``, SIGKILLs the gateway
once it has served the workers half of what they need: every worker must still
finish with an identical tree (the rest comes from S3 directly); its origin
bytes count the gateway's reads up to its last scrape before the kill. Medians over ``--reps`` runs are printed as JSON.

CPU: each run also reports the workers' CPU seconds (user + system, summed
over the six processes), through a gateway the gateway's, and the embedded
SeaweedFS's, so "is the gateway slow, or are the workers slower reading from
it" has an answer (on a 2-core machine the sum is what bounds the wall time).
``--profile DIR`` records py-spy (250 Hz, raw collapsed stacks) on the gateway
and on worker 0 of each mode in the first repetition, and writes a summary by
category next to each (``*.summary``).

    python bench/fanout.py --size 256M --workers 6 --reps 3 [--out result.json] [--profile DIR]

It starts its own SeaweedFS unless SYNCD_S3_ENDPOINT is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyspy  # noqa: E402  (bench/pyspy.py, beside this file)

from syncd.config import Config, MiB, parse_size  # noqa: E402
from syncd.format.chunking import content_id  # noqa: E402

STORE_MARKER = "/nonexistent"  # main() sets it: the embedded SeaweedFS's data directory


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def make_volume(root: Path, size: int, small_files: int) -> None:
    """Mostly large files (models), plus many small ones (configs, tokenizers)."""
    small = small_files * 16 * 1024
    large = max(0, size - small)
    (root / "models").mkdir(parents=True)
    for i in range(4):
        with open(root / "models" / f"shard-{i}.bin", "wb") as f:
            left = large // 4
            while left > 0:
                f.write(os.urandom(min(left, 4 * MiB)))
                left -= 4 * MiB
    for i in range(small_files):
        d = root / "configs" / f"d{i % 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.json").write_bytes(os.urandom(8 * 1024 + (i * 97) % (16 * 1024)))


def tree_digest(root: Path) -> str:
    parts = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            parts.append(f"{full.relative_to(root)}:{content_id(full.read_bytes())}")
    return content_id("\n".join(parts).encode())


async def commit_volume(config: Config, src: Path) -> int:
    from syncd.engine.commit import commit
    from syncd.engine.wiring import open_engine
    async with open_engine(config) as eng:
        result = await commit(eng, "fanout", src)
        snap = await eng.repo.snapshot("fanout", result.snapshot or "")
    return sum({r.id: r.size for e in snap.entries.values() for r in e.chunks}.values())


async def worker_main(target: str) -> None:
    """One worker: hydrate with SYNCD_* from the environment, print what it read from where."""
    from syncd.engine.hydrate import hydrate
    from syncd.engine.wiring import open_engine
    async with open_engine(Config.from_env()) as eng:
        started = time.monotonic()
        await hydrate(eng, "fanout", Path(target))
        print(json.dumps({"seconds": time.monotonic() - started, "store_bytes": eng.counter.bytes_in,
                          "by_source": dict(eng.fetcher.bytes_by_source)}))


@contextlib.contextmanager
def gateway(env: dict[str, str], cache: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--no-auth", "--port", "0",
                             "--cache-dir", str(cache)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line, deadline = b"", time.monotonic() + 60
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("gateway did not start")
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line += os.read(proc.stdout.fileno(), 4096)
        yield line.decode().split()[-1], proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def gateway_bytes(url: str) -> tuple[float, float]:
    """(origin bytes read, body bytes served) from the gateway's /metrics."""
    origin = served = 0.0
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("syncd_gateway_origin_bytes_total "):
                origin = float(line.split()[1])
            elif line.startswith("syncd_gateway_served_bytes_total{"):
                served += float(line.split()[1])
    return origin, served


class Killer(threading.Thread):
    """SIGKILLs the gateway once it has served ``threshold`` bytes; remembers its origin bytes."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], threshold: float) -> None:
        super().__init__(daemon=True)
        self.url, self.proc, self.threshold = url, proc, threshold
        self.origin = 0.0
        self.killed = False
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.proc.poll() is None:
            served = 0.0
            with contextlib.suppress(OSError):
                self.origin, served = gateway_bytes(self.url)
            if served >= self.threshold:
                self.proc.kill()
                self.killed = True
                return
            time.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_cpu(marker: str) -> float | None:
    """CPU so far of the embedded SeaweedFS (processes whose command line names ``marker``)."""
    total, found = 0.0, False
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    total, found = total + cpu_seconds(int(entry.name)), True
            except OSError:
                continue
    return total if found else None


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_workers(env: dict[str, str], work: Path, workers: int,
                profile: Path | None = None) -> tuple[float, float, list[dict[str, Any]]]:
    """Wall time, the workers' CPU seconds (all of them), and each worker's report."""
    procs, spies = [], []
    cpu0 = children_cpu()
    started = time.monotonic()
    for i in range(workers):
        wenv = {**env, "SYNCD_CACHE_DIR": str(work / f"w{i}" / "cache"),
                "SYNCD_STATE_DIR": str(work / f"w{i}" / "state")}
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(work / f"w{i}" / "dst")],
                                      cwd=ROOT, env=wenv, stdout=subprocess.PIPE))
    if profile is not None:
        spies.append(pyspy.record(procs[0].pid, profile))
    outputs = [p.communicate()[0] for p in procs]
    wall = time.monotonic() - started
    cpu = children_cpu() - cpu0
    for s in spies:
        pyspy.stop(s)
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a worker failed: {[p.returncode for p in procs]}")
    return wall, cpu, [json.loads(o.decode().strip().splitlines()[-1]) for o in outputs]


def one_run(mode: str, env: dict[str, str], work: Path, workers: int, want: str,
            volume: int, profile: Path | None = None) -> dict[str, Any]:
    """One cold fan-out; ``profile``: py-spy the gateway and worker 0 into that directory."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gw_origin, killed, gw_cpu = 0.0, None, None
    worker_spy = profile / f"{mode}-worker0.txt" if profile else None
    store0 = store_cpu(STORE_MARKER)
    if mode == "direct":
        wall, cpu, results = run_workers(env, work, workers, worker_spy)
    else:
        with gateway(env, work / "gateway-cache") as (url, proc):
            killer = Killer(url, proc, workers * volume / 2) if mode == "gateway-killed" else None
            if killer is not None:
                killer.start()
            warmed = 0.0
            if mode == "gateway-warm":  # one unmeasured fan-out first: the measured one is all hits
                run_workers({**env, "SYNCD_GATEWAY": url}, work / "warm-up", workers)
                shutil.rmtree(work / "warm-up", ignore_errors=True)
                warmed, store0 = gateway_bytes(url)[0], store_cpu(STORE_MARKER)
            gw_spy = pyspy.record(proc.pid, profile / f"{mode}-gateway.txt") if profile else None
            cpu0 = cpu_seconds(proc.pid)
            wall, cpu, results = run_workers({**env, "SYNCD_GATEWAY": url}, work, workers, worker_spy)
            if killer is not None:
                killer.stop.set()
                killer.join()
                gw_origin, killed = killer.origin, killer.killed
            else:
                gw_cpu = round(cpu_seconds(proc.pid) - cpu0, 2)
                gw_origin = gateway_bytes(url)[0] - warmed
            if gw_spy is not None:
                pyspy.stop(gw_spy)
    store1 = store_cpu(STORE_MARKER)
    identical = all(tree_digest(work / f"w{i}" / "dst") == want for i in range(workers))
    shutil.rmtree(work, ignore_errors=True)
    run = {"wall_s": round(wall, 3), "hydrate_makespan_s": round(max(r["seconds"] for r in results), 3),
           "origin_bytes": int(gw_origin + sum(r["store_bytes"] for r in results)),
           "via_gateway_bytes": sum(n for r in results for k, n in r["by_source"].items()
                                    if k.startswith("gateway:")),
           "worker_s": [round(r["seconds"], 3) for r in results], "workers_cpu_s": round(cpu, 2),
           "identical": identical}
    if gw_cpu is not None:
        run["gateway_cpu_s"] = gw_cpu
    if store0 is not None and store1 is not None:
        run["store_cpu_s"] = round(store1 - store0, 2)
    if killed is not None:
        run["gateway_killed_mid_run"] = killed
    return run


def summarize(runs: list[dict[str, Any]], volume: int) -> dict[str, Any]:
    origin = statistics.median(r["origin_bytes"] for r in runs)
    return {"wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 3),
            "hydrate_makespan_s_median": round(statistics.median(r["hydrate_makespan_s"] for r in runs), 3),
            "workers_cpu_s_median": round(statistics.median(r["workers_cpu_s"] for r in runs), 2),
            **{f"{k}_median": round(statistics.median(r[k] for r in runs), 2)
               for k in ("gateway_cpu_s", "store_cpu_s") if all(k in r for r in runs)},
            "origin_bytes_median": int(origin), "origin_ratio_median": round(origin / volume, 3),
            "all_identical": all(r["identical"] for r in runs), "runs": runs}


def bench(args: argparse.Namespace, endpoint: str, scratch: Path) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SYNCD_S3_ENDPOINT": endpoint, "SYNCD_PREFIX": prefix,
           "SYNCD_BUCKET": os.environ.get("SYNCD_BUCKET", "syncd-bench"), "PYTHONPATH": str(ROOT)}
    env.pop("SYNCD_GATEWAY", None)
    config = Config.from_env(env, cache_dir=scratch / "src-cache", state_dir=scratch / "src-state")
    make_volume(scratch / "src", args.size, args.small_files)
    volume = asyncio.run(commit_volume(config, scratch / "src"))
    want = tree_digest(scratch / "src")
    modes: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes.split(",")}
    for rep in range(args.reps):
        for mode in modes:
            profile = args.profile if rep == 0 else None
            modes[mode].append(one_run(mode, env, scratch / "work", args.workers, want, volume, profile))
            print(f"rep {rep + 1} {mode}: {modes[mode][-1]['wall_s']} s wall, "
                  f"{modes[mode][-1]['hydrate_makespan_s']} s slowest hydrate, "
                  f"{modes[mode][-1]['workers_cpu_s']} s workers' CPU, "
                  f"{modes[mode][-1].get('gateway_cpu_s', '-')} s gateway CPU, "
                  f"{modes[mode][-1].get('store_cpu_s', '-')} s SeaweedFS CPU, "
                  f"{modes[mode][-1]['origin_bytes'] / volume:.3f}x origin; {uptime()}", file=sys.stderr)
    result = {m: summarize(runs, volume) for m, runs in modes.items()}
    for mode in ("gateway", "gateway-warm"):  # the ratios the targets are about
        if "direct" in result and mode in result:
            for key in ("wall_s_median", "hydrate_makespan_s_median"):
                result[mode][key.replace("_median", "_x_direct")] = round(
                    result[mode][key] / result["direct"][key], 3)
    return {"workers": args.workers, "volume_bytes": volume, "reps": args.reps, "uptime": uptime(),
            "chunk_size": config.chunk_size, "small_files": args.small_files,
            "modes": result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=parse_size, default=parse_size("256M"))
    p.add_argument("--small-files", type=int, default=400)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--modes", default="direct,gateway,gateway-killed",
                   help="comma-separated subset of direct,gateway,gateway-warm,gateway-killed "
                   "(run alternately)")
    p.add_argument("--quick", action="store_true", help="64 MiB, 200 small files, one repetition")
    p.add_argument("--out", type=Path)
    p.add_argument("--profile", type=Path, help="py-spy the gateway and worker 0 of each mode in the first "
                   "repetition into this directory (raw collapsed stacks, and a .summary of each)")
    p.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        asyncio.run(worker_main(args.worker))
        return
    if args.quick:
        args.size, args.small_files, args.reps = parse_size("64M"), 200, 1
    with tempfile.TemporaryDirectory(prefix="syncd-fanout-") as tmp:
        scratch = Path(tmp)
        from syncd.store.devserver import endpoint_or_embedded
        global STORE_MARKER
        STORE_MARKER = str(scratch / "seaweedfs")
        with endpoint_or_embedded(scratch / "seaweedfs") as endpoint:
            result = bench(args, endpoint, scratch)
    if args.profile:
        pyspy.summarize_dir(args.profile)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
