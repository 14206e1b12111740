"""How many bytes an edit re-uploads, by average chunk size (no server: pure chunking).

    python bench/cdcsweep.py [--mib 120] [--trials 12] [--averages 256,512,1024,2048]

A random file is cut by syncd's Chunker (FastCDC, min = avg / 4, max = avg * 4); then, at
``--trials`` random positions, 1 MiB is overwritten or one byte inserted, the file cut again,
and the bytes of the chunks that are new are counted: what a commit would upload. Prints the
median and worst case per average, and the cutting speed. docs/FORMAT.md section 14 and
docs/BENCHMARKS.md ("Issue 21") quote it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncd.format.chunking import Chunker, content_id

MiB = 1 << 20


def new_bytes(chunker: Chunker, data: bytes | bytearray, known: set[str]) -> int:
    view, at, added = memoryview(data), 0, 0
    for length in chunker.cut(view, eof=True):
        if content_id(view[at:at + length]) not in known:
            added += length
        at += length
    return added


def ids(chunker: Chunker, data: bytes | bytearray) -> set[str]:
    view, at, out = memoryview(data), 0, set()
    for length in chunker.cut(view, eof=True):
        out.add(content_id(view[at:at + length]))
        at += length
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=120)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--averages", default="256,512,1024,2048", help="KiB")
    args = ap.parse_args()
    data = bytearray(os.urandom(args.mib * MiB))
    rng = random.Random(1)
    print(f"# {args.mib} MiB random file, {args.trials} positions, load {os.getloadavg()[0]:.1f}")
    for kib in (int(a) for a in args.averages.split(",")):
        chunker = Chunker(kib << 10, threshold=0)
        start = time.perf_counter()
        known = ids(chunker, data)
        speed = len(data) / MiB / (time.perf_counter() - start)
        over, ins = [], []
        for _ in range(args.trials):
            at = rng.randrange(MiB, len(data) - 2 * MiB)
            edited = bytearray(data)
            edited[at:at + MiB] = os.urandom(MiB)
            over.append(new_bytes(chunker, edited, known))
            edited = bytearray(data)
            edited[at:at] = b"x"
            ins.append(new_bytes(chunker, edited, known))
        print(f"avg {kib:5d} KiB: {len(known):5d} chunks; 1 MiB overwrite median {statistics.median(over) / MiB:.2f} "
              f"worst {max(over) / MiB:.2f} MiB; 1-byte insert median {statistics.median(ins) / MiB:.2f} "
              f"worst {max(ins) / MiB:.2f} MiB; cut+hash {speed:.0f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
