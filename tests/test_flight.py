"""Processes on one worker share: several hydrates of one volume with one cache download each
large file once (data/flight.py), counted at the S3 endpoint on the real server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from syncd.config import Config, MiB
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine

from .agentutil import env_for
from .faultproxy import FaultProxy

OLD = 1_600_000_000 * 10**9
READERS = 6


async def _volume(config: Config, tmp_path: Path) -> dict[str, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    # each over the largest chunk (4 MiB): two chunks or more, so each file's chunks share a pack
    # (3 MiB of random bytes were one chunk about one time in 80: a chunk object, not a pack)
    files = {"a.bin": os.urandom(5 * MiB + 11), "b.bin": os.urandom(4 * MiB + 1)}
    for name, data in files.items():
        (src / name).write_bytes(data)
        os.utime(src / name, ns=(OLD, OLD))
    async with open_engine(config.replace(large_pack_size=32 * MiB)) as eng:
        await commit(eng, "vol", src)
    return files


async def test_six_processes_with_one_cache_download_each_file_once(
        config: Config, tmp_path: Path, proxy: FaultProxy) -> None:
    files = await _volume(config, tmp_path)
    worker = config.replace(s3_endpoint=proxy.endpoint, cache_dir=tmp_path / "w" / "cache",
                            state_dir=tmp_path / "w" / "state")
    env = env_for(worker)
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", "--json", "-q", "hydrate", "vol", str(tmp_path / f"r{n}"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for n in range(READERS)]
    outs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * READERS, [e.decode()[-500:] for _, e in outs]
    for n in range(READERS):
        for name, data in files.items():
            assert (tmp_path / f"r{n}" / name).read_bytes() == data
    assert all(json.loads(o)["files_written"] == 2 for o, _ in outs)
    # the two files' chunks lie in one pack: a lone hydrate reads it with one GET per file
    assert proxy.requests("GET", "/packs/") == 2


async def test_two_hydrates_in_one_process_share_too(config: Config, tmp_path: Path) -> None:
    files = await _volume(config, tmp_path)

    def pack_gets(keys: dict[str, int]) -> int:
        return sum(n for k, n in keys.items() if "/packs/" in k or "/chunks/" in k)

    async with open_engine(config.replace(cache_dir=tmp_path / "lone" / "cache")) as eng:
        eng.counter.reset()
        await hydrate(eng, "vol", tmp_path / "lone" / "r")
        lone = pack_gets(eng.counter.keys)
    async with open_engine(config.replace(cache_dir=tmp_path / "w" / "cache")) as eng:
        eng.counter.reset()
        await asyncio.gather(hydrate(eng, "vol", tmp_path / "x"), hydrate(eng, "vol", tmp_path / "y"))
        assert pack_gets(eng.counter.keys) == lone          # one download, one local copy
        chunks = sum(len(e.chunks) for e in (await eng.repo.snapshot(
            "vol", (await eng.repo.head("vol")).snapshot or "")).entries.values() if e.kind == "file")
        assert eng.cache is not None and eng.cache.stats.trusted == chunks   # copied, not hashed
    for d in ("x", "y"):
        for name, data in files.items():
            assert (tmp_path / d / name).read_bytes() == data
