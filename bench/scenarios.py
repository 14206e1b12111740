"""The benchmark scenarios: what each contender does in one repetition.

A scenario prepares its data once (untimed), then offers one callable per
contender that performs one timed repetition and returns a ``Run``. The runner
alternates contenders inside every repetition (rotating who goes first), so
load from the other tenants of this machine hits all of them alike.

Scenarios (sizes from ``Context.sizes``)::

    hydrate_large   cold hydrate of one large file: fresh cache, fresh target; syncd as a
                    CLI process and inside a running agent ("syncd agent": a mount
                    request over the socket, no process start-up), vs s5cmd, aws,
                    boto3, restic restore, rclone copy, JuiceFS (cp -r out of a fresh mount)
    hydrate_small   cold hydrate of N small files in D directories, the same contenders
    warm_large      re-hydrate into a fresh dir from a warm chunk cache, vs cp -r
    warm_small      same for the small tree
    commit_large    commit of a new large file (new volume each time), vs upload
    commit_incr     commit after rewriting 1 MiB in the middle of a committed
                    large file, vs uploading the whole file again
    readers         R concurrent cold hydrates of one volume on R separate
                    workers (no gateway), vs R concurrent s5cmd downloads
    readers_shared  R concurrent cold hydrates of the large volume by R processes on
                    ONE machine (one cache and state directory: they share one
                    download, data/flight.py), vs R concurrent s5cmd downloads
    startup         a command's start-up: ``python -c pass``, ``syncd --version``,
                    a hydrate of a one-file volume, and s5cmd copying that file;
                    the target is syncd's time above ``python -c pass``

CPU is reported for every contender (user + system of its process tree, per
GiB moved), so each scenario's CPU ratio is there beside its wall-time ratio.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import juicefs
from harness import BUCKET, RAW, Context, Run, make_small_tree, restic_binary, run_procs, s5cmd_binary, write_random

Rep = Callable[[int], Run]


@dataclass
class Scenario:
    name: str
    title: str
    reps: dict[str, Rep]
    baseline: str            # the competitor the targets compare with
    target: float | None     # syncd throughput / baseline throughput must reach this (None: no target)
    note: str = ""
    max_chunks: int | None = None  # instead: syncd must upload at most this many chunks
    max_overhead_s: float | None = None  # instead: syncd's median may exceed the baseline's by this much


def prepare(ctx: Context) -> dict[str, Path]:
    """Reference data on disk, committed as syncd volumes and uploaded as plain objects."""
    data = ctx.work / "data"
    large = data / "large" / "big.bin"
    small = data / "small"
    fan = data / "fan" / "shared.bin"
    tiny = data / "tiny" / "hello.txt"
    if not large.exists():
        ctx.log(f"writing {ctx.sizes['large'] >> 20} MiB of random data")
        write_random(large, ctx.sizes["large"])
        make_small_tree(small, ctx.sizes["small_files"], ctx.sizes["small_dirs"], ctx.sizes["small_size"])
        write_random(fan, ctx.sizes["fanout"])
        tiny.parent.mkdir(parents=True, exist_ok=True)
        tiny.write_bytes(b"hello\n")
    for volume, source in (("large", large.parent), ("small", small), ("fan", fan.parent), ("tiny", tiny.parent)):
        ctx.syncd_admin("commit", volume, str(source), cache=ctx.fresh(f"prep/{volume}/cache"),
                        state=ctx.fresh(f"prep/{volume}/state"))
    ctx.admin("cp", str(large), f"{ctx.s3}/{RAW}/large/big.bin")
    ctx.admin("cp", str(fan), f"{ctx.s3}/{RAW}/fan/shared.bin")
    ctx.admin("cp", str(tiny), f"{ctx.s3}/{RAW}/tiny/hello.txt")
    ctx.admin("cp", f"{small}/*", f"{ctx.s3}/{RAW}/small/")
    if "restic" in ctx.tools:  # a restic repository in the same bucket, one snapshot per data set
        subprocess.run([restic_binary(), "-r", ctx.restic_repo, "init", "-q"], env=ctx.restic_env, check=True,
                       stdout=subprocess.DEVNULL)
        for tag, source in (("large", large.parent), ("small", small)):
            subprocess.run([restic_binary(), "-r", ctx.restic_repo, "backup", "-q", "--tag", tag, str(source)],
                           env=ctx.restic_env, check=True, stdout=subprocess.DEVNULL)
    if "juicefs" in ctx.tools:  # a JuiceFS file system on the same server, the same bytes written in
        _juicefs_fs(ctx).format()
        _juicefs_fs(ctx).load({"large": large.parent, "small": small})
    return {"large": large, "small": small, "fan": fan, "tiny": tiny}


def _juicefs_fs(ctx: Context) -> juicefs.JuiceFS:
    return juicefs.JuiceFS(ctx.endpoint, ctx.work / "juicefs", ctx.tool_env)


def _juicefs(ctx: Context, tag: str, nbytes: int) -> Rep:
    """``cp -r`` out of a fresh JuiceFS mount with its caches dropped (bench/juicefs.py)."""
    def rep(i: int) -> Run:
        out = ctx.fresh("out")
        run = juicefs.cold_copy(_juicefs_fs(ctx), tag, out / tag, nbytes, ctx.server_pid)
        shutil.rmtree(out, ignore_errors=True)
        return run
    return rep


def _restore(ctx: Context, tag: str, nbytes: int) -> Rep:
    """``restic restore latest --tag <tag>`` into a fresh dir, with a fresh cache (cold)."""
    def rep(i: int) -> Run:
        out = ctx.fresh("out")
        run = ctx.restic("restore", "latest", "--tag", tag, "--target", str(out), nbytes=nbytes)
        shutil.rmtree(out, ignore_errors=True)
        return run
    return rep


def _rclone(ctx: Context, prefix: str, nbytes: int) -> Rep:
    def rep(i: int) -> Run:
        out = ctx.fresh("out")
        run = ctx.rclone("copy", f"s3:{BUCKET}/{RAW}/{prefix}", str(out), nbytes=nbytes)
        shutil.rmtree(out, ignore_errors=True)
        return run
    return rep


def _agent(ctx: Context, volume: str, nbytes: int) -> Rep:
    def rep(i: int) -> Run:
        run = ctx.agent_mount(volume, nbytes)
        shutil.rmtree(ctx.work / "agent", ignore_errors=True)
        return run
    return rep


def _others(ctx: Context, tag: str, nbytes: int) -> dict[str, Rep]:
    """The agent path (hydrate inside a running agent) and restic / rclone / JuiceFS, when asked for."""
    reps = {"syncd agent": _agent(ctx, tag, nbytes)}
    if "restic" in ctx.tools:
        reps["restic"] = _restore(ctx, tag, nbytes)
    if "rclone" in ctx.tools:
        reps["rclone"] = _rclone(ctx, tag, nbytes)
    if "juicefs" in ctx.tools:
        reps["juicefs"] = _juicefs(ctx, tag, nbytes)
    return reps


def _syncd_hydrate(ctx: Context, volume: str, nbytes: int, source: Path, cache: Path | None = None) -> Rep:
    """Hydrate into a fresh dir with a fresh state dir (and a fresh cache unless one is given);
    the first repetition's result is byte-compared with the source."""
    def rep(i: int) -> Run:
        out = ctx.fresh("out")
        run = ctx.syncd("syncd", ["hydrate", volume, str(out / "r0")], nbytes,
                        cache=cache or ctx.fresh("cold-cache"), state=ctx.fresh("state"))
        if i == 0:
            check_same(source, out / "r0")
        shutil.rmtree(out, ignore_errors=True)
        return run
    return rep


