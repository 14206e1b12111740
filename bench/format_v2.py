"""What a one-file change costs as a volume grows: counts first, seconds second.

    python bench/format_v2.py                    # 2,000 and 10,000 files of 0-2 KB
    python bench/format_v2.py --files 2000,20000 --dirs 100
    PYTHONPATH=/path/to/other/checkout python bench/format_v2.py   # the same on another syncd

For each size: a first commit, a one-file commit (PUTs, bytes uploaded,
seconds), a re-hydrate of that change on a second worker whose cache is warm
(GETs, bytes read, seconds) and ``volume info`` (GETs). One SeaweedFS for the
whole run; every number is one run (the machine is shared: read the counts,
treat the seconds as rough). Issue 11's full benchmark against restic is
bench/scale.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine
from syncd.store.devserver import CREDENTIALS, SeaweedServer


def make_files(root: Path, files: int, dirs: int) -> list[Path]:
    rng = random.Random(7)
    out = []
    for i in range(files):
        d = root / f"d{i % dirs:03d}" / f"e{(i // dirs) % dirs:03d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i}.bin"
        p.write_bytes(rng.randbytes(rng.randint(0, 2048)))
        out.append(p)
    return out


async def one_size(endpoint: str, tmp: Path, files: int, dirs: int) -> dict[str, Any]:
    base = Config(s3_endpoint=endpoint, bucket="bench", prefix=f"b-{uuid.uuid4().hex[:8]}", owner="bench",
                  cache_dir=tmp / "c1", state_dir=tmp / "s1")
    other = base.replace(cache_dir=tmp / "c2", state_dir=tmp / "s2")
    src, dst = tmp / "src", tmp / "dst"
    paths = make_files(src, files, dirs)
    row: dict[str, Any] = {"files": files}
    async with open_engine(base) as eng:
        t = time.perf_counter()
        await commit(eng, "vol", src)
        row["first_commit_s"] = round(time.perf_counter() - t, 2)
    async with open_engine(other) as eng:
        await hydrate(eng, "vol", dst)
    paths[len(paths) // 2].write_bytes(b"one change")
    async with open_engine(base) as eng:
        eng.counter.reset()
        t = time.perf_counter()
        res = await commit(eng, "vol", src)
        row.update(one_file_commit_s=round(time.perf_counter() - t, 3), one_file_puts=eng.counter.calls["put"],
                   one_file_bytes_up=eng.counter.bytes_out, trees_written=getattr(res, "trees_written", None))
    async with open_engine(other) as eng:
        eng.counter.reset()
        t = time.perf_counter()
        await hydrate(eng, "vol", dst)
        row.update(rehydrate_s=round(time.perf_counter() - t, 3), rehydrate_gets=eng.counter.calls["get"],
                   rehydrate_bytes_in=eng.counter.bytes_in)
        eng.counter.reset()
        head = await eng.repo.head("vol")
        header = getattr(eng.repo, "header", eng.repo.snapshot)
        await header("vol", head.snapshot or "")
        row["info_gets"] = eng.counter.calls["get"]
    return row


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default="2000,10000")
    p.add_argument("--dirs", type=int, default=50, help="directories per level (two levels)")
    args = p.parse_args()
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory() as tmp, SeaweedServer(Path(tmp) / "weed") as server:
        import botocore.session
        botocore.session.get_session().create_client(
            "s3", endpoint_url=server.endpoint, region_name=CREDENTIALS["AWS_REGION"]).create_bucket(Bucket="bench")
        for n in (int(x) for x in args.files.split(",")):
            with tempfile.TemporaryDirectory() as work:
                row = await one_size(server.endpoint, Path(work), n, args.dirs)
            print(json.dumps(row), flush=True)
    print("uptime:", os.getloadavg(), file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
