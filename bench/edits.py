"""Bytes uploaded per edit, and bytes stored, for syncd, restic and rclone on one SeaweedFS (issue 21).

    python bench/edits.py [--size-mib 256] [--data-mib 256] [--out bench-out]

One server (started with explicit identities, which restic and rclone need), one
run, the tools alternated edit by edit on the same local files:

* syncd: ``syncd commit VOL DIR`` (its local index kept between commits, as an agent
  keeps it), one volume per series;
* restic 0.14: ``restic backup DIR`` into a repository per series in the same
  bucket, its cache kept between backups (as a user's is);
* rclone: ``rclone copy DIR s3:bench/rclone/<series>`` (whole-file uploads; the
  yardstick of a tool without chunks).

Uploaded bytes are counted **from the server side**: the sizes of the objects that
are new (or changed) under the tool's prefix after the edit, listed from the bucket
(restic's locks come and go within a command; its index and snapshot files count).
Seconds are the wall time of the tool's process. The series:

1. a ``--size-mib`` file of random bytes, backed up; then, each backed up in turn:
   overwrite 1 MiB at 100 MiB; insert 1 byte at 100 MiB; append 1 MiB;
2. a parquet file (pyarrow, 8 row groups of ~8 MiB of mixed columns), then a new
   revision with one row group added (the file rewritten whole, as pyarrow does);
3. a directory of ``--copy-mib`` (files of 8 MiB) copied to another path of the same
   tree; for syncd also ``syncd put`` of it from a fresh worker and ``syncd cp``;
4. bytes stored for ``--data-mib`` of JSON lines and of random bytes, each alone;
5. (``--main PATH``: a checkout of the code before this change) hydrate throughput
   before and after: the same ``--size-mib`` random file committed by each version
   into a volume of its own, then cold hydrates (fresh cache and state) and warm
   ones (the cache kept, a new directory) of each, alternated, ``--reps`` times;
   medians of wall time and CPU seconds per GiB (``python -m syncd hydrate``).

The load average is recorded before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import BUCKET, Context, Run, environments, restic_binary, run_procs

from syncd.store.devserver import SeaweedServer

MiB = 1 << 20
TOOLS = ("syncd", "restic", "rclone")


def listing(ctx: Context, prefix: str) -> dict[str, int]:
    """key -> size of every object under ``prefix``, from the server (s5cmd ls)."""
    out = subprocess.run([_s5cmd(), "--endpoint-url", ctx.endpoint, "--json", "ls", f"s3://{BUCKET}/{prefix}*"],
                         env=ctx.tool_env, capture_output=True, text=True, check=False)
    found = {}
    for line in out.stdout.splitlines():
        doc = json.loads(line)
        if doc.get("type") != "DIR":
            found[doc["key"]] = int(doc.get("size", 0))
    return found


def _s5cmd() -> str:
    return shutil.which("s5cmd") or str(Path(sys.executable).with_name("s5cmd"))


class Tools:
    """Back up one local directory with each tool, into a place of its own per series."""

    def __init__(self, ctx: Context, series: str, source: Path) -> None:
        self.ctx, self.series, self.source = ctx, series, source
        self.state = ctx.fresh(f"state-{series}")
        self.prefix = {"syncd": f"volumes/bench/{series}/", "restic": f"restic-{series}/",
                       "rclone": f"rclone/{series}/"}
        self.restic_cache = ctx.fresh(f"restic-cache-{series}")
        if "restic" in ctx.tools:
            subprocess.run([restic_binary(), "-r", self.restic_repo, "init", "-q"], env=ctx.restic_env,
                           check=True, stdout=subprocess.DEVNULL)

    @property
    def restic_repo(self) -> str:
        return f"s3:{self.ctx.endpoint}/{BUCKET}/restic-{self.series}"

    def backup(self, tool: str) -> tuple[Run, int]:
        """One backup by ``tool``; (the run, bytes the server gained under the tool's prefix)."""
        before = listing(self.ctx, self.prefix[tool])
        if tool == "syncd":
            run = self.ctx.syncd("syncd", ["commit", self.series, str(self.source)], 0,
                                 cache=self.state / "cache", state=self.state / "state")
        elif tool == "restic":
            cmd = [restic_binary(), "-r", self.restic_repo, "--cache-dir", str(self.restic_cache), "-q",
                   "backup", str(self.source)]
            run = run_procs("restic", [cmd], self.ctx.restic_env, 0, self.ctx.server_pid)
        else:
            run = self.ctx.rclone("copy", str(self.source), f"s3:{BUCKET}/rclone/{self.series}")
        after = listing(self.ctx, self.prefix[tool])
        added = sum(size for key, size in after.items() if before.get(key) != size)
        return run, added

    def stored(self, tool: str) -> int:
        return sum(listing(self.ctx, self.prefix[tool]).values())


def step(results: list[dict[str, Any]], tools: Tools, name: str, change: Callable[[], None] | None) -> None:
    if change is not None:
        change()
    row: dict[str, Any] = {"series": tools.series, "edit": name}
    for tool in tools.ctx.tools:
        run, added = tools.backup(tool)
        row[tool] = {"uploaded": added, "seconds": round(run.wall, 2), "cpu": round(run.cpu, 2)}
    results.append(row)
    tools.ctx.log(json.dumps(row))


def edit_series(ctx: Context, size: int, results: list[dict[str, Any]]) -> None:
    src = ctx.fresh("src-edits")
    path = src / "big.bin"
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    tools = Tools(ctx, "edits", src)

    def overwrite() -> None:
        with open(path, "r+b") as f:
            f.seek(100 * MiB)
            f.write(os.urandom(MiB))

    def insert() -> None:
        data = path.read_bytes()
        path.write_bytes(data[:100 * MiB] + b"x" + data[100 * MiB:])

    def append() -> None:
        with open(path, "ab") as f:
            f.write(os.urandom(MiB))

    step(results, tools, f"initial {size // MiB} MiB", None)
    step(results, tools, "overwrite 1 MiB at 100 MiB", overwrite)
    step(results, tools, "insert 1 byte at 100 MiB", insert)
    step(results, tools, "append 1 MiB", append)


def parquet_series(ctx: Context, results: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = ctx.fresh("src-parquet")
    rnd = random.Random(5)

    def group(i: int) -> pa.Table:
        n = 200_000
        return pa.table({"id": pa.array(range(i * n, (i + 1) * n), pa.int64()),
                         "value": pa.array([rnd.random() for _ in range(n)], pa.float64()),
                         "name": pa.array([f"user{rnd.randrange(100_000)}" for _ in range(n)]),
                         "blob": pa.array([os.urandom(16) for _ in range(n)], pa.binary())})

    groups = [group(i) for i in range(8)]

    def write() -> None:
        with pq.ParquetWriter(src / "table.parquet", groups[0].schema) as writer:
            for g in groups:
                writer.write_table(g)

    write()
    tools = Tools(ctx, "parquet", src)
    step(results, tools, f"initial parquet {(src / 'table.parquet').stat().st_size / MiB:.0f} MiB", None)

    def add_group() -> None:
        groups.append(group(len(groups)))
        write()

    step(results, tools, "parquet: one row group added", add_group)


def copy_series(ctx: Context, size: int, results: list[dict[str, Any]]) -> None:
    """A directory copied within the tree: each tool backs the tree up again; syncd also by its
    other paths, ``syncd put`` of the copy (a fresh worker) and ``syncd cp`` (server side)."""
    src = ctx.fresh("src-copy")
    (src / "a").mkdir()
    files = max(1, size // (8 * MiB))
    for i in range(files):
        with open(src / "a" / f"part{i}.bin", "wb") as f:
            for _ in range(size // files // MiB):
                f.write(os.urandom(MiB))
    tools = Tools(ctx, "copy", src)
    step(results, tools, f"initial {size // MiB} MiB directory", None)
    step(results, tools, f"copy the {size // MiB} MiB directory to another path",
         lambda: shutil.copytree(src / "a", src / "b"))
    if "syncd" not in ctx.tools:
        return
    for how, args in (("put", ["put", "copy", str(src / "a"), "c"]), ("cp", ["cp", "copy", "a", "d"])):
        before = listing(ctx, tools.prefix["syncd"])
        run = ctx.syncd("syncd", args, 0, cache=ctx.fresh(f"copy-{how}-cache"), state=ctx.fresh(f"copy-{how}-state"))
        after = listing(ctx, tools.prefix["syncd"])
        data = sum(size for key, size in after.items() if before.get(key) != size
                   and ("/chunks/" in key or "/packs/" in key))
        row = {"series": "copy", "edit": f"syncd {how} of the {size // MiB} MiB directory (fresh worker)",
               "syncd": {"uploaded": sum(s for k, s in after.items() if before.get(k) != s), "chunk_data": data,
                         "seconds": round(run.wall, 2), "cpu": round(run.cpu, 2)}}
        results.append(row)
        ctx.log(json.dumps(row))


def json_lines(path: Path, size: int) -> None:
    rnd = random.Random(11)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            rows = b"".join(json.dumps({"id": rnd.randrange(10**9), "user": f"user{rnd.randrange(50_000)}",
                                        "ts": 1_700_000_000 + rnd.randrange(10**7), "score": round(rnd.random(), 4),
                                        "tags": rnd.sample(["red", "green", "blue", "cyan", "magenta"], 2),
                                        "text": " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(4, 16)))}
                                       ).encode() + b"\n" for _ in range(2000))
            f.write(rows)
            written += len(rows)


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega the of and to in is that for it as was with be by on not he").split()


def stored_series(ctx: Context, size: int, results: list[dict[str, Any]]) -> None:
    for kind in ("jsonl", "random"):
        src = ctx.fresh(f"src-{kind}")
        if kind == "jsonl":
            json_lines(src / "rows.jsonl", size)
        else:
            with open(src / "random.bin", "wb") as f:
                for _ in range(size // MiB):
                    f.write(os.urandom(MiB))
        raw = sum(p.stat().st_size for p in src.iterdir())
        tools = Tools(ctx, f"stored-{kind}", src)
        row: dict[str, Any] = {"series": f"stored-{kind}", "edit": f"store {raw / MiB:.0f} MiB of {kind}",
                               "raw": raw}
        for tool in ctx.tools:
            run, _ = tools.backup(tool)
            row[tool] = {"stored": tools.stored(tool), "seconds": round(run.wall, 2), "cpu": round(run.cpu, 2)}
        results.append(row)
        ctx.log(json.dumps(row))


def hydrate_series(ctx: Context, size: int, main_path: Path, reps: int, results: list[dict[str, Any]]) -> None:
    import statistics
    src = ctx.fresh("src-hydrate")
    with open(src / "big.bin", "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    code = {"after": {}, "before": {"PYTHONPATH": str(main_path)}}

    def run(label: str, args: list[str], cache: Path, state: Path) -> Run:
        env = {**ctx.syncd_env, **code[label], "SYNCD_CACHE_DIR": str(cache), "SYNCD_STATE_DIR": str(state)}
        return run_procs(f"syncd {label}", [ctx.syncd_cmd(*args)], env, size, ctx.server_pid)

    for label in code:
        run(label, ["commit", f"hydrate-{label}", str(src)], ctx.fresh(f"hc-{label}"), ctx.fresh(f"hs-{label}"))
    runs: dict[tuple[str, str], list[Run]] = {}
    order = list(code)
    for rep in range(reps):
        for label in order[rep % 2:] + order[:rep % 2]:
            cache = ctx.fresh(f"cache-{label}")
            cold = run(label, ["hydrate", f"hydrate-{label}", str(ctx.fresh(f"out-{label}"))], cache,
                       ctx.fresh(f"state-{label}"))
            warm = run(label, ["hydrate", f"hydrate-{label}", str(ctx.fresh(f"out2-{label}"))], cache,
                       ctx.fresh(f"state2-{label}"))
            runs.setdefault((label, "cold"), []).append(cold)
            runs.setdefault((label, "warm"), []).append(warm)
            shutil.rmtree(ctx.work / f"out-{label}", ignore_errors=True)
            shutil.rmtree(ctx.work / f"out2-{label}", ignore_errors=True)
    for mode in ("cold", "warm"):
        row: dict[str, Any] = {"series": "hydrate", "edit": f"hydrate {size // MiB} MiB, {mode}"}
        for label in code:
            got = runs[(label, mode)]
            wall = statistics.median(r.wall for r in got)
            cpu = statistics.median(r.cpu for r in got)
            row[label] = {"MBps": round(size / MiB / wall, 1), "seconds": round(wall, 2),
                          "cpu_s_per_GiB": round(cpu / (size / (1 << 30)), 2), "walls": [round(r.wall, 2) for r in got]}
        results.append(row)
        ctx.log(json.dumps(row))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--data-mib", type=int, default=256)
    ap.add_argument("--copy-mib", type=int, default=64)
    ap.add_argument("--series", default="edits,parquet,copy,stored")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--syncd-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--main", type=Path, help="a checkout of the code before this change (hydrate series)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="syncd-edits-"))
    server = SeaweedServer(work / "seaweed", identities=True)
    results: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg(),
                            "size_mib": args.size_mib, "data_mib": args.data_mib}
    try:
        server.start()
        base_env, syncd_env = environments(work, server.endpoint, args.syncd_env)
        ctx = Context(server.endpoint, server.proc.pid if server.proc else None, work, syncd_env, base_env,
                      [t for t in args.tools.split(",") if t], 1, {},
                      log=lambda m: print(m, file=sys.stderr, flush=True))
        subprocess.run([_s5cmd(), "--endpoint-url", ctx.endpoint, "mb", f"s3://{BUCKET}"], env=base_env,
                       check=True, stdout=subprocess.DEVNULL)
        series = args.series.split(",")
        if "edits" in series:
            edit_series(ctx, args.size_mib * MiB, results)
        if "parquet" in series:
            parquet_series(ctx, results)
        if "copy" in series:
            copy_series(ctx, args.copy_mib * MiB, results)
        if "stored" in series:
            stored_series(ctx, args.data_mib * MiB, results)
        if "hydrate" in series and args.main:
            hydrate_series(ctx, args.size_mib * MiB, args.main.resolve(), args.reps, results)
        meta["load_after"] = os.getloadavg()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "edits.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print_table(meta, results)
    return 0


def print_table(meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    print(f"# bench/edits.py, {meta['date']}, load {meta['load_before']} -> {meta.get('load_after')}")
    for row in results:
        if row["series"] == "hydrate":
            before, after = row["before"], row["after"]
            print(f"{row['edit']:<44} before {before['MBps']:7.1f} MB/s {before['cpu_s_per_GiB']:5.2f} CPU-s/GiB | "
                  f"after {after['MBps']:7.1f} MB/s {after['cpu_s_per_GiB']:5.2f} CPU-s/GiB  "
                  f"after/before {after['MBps'] / before['MBps']:.2f}x, CPU {after['cpu_s_per_GiB'] / max(0.01, before['cpu_s_per_GiB']):.2f}x")
            continue
        cells = []
        for tool in TOOLS:
            cell = row.get(tool)
            if cell:
                value = cell.get("uploaded", cell.get("stored", 0))
                cells.append(f"{tool} {value / MiB:8.2f} MiB {cell['seconds']:6.2f} s")
        ratio = ""
        if row.get("syncd") and row.get("restic"):
            key = "uploaded" if "uploaded" in row["syncd"] else "stored"
            ratio = f"  syncd/restic {row['syncd'][key] / max(1, row['restic'][key]):.2f}x"
        print(f"{row['edit']:<44} " + " | ".join(cells) + ratio)


if __name__ == "__main__":
    sys.exit(main())
