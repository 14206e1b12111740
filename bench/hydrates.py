"""Cold hydrates, alternated: syncd's CLI, an agent's eager mount and ``restic restore``, N rounds.

Run from the repository root::

    python bench/hydrates.py                           # 100,000 files of 0-2 KB and /usr/share, 5 rounds
    python bench/hydrates.py --sizes 20000 --repeat 3 --no-real-tree
    python bench/hydrates.py --work /mnt/scratch       # scratch (copies, caches, the server) elsewhere
    python bench/hydrates.py --tiny --no-restic        # what tests/test_bench_scale.py runs

bench/scale.py measures every step once, syncd's steps first and restic's after.
A cold hydrate is mostly file creation, and on a machine shared by others one
figure can be off by a factor of two or more: the load moves, and on a file
system like this VM's (ext4 without a journal) each new inode scans the
inodes its group freed in the last 30 seconds (perf: 70% of a create in
``recently_deleted``/``find_inode_bit`` after a large deletion), so the step
that follows the deletion of 100,000 files pays for it. Here the data is
committed and backed up once (not measured), then each round runs the three
in a rotating order, each into a fresh directory with a fresh cache and state
(restic: a fresh cache), and the round's copies are deleted only when the
round is over; with ``--repeat`` a multiple of three each tool follows that
deletion equally often; and after the deletion the disk is synced and left
alone for ``--settle`` seconds (default 60), which this VM's ext4 needed to
create files at its fresh speed again (20,000 creates: 7.3 s fresh, 10.6 s
right after 100,000 deletions, 12.2 s 10 s later, 9.7 s 40 s later, 7.9 s
70 s later). A cold hydrate of 100,000 files profiled right after the
previous round's deletion took 40 s instead of 9 s, the CLI's and the agent's
alike, with two thirds of the samples on the ``O_CREAT`` line. Reported per tool: the median run by wall seconds
(every run's seconds are in the JSON), the median CPU seconds (user + system
of the command, from ``wait4``; of the agent process during its mount call,
from ``/proc``), peak RSS, and restic's over syncd's as ratios (above 1.0x
syncd is the faster). Data sets: each ``--sizes`` tree as bench/scale.py makes
it, and a copy of ``--real-tree`` (default /usr/share). Output: a Markdown
table and ``<out>/hydrates.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scale import BUCKET, Bench, Child, count_entries, make_tree, report, scratch, shape  # noqa: E402
from scalereport import ok  # noqa: E402

TOOLS = ("syncd", "agent", "restic")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000", help="comma-separated file counts (default 100000)")
    p.add_argument("--tiny", action="store_true", help="300 files, no real tree (the test's run)")
    p.add_argument("--dirs", type=int, default=100, help="directories per level, two levels (default 100)")
    p.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
    p.add_argument("--real-tree", type=Path, default=Path("/usr/share"), help="a directory to copy (default /usr/share)")
    p.add_argument("--no-real-tree", dest="real", action="store_false")
    p.add_argument("--no-restic", dest="restic", action="store_false")
    p.add_argument("--no-agent", dest="agent", action="store_false")
    p.add_argument("--settle", type=float,
                   help="seconds to leave the disk alone after a round's deletion (default 60; 0 with --tiny)")
    p.add_argument("--step-timeout", type=float, default=900.0, help="kill a hydrate after this many seconds")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir, removed at the end)")
    args = p.parse_args(argv)
    args.counts = [300] if args.tiny else [int(s) for s in args.sizes.split(",") if s]
    args.real = args.real and not args.tiny
    if args.settle is None:
        args.settle = 0.0 if args.tiny else 60.0
    # bench/scale.py's Bench reads these
    args.step_timeout, args.per_1000, args.find = args.step_timeout, 0.0, False
    return args


class Rounds:
    """One data set, committed and backed up, hydrated ``--repeat`` times by each tool."""

    def __init__(self, bench: Bench, work: Path, name: str, src: Path) -> None:
        self.bench, self.work, self.name, self.src = bench, work, name, src
        self.vol = f"hy-{name}"
        self.args = bench.args

    def seed(self) -> dict[str, Any]:
        out = {"syncd": self.bench.cli(self.bench.syncd_env(f"hw-{self.name}"), "commit", self.vol, str(self.src))}
        if self.args.restic:
            writer = self.bench.restic_env(f"hw-{self.name}", f"hy-{self.name}")
            self.bench.step(["restic", "init"], writer)
            out["restic"] = self.bench.step(["restic", "backup", "-q", "."], writer, self.src)
        for step in out.values():
            step.pop("stdout", None)
        return out

    def run(self) -> dict[str, list[dict[str, Any]]]:
        tools = [t for t in TOOLS if (t != "restic" or self.args.restic) and (t != "agent" or self.args.agent)]
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        for i in range(self.args.repeat):
            for tool in tools[i % len(tools):] + tools[:i % len(tools)]:
                res = getattr(self, tool)(f"{i}-{self.name}")
                res.pop("stdout", None)
                runs[tool].append(res)
                print(f"round {i + 1}/{self.args.repeat} {self.name} {tool}: {res.get('seconds')} s wall, "
                      f"{res.get('cpu_s')} s CPU, load {res.get('load')}", file=sys.stderr, flush=True)
            self.bench.empty_trash()                            # the round's copies, once it is over
            os.sync()
            time.sleep(self.args.settle)    # let the file system forget the deletion (module docstring)
        return runs

    def _discard(self, *paths: Path) -> None:
        for path in paths:
            self.bench.discard(path)

    def _entries(self, res: dict[str, Any], dst: Path) -> dict[str, Any]:
        if ok(res):
            res["entries"] = count_entries(dst)
        return res

    def syncd(self, tag: str) -> dict[str, Any]:
        env, dst = self.bench.syncd_env(f"hs{tag}"), self.work / f"hs{tag}-copy"
        res = self._entries(self.bench.cli(env, "hydrate", self.vol, str(dst)), dst)
        self._discard(dst, self.work / f"hs{tag}")
        return res

    def restic(self, tag: str) -> dict[str, Any]:
        env, dst = self.bench.restic_env(f"hr{tag}", f"hy-{self.name}"), self.work / f"hr{tag}-copy"
        res = self._entries(self.bench.step(["restic", "restore", "latest", "--target", str(dst)], env), dst)
        self._discard(dst, self.work / f"hr{tag}")
        return res

    def agent(self, tag: str) -> dict[str, Any]:
        from syncd.sdk.volume import AgentClient
        base = self.work / f"ha{tag}"
        env = {**self.bench.syncd_env(f"ha{tag}"), "SYNCD_ROOT": str(base / "root"),
               "SYNCD_SOCKET": str(base / "agent.sock"), "SYNCD_MOUNT_MODE": "eager"}
        child = Child([sys.executable, "-m", "syncd", "agent"], env, base / "agent.log")
        try:
            client = AgentClient(base / "agent.sock", "bench", timeout=self.args.step_timeout, connect_wait=60)
            client.call("GET", "/v1/status")
            load, cpu, t = round(os.getloadavg()[0], 1), child.cpu(), time.perf_counter()
            try:
                client.call("POST", f"/v1/volumes/{self.vol}/mount")
            except Exception as exc:
                return {"error": str(exc)[:300], "load": load}
            res = {"seconds": round(time.perf_counter() - t, 3), "cpu_s": round(child.cpu() - cpu, 2),
                   "load": load, "rss_mib": child.peak()}
            return self._entries(res, base / "root" / self.vol)
        finally:
            child.stop(signal.SIGTERM)
            self._discard(base)


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per tool: the median run by wall seconds, the median CPU, every run's seconds."""
    out: dict[str, Any] = {}
    for tool, steps in runs.items():
        good = sorted((s for s in steps if ok(s)), key=lambda s: s["seconds"])
        if not good:
            out[tool] = {"error": "no run finished", "runs": steps}
            continue
        cpu = [s["cpu_s"] for s in good if s.get("cpu_s") is not None]
        out[tool] = {**good[(len(good) - 1) // 2], "cpu_median_s": round(statistics.median(cpu), 2) if cpu else None,
                     "runs_s": [s.get("seconds") for s in steps], "runs_cpu_s": [s.get("cpu_s") for s in steps],
                     "loads": [s.get("load") for s in steps]}
    return out


def table(results: dict[str, Any]) -> list[str]:
    lines = ["| data set | tool | median wall | runs (s) | median CPU | peak RSS | wall ratio | CPU ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name, data in results["sets"].items():
        med = data["median"]
        theirs = med.get("restic", {})
        for tool in TOOLS:
            mine = med.get(tool)
            if not mine:
                continue
            if "seconds" not in mine:
                lines.append(f"| {name} | {tool} | failed | | | | | |")
                continue
            runs = ", ".join("-" if s is None else f"{s:.1f}" for s in mine["runs_s"])
            wall = f"{theirs['seconds'] / mine['seconds']:.2f}x" if tool != "restic" and "seconds" in theirs else ""
            cpu = f"{theirs['cpu_median_s'] / mine['cpu_median_s']:.2f}x" \
                if tool != "restic" and theirs.get("cpu_median_s") and mine.get("cpu_median_s") else ""
            lines.append(f"| {name} | {tool} | {mine['seconds']:.2f} s | {runs} | {mine.get('cpu_median_s')} s | "
                         f"{mine.get('rss_mib', 0):.0f} MiB | {wall} | {cpu} |")
        loads = [x for tool in med.values() for x in tool.get("loads", []) if x is not None]
        if loads:
            lines.append(f"| {name} | load | {min(loads):.1f}-{max(loads):.1f} | | | | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop the server and agents on the way out
    work, server = scratch(args, "syncd-hydrates-")
    results: dict[str, Any] = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "sets": {}}
    try:
        server.start()
        server.create_bucket(BUCKET)
        bench = Bench(args, work, server)
        sets = [(f"{n}", n) for n in args.counts] + ([("real", 0)] if args.real else [])
        for name, n in sets:
            src = work / f"src-{name}"
            if n:
                make_tree(src, n, args.dirs)
            else:
                shutil.copytree(args.real_tree, src, symlinks=True, ignore_dangling_symlinks=True)
            rounds = Rounds(bench, work, name, src)
            entry: dict[str, Any] = {"shape": shape(src), "seed": rounds.seed()}
            print(json.dumps({name: entry}), flush=True)
            entry["runs"] = rounds.run()
            entry["median"] = summary(entry["runs"])
            results["sets"][name] = entry
            shutil.rmtree(src, ignore_errors=True)
    finally:
        server.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return report(args, results, "hydrates.json", table(results))


if __name__ == "__main__":
    sys.exit(main())