def _concurrent_syncd(ctx: Context, tool: str, volume: str, out: Path, nbytes: int, count: int) -> Run:
    """``count`` workers, each with its own cache and state, hydrating at once."""
    cmds, envs = [], []
    for n in range(count):
        envs.append({**ctx.syncd_env, "SYNCD_CACHE_DIR": str(ctx.fresh(f"w{n}/cache")),
                     "SYNCD_STATE_DIR": str(ctx.fresh(f"w{n}/state"))})
        cmds.append(ctx.syncd_cmd("hydrate", volume, str(out / f"r{n}")))
    run = run_procs(tool, cmds, envs, nbytes, ctx.server_pid)
    run.extra["origin_bytes"] = nbytes
    return run


def hydrate_large(ctx: Context, paths: dict[str, Path]) -> Scenario:
    size = paths["large"].stat().st_size
    key = f"{ctx.s3}/{RAW}/large/big.bin"

    def download(tool: str) -> Rep:
        def rep(i: int) -> Run:
            out = ctx.fresh("out")
            dest = str(out / "big.bin")
            run = {"s5cmd": lambda: ctx.s5cmd("cp", key, dest, nbytes=size),
                   "aws": lambda: ctx.aws("cp", key, dest, nbytes=size),
                   "boto3": lambda: ctx.boto3("get", key, dest, nbytes=size)}[tool]()
            shutil.rmtree(out, ignore_errors=True)
            return run
        return rep

    reps = {"syncd": _syncd_hydrate(ctx, "large", size, paths["large"].parent)}
    reps.update({t: download(t) for t in ("s5cmd", "aws", "boto3") if t in ctx.tools})
    reps.update(_others(ctx, "large", size))
    return Scenario("hydrate_large", f"cold hydrate, one {size >> 20} MiB file", reps, "s5cmd", 1.0)


