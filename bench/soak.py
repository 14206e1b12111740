"""A bounded soak (issue 22): writers, readers through a gateway pool, kill -9 and S3 faults, for minutes.

    python bench/soak.py [--duration 600] [--seed N] [--json out.json]

What runs, all against one SeaweedFS (``SYNCD_S3_ENDPOINT`` or an embedded one)
behind the fault proxy (tests/faultproxy.py: 503 SlowDown, resets before and
after the request lands, at fixed rates):

* four writers, each its own engine (cache, state, directory), committing to
  one volume in a loop: each commit adds a file only it writes (disjoint) and
  rewrites one of three ``shared/`` files every writer rewrites (overlapping);
* four readers, each its own engine and directory, hydrating the volume
  through a pool of three gateway processes (and the store behind the proxy
  when the pool fails them);
* every 30-60 s (seeded) one gateway is SIGKILLed and started again 2 s later.

What it checks at the end (the exit status is 1 if any fails):

* every commit that returned success is in the history, and its snapshot
  names exactly the bytes the writer wrote for the paths it changed (chunk
  ids are content hashes: compared with the hashes of what was written);
* every hydrate during the run equals the snapshot it reports (path by path,
  by content hash), and that snapshot is one of the committed ones;
* a final hydrate of HEAD by a fresh engine equals HEAD, and
  ``check --read-data`` is clean;
* each gateway incarnation that lived at least 60 s: RSS and open fds at its
  end within 10% of their value at half its life.

Not in this soak yet (issue 22 asks for them): an agent with an eager and a
lazy mount, kill -9 of the agent or a mount, fsynced writes through a mount,
and stalls from the proxy. The counts it prints go to docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fleet import Gateway  # noqa: E402  (bench/fleet.py: a gateway process we can kill -9)

from syncd.config import Config, MiB  # noqa: E402
from syncd.engine.commit import commit  # noqa: E402
from syncd.engine.hydrate import hydrate  # noqa: E402
from syncd.engine.wiring import Engine, open_engine  # noqa: E402
from syncd.errors import SyncdError  # noqa: E402
from syncd.format.chunking import content_id  # noqa: E402
from syncd.maint.check import check  # noqa: E402
from syncd.store.devserver import endpoint_or_embedded, free_port  # noqa: E402
from tests.faultproxy import FaultProxy, Rule  # noqa: E402

VOLUME = "soak"
WRITERS = READERS = 4
SHARED = 3


@dataclass
class Counts:
    commits: int = 0
    commit_errors: int = 0
    hydrates: int = 0
    hydrate_errors: int = 0
    gateway_kills: int = 0
    losses: list[str] = field(default_factory=list)
    committed: dict[str, dict[str, str]] = field(default_factory=dict)  # snapshot -> path -> content id
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (snapshot, local files)


def local_ids(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): content_id(p.read_bytes())
            for p in root.rglob("*") if p.is_file() and not p.name.startswith(".syncd")}


async def writer(i: int, eng: Engine, work: Path, stop: float, rng: random.Random, counts: Counts) -> None:
    src = work / f"w{i}"
    (src / "shared").mkdir(parents=True, exist_ok=True)
    own: dict[str, str] = {}
    if True:  # the engine was opened before the faults began (opening one is not retried)
        n = 0
        while time.monotonic() < stop:
            n += 1
            data = os.urandom(rng.randrange(1, 256) * 1024)
            (src / f"own-{i}-{n:05d}.bin").write_bytes(data)
            shared = f"shared/s{rng.randrange(SHARED)}.bin"
            sdata = f"writer {i} commit {n} {uuid.uuid4()}".encode() * 100
            (src / shared).write_bytes(sdata)
            changed = {f"own-{i}-{n:05d}.bin": content_id(data), shared: content_id(sdata)}
            try:
                result = await commit(eng, VOLUME, src)
            except SyncdError as exc:
                counts.commit_errors += 1
                print(f"writer {i}: commit failed: {exc}", file=sys.stderr)
                continue
            own.update({k: v for k, v in changed.items() if k.startswith("own-")})
            assert result.snapshot is not None
            counts.commits += 1
            counts.committed[result.snapshot] = {**own, shared: changed[shared]}


async def reader(i: int, eng: Engine, work: Path, stop: float, counts: Counts) -> None:
    dst = work / f"r{i}"
    if True:
        while time.monotonic() < stop:
            try:
                result = await hydrate(eng, VOLUME, dst)
            except SyncdError as exc:
                counts.hydrate_errors += 1
                print(f"reader {i}: hydrate failed: {exc}", file=sys.stderr)
                continue
            counts.hydrates += 1
            if result.snapshot is not None:
                counts.seen.append((result.snapshot, await asyncio.to_thread(local_ids, dst)))


def sample(gw: Gateway) -> tuple[float, int, int] | None:
    if gw.proc is None or gw.proc.poll() is not None:
        return None
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        return time.monotonic(), rss * 1024, len(os.listdir(f"/proc/{gw.proc.pid}/fd"))
    except (OSError, StopIteration):
        return None


async def chaos(gateways: list[Gateway], stop: float, rng: random.Random, counts: Counts,
                lives: list[list[tuple[float, int, int]]]) -> None:
    current = list(range(len(lives), len(lives) + len(gateways)))  # each gateway's incarnation in lives
    lives.extend([] for _ in gateways)
    next_kill = time.monotonic() + rng.uniform(30, 60)
    while time.monotonic() < stop:
        for k, gw in enumerate(gateways):
            s = sample(gw)
            if s is not None:
                lives[current[k]].append(s)
        if time.monotonic() >= next_kill:
            k = rng.randrange(len(gateways))
            victim = gateways[k].proc
            assert victim is not None
            victim.kill()
            victim.wait()
            counts.gateway_kills += 1
            await asyncio.sleep(2.0)
            await asyncio.to_thread(gateways[k].start)
            current[k] = len(lives)
            lives.append([])
            next_kill = time.monotonic() + rng.uniform(30, 60)
        await asyncio.sleep(1.0)


async def verify(config: Config, work: Path, counts: Counts) -> dict[str, Any]:
    async with open_engine(config.replace(cache_dir=work / "v-cache", state_dir=work / "v-state")) as eng:
        history = {sid: snap for sid, snap in await eng.repo.history(VOLUME)}
        for sid, wanted in counts.committed.items():
            snap = history.get(sid)
            if snap is None:
                counts.losses.append(f"commit {sid} is not in the history")
                continue
            for path, cid in wanted.items():
                entry = snap.entries.get(path)
                if entry is None or [c.id for c in entry.chunks] != [cid]:
                    counts.losses.append(f"snapshot {sid}: {path} is not what was committed")
        for sid, files in counts.seen:
            snap = history.get(sid)
            expected = None if snap is None else {p: e.chunks[0].id if e.chunks else content_id(b"")
                                                  for p, e in snap.entries.items() if e.kind == "file"}
            if expected != files:
                counts.losses.append(f"a hydrate of {sid} did not equal that snapshot")
        final = work / "final"
        result = await hydrate(eng, VOLUME, final)
        head = history[result.snapshot] if result.snapshot in history else None
        if head is None or {p: e.chunks[0].id if e.chunks else content_id(b"")
                            for p, e in head.entries.items() if e.kind == "file"} != local_ids(final):
            counts.losses.append("the final hydrate does not equal HEAD")
        checked = await check(eng, VOLUME, read_data=True)
        if not checked.ok:
            counts.losses.append(checked.report())
        return {"snapshots": len(history), "check": checked.report().splitlines()[0]}


def flat(lives: list[list[tuple[float, int, int]]]) -> list[str]:
    """Incarnations of >= 60 s whose RSS or fds grew more than 10% over their second half."""
    out = []
    for n, life in enumerate(lives):
        if len(life) < 2 or life[-1][0] - life[0][0] < 60:
            continue
        mid = next(s for s in life if s[0] >= (life[0][0] + life[-1][0]) / 2)
        if life[-1][1] > mid[1] * 1.10 or life[-1][2] > mid[2] * 1.10 + 2:
            out.append(f"gateway incarnation {n}: RSS {mid[1] >> 20} -> {life[-1][1] >> 20} MiB, "
                       f"fds {mid[2]} -> {life[-1][2]}")
    return out


async def soak(endpoint: str, work: Path, duration: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    proxy = await FaultProxy(endpoint).start()
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SYNCD_S3_ENDPOINT": proxy.endpoint, "SYNCD_PREFIX": prefix,
           "SYNCD_BUCKET": "syncd-soak", "PYTHONPATH": str(ROOT)}
    env.pop("SYNCD_GATEWAY", None)
    gateways = [Gateway(env, free_port(), work / f"gw{k}") for k in range(3)]
    for gw in gateways:
        await asyncio.to_thread(gw.start)
    base = Config(s3_endpoint=proxy.endpoint, bucket="syncd-soak", prefix=prefix, owner="soak",
                  chunk_size=1 * MiB, pack_threshold=256 * 1024, pack_size=2 * MiB, large_pack_size=0,
                  retries=8, cache_dir=work / "cache", state_dir=work / "state")
    readers = base.replace(gateways=tuple(gw.url for gw in gateways))
    counts = Counts()
    lives: list[list[tuple[float, int, int]]] = []
    started = time.monotonic()
    stop = started + duration
    try:
        async with open_engine(base) as eng:  # the volume exists before the readers start
            (work / "seed").mkdir()
            (work / "seed" / "hello.txt").write_text("soak\n")
            first = await commit(eng, VOLUME, work / "seed")
            assert first.snapshot
            counts.committed[first.snapshot] = {"hello.txt": content_id(b"soak\n")}
        async with contextlib.AsyncExitStack() as engines:
            ws = [await engines.enter_async_context(open_engine(base.replace(
                cache_dir=work / f"w{i}-cache", state_dir=work / f"w{i}-state"))) for i in range(WRITERS)]
            rs = [await engines.enter_async_context(open_engine(readers.replace(
                cache_dir=work / f"r{i}-cache", state_dir=work / f"r{i}-state"))) for i in range(READERS)]
            proxy.rules = [Rule("slowdown", skip=1, every=40), Rule("reset", skip=7, every=55),
                           Rule("reset_after", skip=13, every=70)]
            stop = time.monotonic() + duration
            await asyncio.gather(*(writer(i, e, work, stop, rng, counts) for i, e in enumerate(ws)),
                                 *(reader(i, e, work, stop, counts) for i, e in enumerate(rs)),
                                 chaos(gateways, stop, rng, counts, lives))
        proxy.rules = []
        verified = await verify(base, work, counts)
    finally:
        for gw in gateways:
            gw.stop()
        await proxy.close()
    counts.losses += flat(lives)
    return {"duration_s": round(time.monotonic() - started, 1), "seed": seed, "commits": counts.commits,
            "commit_errors": counts.commit_errors, "hydrates": counts.hydrates,
            "hydrate_errors": counts.hydrate_errors, "gateway_kills": counts.gateway_kills,
            "faults_injected": dict(proxy.injected), "store_requests": len(proxy.log),
            "gateway_lives_checked": sum(1 for life in lives if len(life) > 1 and life[-1][0] - life[0][0] >= 60),
            "losses": counts.losses, **verified}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--json", type=Path, help="write the counts here too")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="syncd-soak-"))
    try:
        with endpoint_or_embedded(work / "seaweedfs") as endpoint:
            report = asyncio.run(soak(endpoint, work, args.duration, args.seed))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(1 if report["losses"] else 0)


if __name__ == "__main__":
    main()
