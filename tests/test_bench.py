"""bench/run.py runs end to end on tiny data and reports every scenario (benchmarks are not tests).

Not marked slow on purpose: it is the suite's only check that the benchmark still runs (~20 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"hydrate_large", "hydrate_small", "warm_large", "warm_small", "commit_large", "commit_incr",
             "readers", "readers_shared", "startup"}


def test_bench_runs_on_tiny_data(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--tools", "s5cmd",
                           "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert SCENARIOS <= set(report["scenarios"])
    for name in SCENARIOS:
        tools = report["scenarios"][name]["tools"]
        assert tools["syncd"]["median_s"] > 0
        assert len(tools) >= 2, name                    # syncd and at least one competitor
    for name, res in report["scenarios"].items():   # CPU per GiB for every contender that moved bytes
        assert all(t["cpu_s_per_gib"] is not None for t in res["tools"].values() if t["bytes"]), name
    assert report["scenarios"]["startup"]["overhead_s"] is not None
    incr = report["scenarios"]["commit_incr"]["tools"]["syncd"]
    assert incr["uploaded_chunks"] <= 6              # a 1 MiB edit: ~2 chunks of 512 KiB and one at each end
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "bench.png").exists()
    else:
        assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "work").exists()             # scratch removed, server stopped
