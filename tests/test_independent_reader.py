"""A second implementation, written from docs/FORMAT.md alone, reads volumes syncd wrote.

tests/independent_reader/reader.py imports nothing of syncd (stdlib, xxhash,
botocore). It runs as its own process, so nothing of syncd can be loaded into
it by accident, against a v2 volume with two snapshots (nested directories, a
multi-chunk file, packed small files, an empty file, symlinks, a name that is
not UTF-8) and against a v1 volume, and must reproduce every file byte for
byte, every mode and the files' mtimes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.wiring import open_engine

from .test_v2 import write_v1
from .treeutil import make_tree, mtimes, snapshot_tree

READER = Path(__file__).parent / "independent_reader" / "reader.py"


def run_reader(config: Config, volume: str, out: Path, snapshot: str | None = None) -> dict[str, object]:
    args = [sys.executable, "-I", str(READER), "--endpoint", config.s3_endpoint or "", "--bucket", config.bucket,
            "--prefix", config.prefix, "--owner", config.owner, volume, str(out)]
    if snapshot:
        args += ["--snapshot", snapshot]
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def test_independent_reader_reproduces_v2_and_v1_volumes(config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=25, large_size=2 * 1024 * 1024 + 3)     # 3 chunks of 1 MiB
    (src / os.fsdecode(b"caf\xe9")).write_bytes(b"not utf-8")
    (src / "rows.jsonl").write_bytes(b"".join(b'{"row": %d, "name": "user%d"}\n' % (i, i % 97)
                                              for i in range(60_000)))          # compressed chunks (format 3)
    (src / "data" / "d0" / "deep" / "deeper").mkdir(parents=True)
    (src / "data" / "d0" / "deep" / "deeper" / "x.bin").write_bytes(os.urandom(5000))
    async with open_engine(config) as eng:
        first = await commit(eng, "vol", src)
        snap = await eng.repo.snapshot("vol", first.snapshot or "")
        assert any(c.stored for c in snap.entries["rows.jsonl"].chunks)     # the reader meets zstd frames
        before = snapshot_tree(src)
        (src / "data" / "d1" / "f1.txt").write_text("second snapshot\n")
        await commit(eng, "vol", src)
        await write_v1(eng, "old", src)

    out = tmp_path / "out"
    run_reader(config, "vol", out)
    assert snapshot_tree(out) == snapshot_tree(src)
    assert mtimes(out) == mtimes(src)
    older = tmp_path / "older"
    run_reader(config, "vol", older, first.snapshot)
    assert snapshot_tree(older) == before
    v1 = tmp_path / "v1"
    run_reader(config, "old", v1)
    assert snapshot_tree(v1) == snapshot_tree(src)
    imports = [line for line in READER.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert imports and not [line for line in imports if "syncd" in line or "gateway" in line]
