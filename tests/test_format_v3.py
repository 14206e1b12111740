"""docs/FORMAT.md's cut-point rule (section 4, appendix A), run as written, cuts as syncd's Chunker does.

The cut function is implemented here from the document's pseudo-code and tables alone
(pure Python), so another writer following the document produces the same chunks as
syncd, and so shares them.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from syncd.format.chunking import Chunker

DOC = (Path(__file__).parent.parent / "docs" / "FORMAT.md").read_text()
U64 = (1 << 64) - 1


def _table(title: str) -> list[int]:
    block = DOC.split(title, 1)[1].split("```", 2)[1]
    return [int(x, 16) for x in re.findall(r"[0-9a-f]{16}", block)]


MASKS = _table("`MASKS[b]`")
GEAR = _table("`GEAR[x]`")
GEAR_LS = [(g << 1) & U64 for g in GEAR]


def cut(b: bytes, n: int, avg: int) -> int:
    lo, hi = avg // 4, avg * 4
    if n <= lo:
        return n
    center = avg
    if n > hi:
        n = hi
    elif n < center:
        center = n
    bits = math.floor(math.log2(avg) + 0.5)
    mask_s, mask_l = MASKS[bits + 1], MASKS[bits - 1]
    h = 0
    for start, stop, mask in ((lo // 2 * 2, center // 2 * 2, mask_s), (center // 2 * 2, n // 2 * 2, mask_l)):
        for i in range(start, stop, 2):
            h = ((h << 2) + GEAR_LS[b[i]]) & U64
            if h & (mask << 1) == 0:
                return i
            h = (h + GEAR[b[i + 1]]) & U64
            if h & mask == 0:
                return i + 1
    return n


def test_the_documented_cut_points_are_the_chunkers() -> None:
    assert len(MASKS) == 26 and len(GEAR) == 256
    avg = 64 * 1024
    data = os.urandom(1536 * 1024) + bytes(300 * 1024) + os.urandom(200 * 1024)   # zeros: forced max cuts
    ours, at = [], 0
    while at < len(data):
        length = cut(data[at:], len(data) - at, avg)
        ours.append(length)
        at += length
    assert ours == Chunker(avg, threshold=0).cut(memoryview(data), eof=True)
    assert len(ours) > 10 and max(ours) == 4 * avg
