"""Scale benchmark: many small files, syncd against restic, on one SeaweedFS in one run.

Run from the repository root::

    python bench/scale.py                  # 100,000 files of 0-2 KB in 100 x 100 directories, and the real tree
    python bench/scale.py --full           # 100,000 and 1,000,000 files: the issue 19 table and the growth
    python bench/scale.py --sizes 20000,100000   # chosen sizes (also reports the growth between them)
    python bench/scale.py --tiny           # 300 files; what the test suite runs (seconds)
    python bench/scale.py --sizes 100000 --find-only --repeat 3   # item 4: find, syncd and restic alternated
    python bench/scale.py --sizes 100000 --commit-only --repeat 3 # first commits alternated (and the real tree's)
    python bench/scale.py --sizes 300000 --agent-only --repeat 5   # the agent's steps, 5 writes

For each size it builds the tree once (random bytes, sizes uniform in 0-2 KB,
files spread evenly over the leaf directories), then measures, each from
outside in a child process (wall seconds, and the child's peak RSS and CPU
seconds from ``wait4``; the agent's and the mount's peak sampled from ``/proc``
while they run and taken from ``wait4`` when they exit):

    syncd   first commit; a 1-file commit (bytes uploaded, files read); cold hydrate
            (fresh cache and state); a 1-file re-hydrate after a commit made
            elsewhere (another directory and state); ``syncd ls`` of the root (fresh
            cache); ``find`` in a lazy mount (fresh cache: cold, then warm); and an
            agent (eager mode): its mount (a cold hydrate), a 1-file commit (a task
            writes one file: seconds until the write-back commit is durable), a
            1-file re-hydrate (``reload`` after a commit made elsewhere)
    restic  backup; a 1-file backup (bytes added); restore (fresh cache); a restore
            after a 1-file backup made elsewhere (restic 0.14 rewrites every file);
            ``ls`` of the root; ``find`` in ``restic mount`` (fresh cache)

``--find-only`` commits (through the engine, in this process: not a measured
step) and backs up each size once, then runs the two
``find`` steps ``--repeat`` times, alternating syncd's lazy mount and ``restic
mount`` (the first of the pair rotating), each on a fresh mount with a fresh
cache; the table shows the median run (every run's seconds are in the JSON).
``--commit-only`` does the same for the first commit (``syncd commit`` of the
tree into a new volume with a fresh state directory against ``restic backup``
into a new repository), and likewise for the real tree unless ``--no-real-tree``.

``--agent-only`` commits each size once the same way (not measured) and runs
only the agent's steps, with ``--repeat`` writes of a new file at the root,
each timed until its commit is HEAD; the table shows the median write (every
write's seconds are in the JSON, the first being what the full run measures).

The *real tree* (``--real-tree``, default ``/usr/share``: on Debian about
56,000 entries, 4,000 symlinks, 14 levels, 0.7 GiB of mixed sizes) is copied
into the scratch directory (symlinks kept as links) and both tools commit and
hydrate the copy. Its shape is reported with the figures, since the directory
differs between machines; syncd leaves out links that point outside the volume
(reported as ``skipped``), restic keeps them.

Every step has a deadline (``--step-timeout``, default 300 s, plus
``--per-1000`` seconds, default 5, per 1,000 files of the size: 800 s at
100,000 files, 5,300 s at 1,000,000, for a first commit that took 213 s at
100,000 on a loaded machine): a step that exceeds it is killed and reported as
``exceeded``, and the steps that need its result are skipped. restic talks to
the same server with the same access key. Hydrated copies are put aside and
deleted once the size (or the real tree) is done, so that no measured step
follows a large deletion (``Bench.discard``). For cold hydrates alone,
alternated over several rounds with medians and CPU, see bench/hydrates.py. Output: a Markdown table on the
terminal (bench/scalereport.py) and ``<out>/scale.json``; every step records
the 1-minute load average at its start.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "bench"))

from scalereport import growth, ok, show  # noqa: E402

from syncd.store.devserver import CREDENTIALS, SeaweedServer  # noqa: E402
from tests.mountutil import fuse_missing  # noqa: E402

BUCKET = "scale"
MODES = {"tiny": [300], "default": [100_000], "full": [100_000, 1_000_000]}
PASSWORD = "scale-bench"
WRITTEN = "written-by-a-task.txt"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    for name in ("tiny", "full"):
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name)
    p.add_argument("--sizes", help="comma-separated file counts (overrides the mode)")
    p.add_argument("--dirs", type=int, default=100, help="directories per level, two levels (default 100)")
    p.add_argument("--step-timeout", type=float, default=300.0,
                   help="kill a step after this many seconds, plus --per-1000 per 1,000 files (default 300)")
    p.add_argument("--per-1000", type=float, default=5.0,
                   help="seconds added to a step's deadline per 1,000 files of the size (default 5)")
    p.add_argument("--no-restic", dest="restic", action="store_false", help="measure syncd only")
    p.add_argument("--no-agent", dest="agent", action="store_false", help="skip the agent's steps")
    p.add_argument("--no-find", dest="find", action="store_false", help="skip find in the lazy mounts")
    p.add_argument("--find-only", action="store_true",
                   help="only the find steps, syncd and restic alternated --repeat times (no real tree)")
    p.add_argument("--commit-only", action="store_true",
                   help="only the first commits, syncd and restic alternated --repeat times")
    p.add_argument("--agent-only", action="store_true",
                   help="only the agent's steps, --repeat 1-file writes (no restic, no real tree)")
    p.add_argument("--repeat", type=int, default=3,
                   help="--find-only, --commit-only: runs per tool, alternated; --agent-only: 1-file writes"
                        " (default 3)")
    p.add_argument("--real-tree", type=Path, default=None,
                   help="a directory to copy and measure as the real tree (default /usr/share; not with --tiny)")
    p.add_argument("--no-real-tree", dest="real", action="store_false")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="where scale.json goes")
    p.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir; removed unless --keep)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    args.counts = [int(s) for s in args.sizes.split(",")] if args.sizes else MODES[args.mode or "default"]
    if args.real_tree is None and args.mode != "tiny":
        args.real_tree = Path("/usr/share")
    args.real = args.real and args.real_tree is not None and not args.find_only and not args.agent_only
    return args


# ---------------------------------------------------------------- trees

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


def touch_one(root: Path, generation: int) -> Path:
    """Rewrite one file in place (new content, new size): the 1-file change."""
    target = sorted(sorted(root.iterdir())[0].iterdir())[0]
    victim = sorted(target.iterdir())[0]
    victim.write_bytes(f"changed {generation}\n".encode() * 50)
    return victim


def shape(root: Path) -> dict[str, int]:
    """Entries by kind, bytes of the files and the deepest level below ``root`` (no link followed)."""
    out = {"entries": 0, "files": 0, "dirs": 0, "links": 0, "bytes": 0, "depth": 0}
    base = len(root.parts)
    for top, dirnames, filenames in os.walk(root):
        level = len(Path(top).parts) - base + 1
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(top, name))
            kind = "links" if os.path.islink(os.path.join(top, name)) else "dirs" if name in dirnames else "files"
            out[kind] += 1
            out["entries"] += 1
            out["bytes"] += st.st_size if kind == "files" else 0
            out["depth"] = max(out["depth"], level)
    return out


def count_entries(root: Path) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(root))


# ---------------------------------------------------------------- children

# A child's ru_maxrss counts the memory of the process that forked it (Linux keeps the old mm's
# high-water mark across exec), so every child of this driver would report at least the driver's
# RSS. Each timed command is therefore forked by this tiny interpreter instead, which reaps it with
# wait4 and writes its ru_maxrss (KiB) and CPU seconds to a file: the floor is the trampoline's own ~9 MiB.
TRAMPOLINE = """
import os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime:.2f}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def timed(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, CPU seconds (user + system, from wait4), its peak RSS (MiB),
    stdout; ``exceeded`` if killed at the deadline."""
    load = round(os.getloadavg()[0], 1)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", TRAMPOLINE, rss.name, *cmd], env=env,
                                stdout=out, stderr=err, cwd=cwd, start_new_session=True)
        status = _reap(proc, start + timeout)
        wall = time.perf_counter() - start
        usage = (rss.read() or "0 0").split()
        peak, cpu = _mib(int(usage[0])), float(usage[1]) if len(usage) > 1 else None
        if status is None:
            return {"exceeded": True, "seconds": round(wall, 2), "rss_mib": peak, "load": load}
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if status != 0:      # reported, not raised: one failed step must not lose a run of hours
        print(f"{' '.join(cmd)} exited {status}:\n{stderr[-2000:]}", file=sys.stderr, flush=True)
        return {"error": f"exit {status}: {stderr.strip()[-300:]}", "seconds": round(wall, 3),
                "rss_mib": peak, "load": load}
    return {"seconds": round(wall, 3), "rss_mib": peak, "cpu_s": cpu, "load": load, "stdout": stdout}


def _reap(proc: subprocess.Popen[Any], deadline: float) -> int | None:
    """Wait for ``proc``; at ``deadline`` kill its process group and return None."""
    while True:
        code = proc.poll()
        if code is not None:
            return code
        if time.perf_counter() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        time.sleep(0.02)


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


class Child:
    """A long-running child (agent, mount). Its peak RSS is sampled (VmHWM, which belongs to
    the process's own address space, so nothing of this driver's) and taken last just before
    it is stopped."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.rss = 0.0
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def peak(self) -> float:
        """The process's peak resident set so far (VmHWM), MiB."""
        self.rss = max(self.rss, self.status("VmHWM:"))
        return self.rss

    def status(self, field: str) -> float:
        """A memory field of /proc/PID/status (VmHWM:, VmRSS:), MiB; 0 if it cannot be read."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field):
                    return _mib(int(line.split()[1]))
        except OSError:
            pass
        return 0.0

    def cpu(self) -> float:
        """CPU seconds (user + system) the process has used so far, all its threads (/proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> float:
        """Signal it and reap it (SIGKILL to its group after ``timeout``); its peak RSS, MiB."""
        if self.proc.poll() is not None:
            return self.rss
        self.peak()
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        _reap(self.proc, time.perf_counter() + timeout)
        return self.rss

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


def wait_until(check: Any, deadline: float, what: str, child: Child | None = None) -> float:
    """Poll ``check()`` until true; seconds waited. RuntimeError at the deadline or if ``child`` died."""
    start = time.perf_counter()
    while not check():
        if child is not None and child.proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited {child.proc.returncode}:\n{child.tail()}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not within the deadline")
        time.sleep(0.05)
    return time.perf_counter() - start


def guard(run: Any, results: int, shape: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """``run()``'s tuple of ``results`` step results; if it raises (a process that did not come
    up, a deadline while waiting for one), each result is the error instead: the run goes on."""
    try:
        out: tuple[Any, ...] = run()
        return out
    except Exception as exc:
        print(f"step failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        error = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if shape is not None:
            return tuple({k: dict(error) for k in shape} for _ in range(results))
        return tuple(dict(error) for _ in range(results))


def unmount(path: Path) -> None:
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


# ---------------------------------------------------------------- the tools

class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, server: SeaweedServer) -> None:
        self.args, self.work, self.server = args, work, server
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "RESTIC_", "AWS_"))}
        self.base = {**base, **CREDENTIALS}
        self.timeout = args.step_timeout

    def discard(self, path: Path) -> None:
        """Put ``path`` aside, deleted by ``empty_trash`` once the data set is measured: a large
        deletion makes the next step's file creation slower on some file systems (this VM's ext4
        without a journal scans the inodes freed in the last 30 s on every create), so no
        measured step follows one."""
        if path.exists():
            trash = self.work / "trash"
            trash.mkdir(exist_ok=True)
            path.rename(trash / f"{path.name}-{time.monotonic_ns()}")

    def empty_trash(self) -> None:
        shutil.rmtree(self.work / "trash", ignore_errors=True)

    def for_size(self, n: int) -> Bench:
        self.timeout = self.args.step_timeout + self.args.per_1000 * n / 1000
        return self

    def syncd_env(self, tag: str) -> dict[str, str]:
        return {**self.base, "SYNCD_S3_ENDPOINT": self.server.endpoint, "SYNCD_BUCKET": BUCKET,
                "SYNCD_PREFIX": "scale", "SYNCD_OWNER": "bench",
                "SYNCD_CACHE_DIR": str(self.work / tag / "cache"), "SYNCD_STATE_DIR": str(self.work / tag / "state")}

    def restic_env(self, tag: str, repo: str) -> dict[str, str]:
        return {**self.base, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(self.work / tag / "rcache"),
                "RESTIC_REPOSITORY": f"s3:{self.server.endpoint}/{BUCKET}/restic-{repo}"}

    def step(self, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> dict[str, Any]:
        return timed(cmd, env, self.timeout, cwd)

    def cli(self, env: dict[str, str], *args: str) -> dict[str, Any]:
        """One ``syncd --json`` command; its JSON answer's counts are kept beside the time."""
        res = self.step([sys.executable, "-m", "syncd", "--json", "-q", *args], env)
        if "stdout" in res:
            try:
                doc = json.loads(res["stdout"])
            except ValueError:
                return res
            if isinstance(doc, dict):
                keep = ("uploaded_bytes", "files_read", "files_written", "deleted", "changed")
                res.update({k: doc[k] for k in keep if k in doc})
                if "skipped" in doc:         # paths the commit left out (links pointing outside the volume)
                    res["left_out"] = len(doc["skipped"])
        return res

    # ------------------------------------------------------------ syncd

    def run_syncd(self, n: int, src: Path) -> dict[str, Any]:
        vol, writer, reader = f"scale-{n}", self.syncd_env(f"w-{n}"), self.syncd_env(f"r-{n}")
        res: dict[str, Any] = {}
        res["first_commit"] = self.cli(writer, "commit", vol, str(src))
        if not ok(res["first_commit"]):
            return res
        touch_one(src, 1)
        res["one_file_commit"] = self.cli(writer, "commit", vol, str(src))
        dst = self.work / f"hydrated-{n}"
        res["cold_hydrate"] = self.cli(reader, "hydrate", vol, str(dst))
        if ok(res["cold_hydrate"]):
            res["cold_hydrate"]["entries"] = count_entries(dst)
            touch_one(src, 2)
            self.cli(writer, "commit", vol, str(src))                     # the commit made elsewhere
            res["one_file_rehydrate"] = self.cli(reader, "hydrate", vol, str(dst))
        self.discard(dst)
        res["list_root"] = self.cli(self.syncd_env(f"l-{n}"), "ls", vol, "/")
        if self.args.find:
            res["find_cold"], res["find_warm"] = guard(lambda: self.syncd_find(n, vol), 2)
        if self.args.agent:
            res.update(guard(lambda: (self.agent_steps(n, vol, src),), 1, {"agent_mount": {}})[0])
        return res

    def seed_syncd(self, n: int, vol: str, src: Path) -> dict[str, Any]:
        """--find-only's commit of ``src`` (not a measured step): in this process through the engine,
        the top-level entries as its change list, so it scans the tree once and plans over it
        without the CLI's first-commit walk (quadratic in overlay_sync on this main: 3,000
        files 12 s, 9,000 files 64 s, 20,000 killed at 400 s; see the lead's report)."""
        import asyncio

        from syncd.config import Config
        from syncd.engine.commit import commit
        from syncd.engine.wiring import open_engine

        async def run() -> None:
            async with open_engine(Config.from_env(self.syncd_env(f"w-{n}"))) as engine:
                await commit(engine, vol, src, changed=sorted(p.name for p in src.iterdir()))
        os.environ.update(CREDENTIALS)        # what the children get in their environment
        load, t = round(os.getloadavg()[0], 1), time.perf_counter()
        try:
            asyncio.run(run())
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "load": load}
        return {"seconds": round(time.perf_counter() - t, 3), "load": load, "how": "engine, top-level change list"}

    def syncd_find(self, n: int, vol: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """``find`` in a fresh lazy mount (cold), then again (warm); the mount's peak RSS from wait4."""
        missing = fuse_missing()
        if missing:
            return {"skipped": missing}, {"skipped": missing}
        from syncd.mount import control
        tag = self.work / f"f-{n}"
        mnt, ctl = tag / "mnt", tag / "ctl.sock"
        child = Child([sys.executable, "-m", "syncd.mount.process", vol, str(mnt), "--control", str(ctl),
                       "--read-only"], self.syncd_env(f"f-{n}"), tag / "mount.log")
        try:
            def answers() -> bool:
                try:
                    control.call_sync(ctl, "status")
                except Exception:
                    return False
                return True
            startup = wait_until(answers, time.perf_counter() + 120, "the lazy mount", child)
            cold = self.step(["find", str(mnt)], self.base)
            warm: dict[str, Any] = self.step(["find", str(mnt)], self.base) if ok(cold) else {"skipped": "cold"}
            status = control.call_sync(ctl, "status")
            cold.update(entries=cold.pop("stdout", "").count("\n") - 1, mount_startup_s=round(startup, 3),
                        tree_gets=status["tree_reads"], dirs_listed=status["dirs_listed"])
            warm.pop("stdout", None)
            try:
                control.call_sync(ctl, "stop")
            except Exception:
                pass
            cold["find_rss_mib"], warm["find_rss_mib"] = cold.get("rss_mib"), warm.get("rss_mib")
            cold["rss_mib"] = warm["rss_mib"] = child.stop(signal.SIGTERM)      # the mount's
            return cold, warm
        finally:
            child.stop(signal.SIGKILL, 10)
            unmount(mnt)

    def agent_steps(self, n: int, vol: str, src: Path) -> dict[str, Any]:
        """An agent mounts the volume (a cold hydrate), a task writes one file (seconds until the
        write-back commit is durable), another directory commits one file and the agent reloads."""
        from syncd.sdk.volume import AgentClient
        tag = self.work / f"a-{n}"
        sock, root = tag / "agent.sock", tag / "root"
        env = {**self.syncd_env(f"a-{n}"), "SYNCD_ROOT": str(root), "SYNCD_SOCKET": str(sock),
               "SYNCD_MOUNT_MODE": "eager"}
        child = Child([sys.executable, "-m", "syncd", "agent", "--debounce", "0.2", "--max-delay", "5"],
                      env, tag / "agent.log")
        client = AgentClient(sock, "bench", timeout=self.timeout, connect_wait=60)
        out: dict[str, Any] = {}
        try:
            t = time.perf_counter()
            client.call("GET", "/v1/status")              # waits for the agent's socket (connect_wait)
            started = time.perf_counter() - t
            out["agent_mount"] = self._agent_call(client, child, "POST", f"/v1/volumes/{vol}/mount")
            out["agent_mount"]["agent_start_s"] = round(started, 2)
            if not ok(out["agent_mount"]):
                return out
            state = AgentState(client, vol)
            out["agent_mount"]["watcher_start_s"] = round(wait_until(
                lambda: (state.get().get("watch") or {}).get("mode"), time.perf_counter() + self.timeout,
                "the agent's watcher", child), 2)
            out["agent_mount"]["rss_after_mib"] = child.status("VmRSS:")     # what it keeps resident
            writes = [self._agent_write(child, state, root / vol / WRITTEN)]
            for i in range(1, self.args.repeat if self.args.agent_only else 1):
                time.sleep(1.0)          # the previous commit's index write and tree cache settle
                writes.append(self._agent_write(child, state, root / vol / f"{i}-{WRITTEN}"))
            out["agent_one_file_commit"] = median_run(writes) if len(writes) > 1 else writes[0]
            touch_one(src, 5)
            self.cli(self.syncd_env(f"w-{n}"), "commit", vol, str(src))      # the commit made elsewhere
            out["agent_one_file_rehydrate"] = self._agent_call(client, child, "POST", f"/v1/volumes/{vol}/reload")
        finally:
            rss = child.stop(signal.SIGTERM)
            out["agent_peak_rss_mib"] = rss
            self.discard(root)
        return out

    def _agent_call(self, client: Any, child: Child, method: str, path: str) -> dict[str, Any]:
        load = round(os.getloadavg()[0], 1)
        t = time.perf_counter()
        try:
            doc = client.call(method, path)
        except Exception as exc:         # the client's deadline (the step timeout) or the agent's error
            return {"exceeded": True, "seconds": round(time.perf_counter() - t, 2), "error": str(exc)[:300],
                    "rss_mib": child.peak(), "load": load}
        res = {"seconds": round(time.perf_counter() - t, 3), "rss_mib": child.peak(), "load": load}
        res.update({k: doc[k] for k in ("files_written", "deleted", "seq") if isinstance(doc, dict) and k in doc})
        return res

    def _agent_write(self, child: Child, state: AgentState, path: Path) -> dict[str, Any]:
        """Write one file in the agent's copy: seconds until noticed, and until its commit is HEAD."""
        load = round(os.getloadavg()[0], 1)
        before = state.get()
        t = time.perf_counter()
        path.write_text("hello\n")
        noticed, m = None, before
        deadline = t + self.timeout
        while time.perf_counter() < deadline:
            m = state.get()
            if noticed is None and m["pending"]:
                noticed = time.perf_counter() - t
            if m["seq"] > before["seq"]:
                break
            time.sleep(0.01)
        committed = time.perf_counter() - t
        return {"seconds": round(committed, 3), "noticed_s": None if noticed is None else round(noticed, 3),
                "watch": m.get("watch"), "rss_mib": child.peak(), "load": load,
                "exceeded": m["seq"] <= before["seq"]}

    # ------------------------------------------------------------ restic

    def run_restic(self, n: int, src: Path) -> dict[str, Any]:
        writer, reader = self.restic_env(f"w-{n}", str(n)), self.restic_env(f"r-{n}", str(n))
        res: dict[str, Any] = {}
        self.step(["restic", "init"], writer)
        res["first_commit"] = self.step(["restic", "backup", "--json", "-q", "."], writer, src)
        if not ok(res["first_commit"]):
            return res
        touch_one(src, 3)
        one = res["one_file_commit"] = self.step(["restic", "backup", "--json", "."], writer, src)
        if "stdout" in one:
            summary = [json.loads(line) for line in one.pop("stdout").splitlines() if '"summary"' in line]
            one["uploaded_bytes"] = summary[-1].get("data_added") if summary else None
        dst = self.work / f"restored-{n}"
        res["cold_hydrate"] = self.step(["restic", "restore", "latest", "--target", str(dst)], reader)
        if ok(res["cold_hydrate"]):
            res["cold_hydrate"]["entries"] = count_entries(dst)   # "backup ." keeps paths relative
            touch_one(src, 4)
            self.step(["restic", "backup", "-q", "."], writer, src)          # the backup made elsewhere
            res["one_file_rehydrate"] = self.step(["restic", "restore", "latest", "--target", str(dst)], reader)
        self.discard(dst)
        res["list_root"] = self.step(["restic", "ls", "latest", "/"], reader)
        if self.args.find:
            res["find_cold"], res["find_warm"] = guard(lambda: self.restic_find(n, str(n)), 2)
        return res

    def restic_find(self, n: int, repo: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """``find`` below the latest snapshot in a fresh ``restic mount`` (cold, then warm)."""
        if not os.path.exists("/dev/fuse") or shutil.which("fusermount") is None:
            return {"skipped": "no FUSE (fusermount) for restic mount"}, {"skipped": "no FUSE"}
        tag = self.work / f"rf-{n}"
        mnt = tag / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        child = Child(["restic", "mount", "--no-default-permissions", str(mnt)],
                      self.restic_env(f"rf-{n}", repo), tag / "mount.log")
        top = mnt / "snapshots" / "latest"
        try:
            startup = wait_until(top.exists, time.perf_counter() + self.timeout, "restic mount", child)
            cold = self.step(["find", f"{top}/"], self.base)
            warm: dict[str, Any] = self.step(["find", f"{top}/"], self.base) if ok(cold) else {"skipped": "cold"}
            cold.update(entries=cold.pop("stdout", "").count("\n") - 1, mount_startup_s=round(startup, 3))
            warm.pop("stdout", None)
            cold["find_rss_mib"], warm["find_rss_mib"] = cold.get("rss_mib"), warm.get("rss_mib")
            cold["rss_mib"] = warm["rss_mib"] = child.stop(signal.SIGINT)       # restic mount's
            return cold, warm
        finally:
            child.stop(signal.SIGKILL, 10)
            subprocess.run(["fusermount", "-u", "-z", str(mnt)], capture_output=True)

    # ------------------------------------------------------------ the real tree

    def run_real(self, src: Path) -> dict[str, Any]:
        """Commit and hydrate a copy of a real directory: syncd, then restic."""
        out: dict[str, Any] = {}
        vol, dst = "real", self.work / "real-hydrated"
        syncd = out["syncd"] = {"first_commit": self.cli(self.syncd_env("w-real"), "commit", vol, str(src))}
        if ok(syncd["first_commit"]):
            syncd["cold_hydrate"] = self.cli(self.syncd_env("r-real"), "hydrate", vol, str(dst))
            syncd["cold_hydrate"]["entries"] = count_entries(dst)
        self.discard(dst)
        if self.args.restic:
            writer, reader = self.restic_env("w-real", "real"), self.restic_env("r-real", "real")
            self.step(["restic", "init"], writer)
            restic = out["restic"] = {"first_commit": self.step(["restic", "backup", "-q", "."], writer, src)}
            if ok(restic["first_commit"]):
                restic["cold_hydrate"] = self.step(["restic", "restore", "latest", "--target", str(dst)], reader)
                restic["cold_hydrate"]["entries"] = count_entries(dst)
            self.discard(dst)
        for steps in out.values():
            for step in steps.values():
                step.pop("stdout", None)
        return out


class AgentState:
    """The agent's status of one mount."""

    def __init__(self, client: Any, vol: str) -> None:
        self.client, self.vol = client, vol

    def get(self) -> dict[str, Any]:
        status: dict[str, Any] = self.client.call("GET", "/v1/status")
        mount: dict[str, Any] = next(m for m in status["mounts"] if m["name"] == self.vol)
        return mount


# ---------------------------------------------------------------- main

def measure_size(bench: Bench, n: int, work: Path) -> dict[str, Any]:
    src = work / f"src-{n}"
    t0 = time.perf_counter()
    nbytes = make_tree(src, n, bench.args.dirs)
    print(f"{n} files, {nbytes / 2**20:.1f} MiB, made in {time.perf_counter() - t0:.1f}s, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    entry: dict[str, Any] = {"bytes": nbytes, "load_before": os.getloadavg()}
    tools = [("syncd", bench.run_syncd)] + ([("restic", bench.run_restic)] if bench.args.restic else [])
    for tool, run in tools:
        entry[tool] = run(n, src)
        for step in entry[tool].values():
            if isinstance(step, dict):
                step.pop("stdout", None)
        print(json.dumps({tool: entry[tool]}), flush=True)
    entry["load_after"] = os.getloadavg()
    shutil.rmtree(src, ignore_errors=True)
    bench.empty_trash()
    if not bench.args.keep:          # caches, states and copies of this size: a 1M run needs the disk
        for tag in ("w", "r", "l", "f", "a", "rf"):
            shutil.rmtree(work / f"{tag}-{n}", ignore_errors=True)
    return entry


def measure_find(bench: Bench, n: int, work: Path) -> dict[str, Any]:
    """--find-only: commit and back up once, then syncd's and restic's cold and warm ``find``
    alternated ``--repeat`` times on fresh mounts and caches; each step is its median run."""
    src, vol = work / f"src-{n}", f"scale-{n}"
    nbytes = make_tree(src, n, bench.args.dirs)
    entry: dict[str, Any] = {"bytes": nbytes, "load_before": os.getloadavg(),
                             "syncd": {"seed": bench.seed_syncd(n, vol, src)}}
    finds = {"syncd": lambda: bench.syncd_find(n, vol)}
    if bench.args.restic:
        writer = bench.restic_env(f"w-{n}", str(n))
        bench.step(["restic", "init"], writer)
        entry["restic"] = {"seed": bench.step(["restic", "backup", "-q", "."], writer, src)}
        finds["restic"] = lambda: bench.restic_find(n, str(n))
    shutil.rmtree(src, ignore_errors=True)
    for tool in finds:
        entry[tool]["seed"].pop("stdout", None)
    print(json.dumps({tool: entry[tool]["seed"] for tool in finds}), flush=True)
    runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {tool: [] for tool in finds}
    order = [tool for tool in finds if ok(entry[tool]["seed"])]
    for i in range(bench.args.repeat):
        for tool in order[i % len(order):] + order[:i % len(order)] if order else []:
            for tag in ("f", "rf"):                 # a fresh mount's cache and state
                shutil.rmtree(work / f"{tag}-{n}", ignore_errors=True)
            runs[tool].append(guard(finds[tool], 2))
            cold = runs[tool][-1][0]
            print(f"rep {i + 1}/{bench.args.repeat} {tool}: find cold {cold.get('seconds')} s "
                  f"({cold.get('entries')} entries), warm {runs[tool][-1][1].get('seconds')} s, "
                  f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    for tool, pairs in runs.items():
        for i, step in enumerate(("find_cold", "find_warm")):
            entry[tool][step] = median_run([pair[i] for pair in pairs])
    entry["load_after"] = os.getloadavg()
    return entry


def measure_commits(bench: Bench, n: int, work: Path) -> dict[str, Any]:
    """--commit-only: the first commit of a tree of ``n`` files, alternated (see alternate_commits)."""
    src = work / f"src-{n}"
    nbytes = make_tree(src, n, bench.args.dirs)
    entry = {"bytes": nbytes, "load_before": os.getloadavg(), **alternate_commits(bench, src, str(n))}
    entry["load_after"] = os.getloadavg()
    shutil.rmtree(src, ignore_errors=True)
    return entry


def alternate_commits(bench: Bench, src: Path, tag: str) -> dict[str, Any]:
    """``syncd commit`` into a new volume (fresh cache and state) and ``restic backup`` into a new
    repository, ``--repeat`` times each, alternated (the first of the pair rotating); per tool
    the median run."""
    runs: dict[str, list[dict[str, Any]]] = {"syncd": []}
    if bench.args.restic:
        runs["restic"] = []
    order = list(runs)
    for i in range(bench.args.repeat):
        for tool in order[i % len(order):] + order[:i % len(order)]:
            name = f"c{i}-{tag}"
            if tool == "syncd":
                step = bench.cli(bench.syncd_env(name), "commit", f"first-{tag}-{i}", str(src))
            else:
                env = bench.restic_env(name, f"c{i}-{tag}")
                bench.step(["restic", "init"], env)
                step = bench.step(["restic", "backup", "-q", "."], env, src)
            step.pop("stdout", None)
            runs[tool].append(step)
            shutil.rmtree(bench.work / name, ignore_errors=True)
            print(f"rep {i + 1}/{bench.args.repeat} {tool}: first commit {step.get('seconds')} s, "
                  f"load {step.get('load')}", file=sys.stderr, flush=True)
    return {tool: {"first_commit": median_run(steps)} for tool, steps in runs.items()}


def measure_agent(bench: Bench, n: int, work: Path) -> dict[str, Any]:
    """--agent-only: commit once (not measured), then the agent's steps."""
    src, vol = work / f"src-{n}", f"scale-{n}"
    nbytes = make_tree(src, n, bench.args.dirs)
    entry: dict[str, Any] = {"bytes": nbytes, "load_before": os.getloadavg(),
                             "syncd": {"seed": bench.seed_syncd(n, vol, src)}}
    print(json.dumps(entry["syncd"]), flush=True)
    if ok(entry["syncd"]["seed"]):
        entry["syncd"].update(guard(lambda: (bench.agent_steps(n, vol, src),), 1, {"agent_mount": {}})[0])
    print(json.dumps(entry["syncd"]), flush=True)
    entry["load_after"] = os.getloadavg()
    shutil.rmtree(src, ignore_errors=True)
    if not bench.args.keep:
        for tag in ("w", "a"):
            shutil.rmtree(work / f"{tag}-{n}", ignore_errors=True)
    return entry


def median_run(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose seconds are the median (the lower one of an even count), with every run's seconds."""
    good = sorted((s for s in steps if ok(s)), key=lambda s: s["seconds"])
    if not good:
        return steps[0] if steps else {"skipped": "no run"}
    return {**good[(len(good) - 1) // 2], "runs_s": [s.get("seconds") for s in steps], "median_of": len(good),
            "runs_load": [s["load"] for s in steps if "load" in s]}


def measure_real(bench: Bench, work: Path) -> dict[str, Any]:
    src = work / "real-src" / bench.args.real_tree.name
    t0 = time.perf_counter()
    shutil.copytree(bench.args.real_tree, src, symlinks=True, ignore_dangling_symlinks=True)
    result: dict[str, Any] = {"source": str(bench.args.real_tree), "shape": shape(src),
                              "copied_s": round(time.perf_counter() - t0, 1), "load_before": os.getloadavg()}
    print(f"real tree {bench.args.real_tree}: {result['shape']}", flush=True)
    bench.for_size(result["shape"]["entries"])
    result.update(alternate_commits(bench, src, "real") if bench.args.commit_only else bench.run_real(src))
    result["load_after"] = os.getloadavg()
    print(json.dumps({"real": result}), flush=True)
    shutil.rmtree(work / "real-src", ignore_errors=True)
    bench.empty_trash()
    return result


def scratch(args: argparse.Namespace, prefix: str) -> tuple[Path, SeaweedServer]:
    """The scratch directory (``--work``, else a new temp dir) and a SeaweedFS (not started) in
    it; ``args.restic`` turned off if restic is not installed. Shared with bench/hydrates.py."""
    if args.restic and not shutil.which("restic"):
        print("restic not found (apt-get install restic); measuring syncd only", file=sys.stderr)
        args.restic = False
    work = args.work or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work, SeaweedServer(work / "seaweedfs")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work, server = scratch(args, "syncd-scale-")
    results: dict[str, Any] = {"mode": args.mode or "default", "command": " ".join(sys.argv),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load": os.getloadavg(),
                               "restic": _version(["restic", "version"]) if args.restic else None,
                               "sizes": {}}
    try:
        server.start()
        bench = Bench(args, work, server)
        for n in args.counts:
            measure = (measure_find if args.find_only else measure_commits if args.commit_only
                       else measure_agent if args.agent_only else measure_size)
            results["sizes"][str(n)] = measure(bench.for_size(n), n, work)
        if args.real:
            results["real"] = measure_real(bench, work)
        results["growth"] = growth(results)
    finally:
        server.stop()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return report(args, results, "scale.json", show(results))


def report(args: argparse.Namespace, results: dict[str, Any], name: str, table: list[str]) -> int:
    """Stamp the finish time, write ``<out>/<name>`` and print the table (0, main's exit code).
    Shared with bench/hydrates.py."""
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(results, indent=2))
    print("\n".join(table))
    return 0


def _version(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
