"""Scale benchmark: many small files, syncd against restic, on one SeaweedFS in one run.

Run from the repository root::

    python bench/scale.py                  # 100,000 files of 0-2 KB in 100 x 100 directories
    python bench/scale.py --full           # 1,000,000 files
    python bench/scale.py --sizes 20000,100000   # several sizes: also reports the growth
    python bench/scale.py --tiny           # 300 files; what the test suite runs (seconds)

For each size it builds the tree once (random bytes, sizes uniform in 0-2 KB,
files spread evenly over the leaf directories), then measures, each as a
child process timed from outside (wall seconds, and the child's peak RSS from
``wait4``):

    syncd   first commit, a 1-file commit (seconds and bytes uploaded), cold hydrate
            (fresh cache and state), a 1-file re-hydrate, listing the volume's root, and
            an agent: mount the volume, write one file, seconds until the agent noticed
            it and until it is committed, full walks, the agent's peak RSS
    restic  backup (first), a 1-file backup (bytes added), restore (fresh cache),
            restore of the 1-file change into the restored tree, ``ls`` of the root

Every step has a deadline (``--step-timeout``, default 300 s): a step that
exceeds it is killed and reported as ``exceeded`` (and the steps that need
its result are skipped). The growth line divides each figure by the one of the
previous size. restic talks to the same server with the same access key
(syncd.store.devserver gives SeaweedFS its credentials; restic 0.14 needs no
``-s3.config`` identities beyond that). Output: a table on the terminal and ``<out>/scale.json``.

Only the CLI is used (``python -m syncd commit/hydrate ...``, ``syncd ls`` when
it exists, else ``volume info``-style listing through the engine API), so the
script measures whatever format the checked-out syncd writes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncd.store.devserver import CREDENTIALS, SeaweedServer  # noqa: E402

BUCKET = "scale"
MODES = {"tiny": [300], "default": [100_000], "full": [1_000_000]}
PASSWORD = "scale-bench"
LIST_ROOT = """
import asyncio, sys
from syncd.config import Config
from syncd.engine.wiring import open_engine
async def main():
    async with open_engine(Config.from_env()) as engine:
        _, snap = await engine.repo.latest(sys.argv[1])
        names = sorted(p for p in (snap.entries if snap else {}) if "/" not in p)
    print("\\n".join(names))
asyncio.run(main())
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    for name in ("tiny", "full"):
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name)
    p.add_argument("--sizes", help="comma-separated file counts (overrides the mode)")
    p.add_argument("--dirs", type=int, default=100, help="directories per level, two levels (default 100)")
    p.add_argument("--step-timeout", type=float, default=300.0, help="kill a step after this many seconds")
    p.add_argument("--no-restic", dest="restic", action="store_false", help="measure syncd only")
    p.add_argument("--no-agent", dest="agent", action="store_false",
                   help="skip the agent step (mount, write one file, time until it is committed)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="where scale.json goes")
    p.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir; removed unless --keep)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    args.counts = [int(s) for s in args.sizes.split(",")] if args.sizes else MODES[args.mode or "default"]
    return args