def hydrate_small(ctx: Context, paths: dict[str, Path]) -> Scenario:
    size = ctx.sizes["small_files"] * ctx.sizes["small_size"]

    def download(tool: str) -> Rep:
        def rep(i: int) -> Run:
            out = ctx.fresh("out")
            src = f"{ctx.s3}/{RAW}/small/"
            run = (ctx.s5cmd("cp", src + "*", f"{out}/", nbytes=size) if tool == "s5cmd"
                   else ctx.aws("cp", src, str(out), "--recursive", nbytes=size))
            shutil.rmtree(out, ignore_errors=True)
            return run
        return rep

    reps = {"syncd": _syncd_hydrate(ctx, "small", size, paths["small"])}
    reps.update({t: download(t) for t in ("s5cmd", "aws") if t in ctx.tools})
    reps.update(_others(ctx, "small", size))
    files, dirs = ctx.sizes["small_files"], ctx.sizes["small_dirs"]
    return Scenario("hydrate_small", f"cold hydrate, {files} files of {ctx.sizes['small_size'] >> 10} KiB "
                    f"in {dirs} dirs", reps, "s5cmd", 3.0)


def _warm(ctx: Context, name: str, volume: str, source: Path, size: int, title: str) -> Scenario:
    # the worker already holds the volume: one hydrate (kept: with SYNCD_CACHE_LARGE=ref the cache
    # points into it) fills the cache; each repetition hydrates into a fresh dir with fresh state
    cache = ctx.fresh(f"warm-{volume}/cache")
    ctx.syncd_admin("hydrate", volume, str(ctx.fresh(f"warm-{volume}/first")), cache=cache,
                    state=ctx.fresh(f"warm-{volume}/state"))

    def cp(i: int) -> Run:
        out = ctx.fresh("out")
        run = run_procs("cp -r", [["cp", "-r", str(source), str(out / "copy")]], ctx.tool_env, size,
                        ctx.server_pid)
        shutil.rmtree(out, ignore_errors=True)
        return run

    reps = {"syncd": _syncd_hydrate(ctx, volume, size, source, cache=cache), "cp -r": cp}
    return Scenario(name, title, reps, "cp -r", 0.8)


def warm_large(ctx: Context, paths: dict[str, Path]) -> Scenario:
    size = paths["large"].stat().st_size
    return _warm(ctx, "warm_large", "large", paths["large"].parent, size,
                 f"warm re-hydrate from the chunk cache, one {size >> 20} MiB file")


def warm_small(ctx: Context, paths: dict[str, Path]) -> Scenario:
    size = ctx.sizes["small_files"] * ctx.sizes["small_size"]
    return _warm(ctx, "warm_small", "small", paths["small"], size,
                 f"warm re-hydrate from the chunk cache, {ctx.sizes['small_files']} small files")


