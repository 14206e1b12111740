"""Choosing sizes by measurement: cold hydrate and commit of one large file per setting.

    python bench/sweep.py                         # chunk sizes 4/8/16/32 MiB, 512 MiB file, 5 reps
    python bench/sweep.py --size 128M --reps 3 --chunks 8M,16M \\
        --variant inflight64=SYNCD_MAX_INFLIGHT_BYTES=64M

Each chunk size gets its own volume (committed with that ``SYNCD_CHUNK_SIZE``,
timed), then every (chunk size x variant) contender does a cold hydrate (fresh
cache and state) in turn, rotating who goes first, with s5cmd on the same
object as the yardstick. Prints medians of wall time, CPU and peak RSS, and
writes ``<out>/sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BUCKET, RAW, Context, Run, write_random

from syncd.config import parse_size
from syncd.store.devserver import CREDENTIALS, SeaweedServer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="512M")
    p.add_argument("--chunks", default="4M,8M,16M,32M")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                   help="extra syncd environment to compare (each chunk size runs with each variant)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    return p.parse_args()


def main() -> int:
    args = parse_args()
    size = parse_size(args.size)
    variants: dict[str, dict[str, str]] = {"default": {}}
    for spec in args.variant:
        name, _, kvs = spec.partition("=")
        variants[name] = dict(kv.split("=", 1) for kv in kvs.split(","))
    work = Path(tempfile.mkdtemp(prefix="syncd-sweep-"))
    server = SeaweedServer(work / "seaweed")
    env = {**os.environ, **CREDENTIALS}
    try:
        server.start()
        syncd_env = {**env, "SYNCD_S3_ENDPOINT": server.endpoint, "SYNCD_BUCKET": BUCKET,
                     "SYNCD_PREFIX": "volumes", "SYNCD_OWNER": "bench"}
        ctx = Context(server.endpoint, server.proc.pid if server.proc else None, work, syncd_env, env,
                      ["s5cmd"], args.reps, {}, log=lambda m: print(m, file=sys.stderr, flush=True))
        ctx.admin("mb", ctx.s3)
        big = work / "data" / "big.bin"
        write_random(big, size)
        ctx.admin("cp", str(big), f"{ctx.s3}/{RAW}/big.bin")
        results = sweep(ctx, big, size, args.chunks.split(","), variants)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:28} {r['median_s']:7.3f}s {r['mib_per_s']:7.0f} MiB/s  cpu {r['cpu_s']:5.2f}s  "
              f"rss {r['rss_mib']:5.0f} MiB  {r.get('commit_s', '')}")
    return 0


def sweep(ctx: Context, big: Path, size: int, chunks: list[str],
          variants: dict[str, dict[str, str]]) -> dict[str, Any]:
    contenders: dict[str, tuple[str, dict[str, str]]] = {}
    commit_s: dict[str, float] = {}
    for chunk in chunks:
        volume = f"big-{chunk.lower()}"
        env = {**ctx.syncd_env, "SYNCD_CHUNK_SIZE": chunk}
        run = Context(**{**ctx.__dict__, "syncd_env": env}).syncd(
            "commit", ["commit", volume, str(big.parent)], size, cache=ctx.fresh("c"), state=ctx.fresh("s"))
        commit_s[volume] = run.wall
        for name, extra in variants.items():
            contenders[f"chunk {chunk} {name}"] = (volume, extra)
    runs: dict[str, list[Run]] = {name: [] for name in [*contenders, "s5cmd"]}
    order = list(runs)
    for i in range(ctx.reps):
        for name in order[i % len(order):] + order[:i % len(order)]:
            out = ctx.fresh("out")
            if name == "s5cmd":
                run = ctx.s5cmd("cp", f"{ctx.s3}/{RAW}/big.bin", str(out / "big.bin"), nbytes=size)
            else:
                volume, extra = contenders[name]
                sub = Context(**{**ctx.__dict__, "syncd_env": {**ctx.syncd_env, **extra}})
                run = sub.syncd(name, ["hydrate", volume, str(out / "r")], size,
                                cache=ctx.fresh("c"), state=ctx.fresh("s"))
            runs[name].append(run)
            ctx.log(f"rep {i + 1} {name:28} {run.wall:.3f}s cpu {run.cpu:.2f}s")
    results: dict[str, Any] = {}
    for name, rs in runs.items():
        wall = statistics.median(r.wall for r in rs)
        results[name] = {"median_s": round(wall, 3), "mib_per_s": round(size / (1 << 20) / wall, 1),
                         "cpu_s": round(statistics.median(r.cpu for r in rs), 3),
                         "rss_mib": round(max(r.rss_kib for r in rs) / 1024, 1),
                         "walls": [round(r.wall, 3) for r in rs]}
        if name != "s5cmd":
            results[name]["commit_s"] = round(commit_s[contenders[name][0]], 3)
    return results


if __name__ == "__main__":
    sys.exit(main())