def make_tree(root: Path, files: int, dirs: int, seed: int = 11) -> int:
    """``files`` files of 0-2 KB spread over ``dirs`` x ``dirs`` leaf directories; total bytes."""
    rng = random.Random(seed)
    width = dirs if files >= dirs * dirs else max(1, int(files ** 0.5) // 2)
    leaves = [root / f"d{i:03d}" / f"e{j:03d}" for i in range(width) for j in range(width)]
    total = 0
    for n in range(files):
        leaf = leaves[n % len(leaves)]
        if n < len(leaves):
            leaf.mkdir(parents=True, exist_ok=True)
        size = rng.randint(0, 2048)
        (leaf / f"f{n:07d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return total


def touch_one(root: Path, files: int, dirs: int, generation: int) -> Path:
    """Rewrite one file in place (new content, new size): the 1-file change."""
    target = sorted(sorted(root.iterdir())[0].iterdir())[0]
    victim = sorted(target.iterdir())[0]
    victim.write_bytes(f"changed {generation}\n".encode() * 50)
    return victim


def timed(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak RSS (MiB), stdout; ``exceeded`` if killed at the deadline."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=cwd, start_new_session=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                return {"exceeded": True, "seconds": round(time.perf_counter() - start, 2),
                        "rss_mib": round(usage.ru_maxrss / 1024, 1)}
            time.sleep(0.05)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-2000:]}")
    return {"seconds": round(wall, 3), "rss_mib": round(usage.ru_maxrss / 1024, 1), "stdout": stdout}


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, server: SeaweedServer) -> None:
        self.args, self.work, self.server = args, work, server
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "RESTIC_", "AWS_"))}
        self.base = {**base, **CREDENTIALS}

    def syncd_env(self, tag: str) -> dict[str, str]:
        return {**self.base, "SYNCD_S3_ENDPOINT": self.server.endpoint, "SYNCD_BUCKET": BUCKET,
                "SYNCD_PREFIX": "scale", "SYNCD_OWNER": "bench",
                "SYNCD_CACHE_DIR": str(self.work / tag / "cache"), "SYNCD_STATE_DIR": str(self.work / tag / "state")}

    def restic_env(self, tag: str) -> dict[str, str]:
        return {**self.base, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(self.work / tag / "rcache"),
                "RESTIC_REPOSITORY": f"s3:{self.server.endpoint}/{BUCKET}/restic-{tag.split('-')[-1]}"}

    def step(self, cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
        return timed(cmd, env, self.args.step_timeout)

    def syncd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "syncd", "--json", "-q", *args]

    def run_syncd(self, n: int, src: Path) -> dict[str, Any]:
        vol, writer, reader = f"scale-{n}", self.syncd_env(f"w-{n}"), self.syncd_env(f"r-{n}")
        res: dict[str, Any] = {}
        first = res["first_commit"] = self.step(self.syncd("commit", vol, str(src)), writer)
        if first.get("exceeded"):
            return res
        touch_one(src, n, self.args.dirs, 1)
        one = res["one_file_commit"] = self.step(self.syncd("commit", vol, str(src)), writer)
        if not one.get("exceeded"):
            doc = json.loads(one.pop("stdout"))
            one["uploaded_bytes"], one["files_read"] = doc.get("uploaded_bytes"), doc.get("files_read")
        dst = self.work / f"hydrated-{n}"
        res["cold_hydrate"] = self.step(self.syncd("hydrate", vol, str(dst)), reader)
        if not res["cold_hydrate"].get("exceeded"):
            touch_one(src, n, self.args.dirs, 2)
            self.step(self.syncd("commit", vol, str(src)), writer)
            res["one_file_rehydrate"] = self.step(self.syncd("hydrate", vol, str(dst)), reader)
        listing = self.syncd("ls", vol, "/") if _has_ls() else [sys.executable, "-c", LIST_ROOT, vol]
        res["list_root"] = self.step(listing, reader)
        if self.args.agent and not res["cold_hydrate"].get("exceeded"):
            res["agent_write_back"] = self.agent_write_back(n, vol)
        return res

    def agent_write_back(self, n: int, vol: str) -> dict[str, Any]:
        """Mount the volume in an agent, write one file: seconds until it is committed, full walks, RSS."""
        from syncd.sdk.volume import AgentClient
        tag = f"a-{n}"
        sock = self.work / tag / "agent.sock"
        env = {**self.syncd_env(tag), "SYNCD_ROOT": str(self.work / tag / "root"), "SYNCD_SOCKET": str(sock)}
        (self.work / tag).mkdir(parents=True, exist_ok=True)
        with open(self.work / tag / "agent.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "syncd", "agent", "--debounce", "0.2", "--max-delay", "5"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = AgentClient(sock, "bench", timeout=self.args.step_timeout, connect_wait=30)
        try:
            t0 = time.perf_counter()
            client.call("POST", f"/v1/volumes/{vol}/mount")
            mounted = time.perf_counter() - t0

            def mount_status() -> dict[str, Any]:
                status: dict[str, Any] = client.call("GET", "/v1/status")
                return next(m for m in status["mounts"] if m["name"] == vol)
            deadline = time.perf_counter() + self.args.step_timeout
            while not (mount_status().get("watch") or {}).get("mode") and time.perf_counter() < deadline:
                time.sleep(0.05)                            # the watcher's start-up walk
            watcher_ready = time.perf_counter() - t0 - mounted
            before = mount_status()
            t1 = time.perf_counter()
            (self.work / tag / "root" / vol / "written-by-a-task.txt").write_text("hello\n")
            noticed = None
            while time.perf_counter() < deadline:
                m = mount_status()
                if noticed is None and m["pending"]:
                    noticed = time.perf_counter() - t1
                if m["seq"] > before["seq"]:
                    break
                time.sleep(0.02)
            committed = time.perf_counter() - t1
            rss = _peak_rss_mib(proc.pid)
            return {"seconds": round(committed, 3), "noticed_s": None if noticed is None else round(noticed, 3),
                    "mount_s": round(mounted, 2), "watcher_start_s": round(watcher_ready, 2),
                    "watch": m.get("watch"), "rss_mib": rss, "exceeded": m["seq"] <= before["seq"]}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def run_restic(self, n: int, src: Path) -> dict[str, Any]:
        writer, reader = self.restic_env(f"w-{n}"), self.restic_env(f"r-{n}")
        res: dict[str, Any] = {}
        self.step(["restic", "init"], writer)
        first = res["first_commit"] = timed(["restic", "backup", "--json", "-q", "."], writer, self.args.step_timeout, src)
        first.pop("stdout", None)
        if first.get("exceeded"):
            return res
        touch_one(src, n, self.args.dirs, 3)
        one = res["one_file_commit"] = timed(["restic", "backup", "--json", "."], writer, self.args.step_timeout, src)
        if not one.get("exceeded"):
            summary = [json.loads(line) for line in one.pop("stdout").splitlines() if '"summary"' in line]
            one["uploaded_bytes"] = summary[-1].get("data_added") if summary else None
        dst = self.work / f"restored-{n}"
        res["cold_hydrate"] = self.step(["restic", "restore", "latest", "--target", str(dst)], reader)
        res["cold_hydrate"].pop("stdout", None)
        if not res["cold_hydrate"].get("exceeded"):
            touch_one(src, n, self.args.dirs, 4)
            timed(["restic", "backup", "-q", "."], writer, self.args.step_timeout, src)
            res["one_file_rehydrate"] = self.step(["restic", "restore", "latest", "--target", str(dst)], reader)
            res["one_file_rehydrate"].pop("stdout", None)
        res["list_root"] = self.step(["restic", "ls", "latest", "/"], reader)
        res["list_root"].pop("stdout", None)
        return res


def _peak_rss_mib(pid: int) -> float:
    """A running process's peak resident set (VmHWM), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _has_ls() -> bool:
    """Does this syncd have a top-level ``ls`` command (listing without the engine API)?"""
    import argparse as ap

    from syncd.cli import core
    parser = core.build_parser()
    return any("ls" in a.choices for a in parser._actions if isinstance(a, ap._SubParsersAction))


STEPS = ["first_commit", "one_file_commit", "cold_hydrate", "one_file_rehydrate", "list_root", "agent_write_back"]


def show(results: dict[str, Any]) -> list[str]:
    lines = [f"{'files':>9} {'tool':<7} " + " ".join(f"{s:>20}" for s in STEPS)]
    for n, tools in results["sizes"].items():
        for tool, steps in tools.items():
            if tool == "growth":
                continue
            cells = []
            for s in STEPS:
                r = steps.get(s)
                if r is None:
                    cells.append(f"{'-':>20}")
                elif r.get("exceeded"):
                    cells.append(f"{'>' + str(r['seconds']) + 's':>20}")
                else:
                    up = f" {r['uploaded_bytes'] // 1024}KiB" if r.get("uploaded_bytes") is not None else ""
                    cells.append(f"{r['seconds']:.2f}s {r['rss_mib']:.0f}M{up}".rjust(20))
            lines.append(f"{n:>9} {tool:<7} " + " ".join(cells))
    for line in results.get("growth", []):
        lines.append(line)
    return lines


def growth(results: dict[str, Any]) -> list[str]:
    sizes = list(results["sizes"])
    out = []
    for a, b in itertools.pairwise(sizes):
        for tool in results["sizes"][b]:
            x, y = results["sizes"][a].get(tool, {}), results["sizes"][b][tool]
            parts = []
            for s in STEPS:
                if s in x and s in y and not x[s].get("exceeded") and not y[s].get("exceeded") and x[s]["seconds"]:
                    parts.append(f"{s} {y[s]['seconds'] / x[s]['seconds']:.1f}x")
            out.append(f"growth {a} -> {b} ({int(b) / int(a):.0f}x files), {tool}: " + ", ".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.restic and not shutil.which("restic"):
        print("restic not found (apt-get install restic); measuring syncd only", file=sys.stderr)
        args.restic = False
    work = args.work or Path(tempfile.mkdtemp(prefix="syncd-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(work / "seaweedfs")
    results: dict[str, Any] = {"mode": args.mode or "default", "load": os.getloadavg(), "sizes": {}}
    try:
        server.start()
        for n in args.counts:
            src = work / f"src-{n}"
            t0 = time.perf_counter()
            nbytes = make_tree(src, n, args.dirs)
            print(f"{n} files, {nbytes / 2**20:.1f} MiB, made in {time.perf_counter() - t0:.1f}s", flush=True)
            entry: dict[str, Any] = {}
            results["sizes"][str(n)] = entry
            tools = [("syncd", Bench.run_syncd)] + ([("restic", Bench.run_restic)] if args.restic else [])
            for tool, run in tools:
                entry[tool] = run(Bench(args, work, server), n, src)
                for step in entry[tool].values():
                    out = step.pop("stdout", None)
                    if out is not None:
                        step["output_lines"] = out.count("\n")
                print(json.dumps({tool: entry[tool]}), flush=True)
            shutil.rmtree(src, ignore_errors=True)
        results["growth"] = growth(results)
    finally:
        server.stop()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2))
    print("\n".join(show(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