def commit_large(ctx: Context, paths: dict[str, Path]) -> Scenario:
    big = paths["large"]
    size = big.stat().st_size

    def syncd(i: int) -> Run:
        volume = f"up-{i}"
        run = ctx.syncd("syncd", ["commit", volume, str(big.parent)], size,
                        cache=ctx.fresh("cold-cache"), state=ctx.fresh("state"))
        ctx.admin("rm", f"{ctx.s3}/volumes/bench/{volume}/*")
        return run

    def upload(tool: str) -> Rep:
        def rep(i: int) -> Run:
            key = f"{ctx.s3}/{RAW}/up-{tool}-{i}/big.bin"
            run = {"s5cmd": lambda: ctx.s5cmd("cp", str(big), key, nbytes=size),
                   "aws": lambda: ctx.aws("cp", str(big), key, nbytes=size),
                   "boto3": lambda: ctx.boto3("put", str(big), key, nbytes=size)}[tool]()
            ctx.admin("rm", key)
            return run
        return rep

    reps: dict[str, Rep] = {"syncd": syncd}
    reps.update({t: upload(t) for t in ("s5cmd", "aws", "boto3") if t in ctx.tools})
    return Scenario("commit_large", f"commit a new {size >> 20} MiB file vs upload", reps, "s5cmd", 1.0)


def commit_incr(ctx: Context, paths: dict[str, Path]) -> Scenario:
    work = ctx.fresh("incr")
    big = work / "big.bin"
    shutil.copyfile(paths["large"], big)
    size = big.stat().st_size
    cache, state = ctx.fresh("incr-cache"), ctx.fresh("incr-state")
    ctx.syncd_admin("commit", "incr", str(work), cache=cache, state=state)
    middle = size // 2 - (512 << 10)

    def touch() -> None:
        with open(big, "r+b") as f:
            f.seek(middle)
            f.write(os.urandom(min(1 << 20, size)))

    def syncd(i: int) -> Run:
        touch()
        run = ctx.syncd("syncd", ["commit", "incr", str(work)], size, cache=cache, state=state)
        result = run.extra.get("result", {})
        run.extra["uploaded_bytes"] = result.get("uploaded_bytes")
        run.extra["uploaded_chunks"] = result.get("uploaded_chunks")
        return run

    def upload(tool: str) -> Rep:
        def rep(i: int) -> Run:
            touch()
            key = f"{ctx.s3}/{RAW}/incr/big.bin"
            run = (ctx.s5cmd("cp", str(big), key, nbytes=size) if tool == "s5cmd"
                   else ctx.aws("cp", str(big), key, nbytes=size))
            run.extra["uploaded_bytes"] = size
            return run
        return rep

    reps: dict[str, Rep] = {"syncd": syncd}
    reps.update({t: upload(t) for t in ("s5cmd", "aws") if t in ctx.tools})
    return Scenario("commit_incr", f"commit after changing 1 MiB in the middle of a {size >> 20} MiB file "
                    "vs re-uploading it", reps, "s5cmd", 1.0,
                    note="syncd reads and hashes the whole file, uploads only the changed chunks "
                    "(cut by content, 512 KiB on average: the 1 MiB edit and a chunk at each end)",
                    max_chunks=6)


def readers(ctx: Context, paths: dict[str, Path]) -> Scenario:
    size = paths["fan"].stat().st_size
    count = ctx.sizes.get("readers", 6)

    def syncd(i: int) -> Run:
        out = ctx.fresh("out")
        run = _concurrent_syncd(ctx, "syncd", "fan", out, size * count, count)
        shutil.rmtree(out, ignore_errors=True)
        return run

    reps: dict[str, Rep] = {"syncd": syncd}
    if "s5cmd" in ctx.tools:
        reps["s5cmd"] = _many_s5cmd(ctx, "fan/shared.bin", size, count)
    return Scenario("readers", f"{count} concurrent cold readers of one {size >> 20} MiB volume, "
                    "no gateway", reps, "s5cmd", None,
                    note="each reader is its own worker (own cache), so origin bytes = readers x size")


