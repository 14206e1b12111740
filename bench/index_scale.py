"""The local index alone at scale: first save, load, a 1-row save, peak RSS (no server).

    python bench/index_scale.py 100000 1000000

Rows look like a volume of small files (one chunk each, in packs). Prints one line per size.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

from syncd.format.manifest import ChunkRef, Entry
from syncd.local.index import IndexStore, LocalIndex, Tracked


def tracked(i: int, size: int) -> Tracked:
    path = f"d{i % 100:03d}/e{i // 100 % 100:03d}/f{i:07d}.bin"
    ref = ChunkRef(f"{i:032x}", size, f"{i // 4000:032x}", (i % 4000) * 1024)
    return Tracked(Entry(path, "file", 0o644, 1_700_000_000_000_000_000 + i, size, (ref,)),
                   (1000 + i, size, 1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i))


async def measure(n: int, state: Path) -> str:
    files = {t.entry.path: t for t in (tracked(i, i % 2048) for i in range(n))}
    store = IndexStore(state, "bench|scale|me")
    directory = state / f"dir{n}"
    t0 = time.perf_counter()
    await store.save("v", directory, LocalIndex("s1", 1, files))
    t1 = time.perf_counter()
    cold = IndexStore(state, "bench|scale|me")          # another process: nothing in memory
    index = await cold.load("v", directory)
    t2 = time.perf_counter()
    first = next(iter(index.files))
    index.files[first] = tracked(0, 7)
    await cold.save("v", directory, index)
    t3 = time.perf_counter()
    await cold.update("v", directory, "s3", 3, {first: tracked(0, 9)})
    t4 = time.perf_counter()
    size = sum(p.stat().st_size for p in (state / "index").glob("index.sqlite3*"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"{n:>9} rows: first save {t1 - t0:6.2f}s  load {t2 - t1:6.2f}s  1-row save {t3 - t2:6.2f}s  "
            f"1-row update {t4 - t3:6.3f}s  db {size / 2**20:6.1f} MiB  peak RSS {rss:6.0f} MiB")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, sys.argv[1:] or ["100000"]):
            print(asyncio.run(measure(n, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
