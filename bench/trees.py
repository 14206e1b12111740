"""Tree encode and decode per entry: a micro-benchmark of syncd against itself.

This compares syncd's tree codec (syncd/format/tree.py) with an earlier
version of itself, not with a competitor, so it runs no server and no peer:
it builds trees the shape of a first commit (directories of small packed
files, a few subdirectories and symlinks, some names that are not UTF-8) and
times, per entry, median of ``--repeat`` runs:

* ``encode``: ``encode_tree`` (canonical bytes and id) of the items;
* ``decode``: ``decode_tree`` of the stored form (inflate, verify the id,
  strict parse with the canonical check, validate every entry, build the
  items), the cold path of a lazy mount's ``find``;
* ``parse``: ``parse_tree`` alone (what a tree from the disk cache costs);
* ``pack``: zlib of the canonical bytes (``pack_tree``), for scale.

    python bench/trees.py                    # 100 trees of 1,000 entries
    python bench/trees.py --entries 100 --trees 1000 --repeat 7
    py-spy record -o prof.txt -f raw -- python bench/trees.py --loop 20   # a profile of decode + encode

Results are JSON (microseconds per entry); ``--out`` also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncd.format.chunking import content_id
from syncd.format.manifest import ChunkRef, Entry, Stats, TreeRef
from syncd.format.tree import TreeItem, decode_tree, encode_tree, pack_tree, parse_tree


def make_items(n: int, seed: int) -> list[TreeItem]:
    """``n`` items like a first commit's directory: mostly small packed files, some dirs and links."""
    pack = content_id(f"pack{seed}".encode())
    items: list[TreeItem] = []
    for i in range(n):
        name = f"f{seed:04d}-{i:06d}.txt" if i % 97 else os.fsdecode(b"raw\xff" + str(i).encode())
        mtime = 1_764_071_100_000_000_000 + i * 1_000_003
        if i % 50 == 1:
            ref = TreeRef(content_id(f"t{seed}/{i}".encode()), pack, i * 400, 400)
            items.append(TreeItem(Entry(f"d{seed}-{i}", "dir", 0o755, mtime), ref, Stats(10, 1, 12345, 0)))
        elif i % 200 == 3:
            items.append(TreeItem(Entry(name + ".lnk", "symlink", 0o777, mtime, target=f"../x/{i}")))
        else:
            size = 100 + i % 1900
            chunk = ChunkRef(content_id(f"{seed}/{i}".encode()), size, pack, i * 2048)
            items.append(TreeItem(Entry(name, "file", 0o644, mtime, size, (chunk,))))
    return items


def timed(fn: Any, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def bench(entries: int, trees: int, repeat: int) -> dict[str, Any]:
    dirs = [make_items(entries, s) for s in range(trees)]
    encoded = [encode_tree(items) for items in dirs]
    stored = [(tid, pack_tree(data)) for tid, data in encoded]
    total = entries * trees

    def per_entry(seconds: float) -> float:
        return round(seconds / total * 1e6, 3)

    return {
        "entries_per_tree": entries, "trees": trees, "repeat": repeat,
        "canonical_bytes_per_entry": round(sum(len(d) for _, d in encoded) / total, 1),
        "encode_us_per_entry": per_entry(timed(lambda: [encode_tree(d) for d in dirs], repeat)),
        "decode_us_per_entry": per_entry(timed(lambda: [decode_tree(s, i) for i, s in stored], repeat)),
        "parse_us_per_entry": per_entry(timed(lambda: [parse_tree(d, i) for i, d in encoded], repeat)),
        "pack_us_per_entry": per_entry(timed(lambda: [pack_tree(d) for _, d in encoded], repeat)),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=1000, help="entries per tree")
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default=None)
    p.add_argument("--loop", type=float, default=0.0, help="decode for this many seconds (for a profiler)")
    args = p.parse_args()
    if args.loop:
        dirs = [make_items(args.entries, s) for s in range(args.trees)]
        stored = [(tid, pack_tree(data)) for tid, data in (encode_tree(d) for d in dirs)]
        end = time.monotonic() + args.loop
        while time.monotonic() < end:
            for tid, blob in stored:
                decode_tree(blob, tid)
            for d in dirs:
                encode_tree(d)
        return
    result = bench(args.entries, args.trees, args.repeat)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