def readers_shared(ctx: Context, paths: dict[str, Path]) -> Scenario:
    """R processes on one machine hydrate the large volume at once into R directories, with the
    worker's one cache and state directory (the defaults every process on a worker shares)."""
    size = paths["large"].stat().st_size
    count = ctx.sizes.get("readers", 6)

    def syncd(i: int) -> Run:
        out = ctx.fresh("out")
        env = {**ctx.syncd_env, "SYNCD_CACHE_DIR": str(ctx.fresh("shared/cache")),
               "SYNCD_STATE_DIR": str(ctx.fresh("shared/state"))}
        cmds = [ctx.syncd_cmd("hydrate", "large", str(out / f"r{n}")) for n in range(count)]
        run = run_procs("syncd", cmds, env, size * count, ctx.server_pid)
        if i == 0:
            for n in range(count):
                check_same(paths["large"].parent, out / f"r{n}")
        shutil.rmtree(out, ignore_errors=True)
        return run

    reps: dict[str, Rep] = {"syncd": syncd}
    if "s5cmd" in ctx.tools:
        reps["s5cmd"] = _many_s5cmd(ctx, "large/big.bin", size, count)
    return Scenario("readers_shared", f"{count} processes on one machine hydrating one {size >> 20} MiB "
                    "volume at once (one cache), no gateway", reps, "s5cmd", 1.0,
                    note="syncd downloads once and copies locally (data/flight.py); s5cmd downloads each")


def _many_s5cmd(ctx: Context, key: str, size: int, count: int) -> Rep:
    """``count`` s5cmd downloads of ``raw/<key>`` started at once, each into its own file."""
    def rep(i: int) -> Run:
        out = ctx.fresh("out")
        cmds = [[*_s5(ctx), "cp", f"{ctx.s3}/{RAW}/{key}", str(out / f"r{n}.bin")] for n in range(count)]
        run = run_procs("s5cmd", cmds, ctx.tool_env, size * count, ctx.server_pid)
        run.extra["origin_bytes"] = size * count
        shutil.rmtree(out, ignore_errors=True)
        return run
    return rep


def startup(ctx: Context, paths: dict[str, Path]) -> Scenario:
    """Start-up: what a command costs before and around its work, on a one-file volume (no bytes
    counted: CPU is reported in seconds, not per GiB)."""
    # a worker's cache and state directories exist: their opening is timed, not their creation
    cache, state = ctx.fresh("startup/cache"), ctx.fresh("startup/state")

    def python(i: int) -> Run:
        return run_procs("python -c pass", [[sys.executable, "-c", "pass"]], ctx.tool_env, 0, ctx.server_pid)

    def version(i: int) -> Run:
        return run_procs("syncd --version", [ctx.syncd_cmd("--version")], ctx.syncd_env, 0, ctx.server_pid)

    def hydrate(i: int) -> Run:
        out = ctx.fresh("out")
        run = ctx.syncd("syncd", ["hydrate", "tiny", str(out / f"t{i}")], 0, cache=cache, state=state)
        shutil.rmtree(out, ignore_errors=True)
        return run

    def s5(i: int) -> Run:
        out = ctx.fresh("out")
        run = ctx.s5cmd("cp", f"{ctx.s3}/{RAW}/tiny/hello.txt", str(out / "hello.txt"))
        shutil.rmtree(out, ignore_errors=True)
        return run

    reps: dict[str, Rep] = {"syncd": hydrate, "syncd --version": version, "python -c pass": python}
    if "s5cmd" in ctx.tools:
        reps["s5cmd"] = s5
    return Scenario("startup", "start-up: hydrate a one-file volume (syncd), syncd --version, python -c pass, "
                    "s5cmd cp of that file", reps, "python -c pass", None, max_overhead_s=0.15,
                    note="target: a hydrate's start-up, set-up and 5 requests within 0.15 s of python -c pass")


def _s5(ctx: Context) -> list[str]:
    return [s5cmd_binary(), "--endpoint-url", ctx.endpoint]


ALL = [hydrate_large, hydrate_small, warm_large, warm_small, commit_large, commit_incr, readers, readers_shared,
       startup]


def check_same(a: Path, b: Path) -> None:
    """Byte-compare two trees (used once per scenario to make sure syncd moved the right bytes)."""
    subprocess.run(["diff", "-r", "-q", str(a), str(b)], check=True)
