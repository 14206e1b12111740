"""bench/scale.py runs end to end on a tiny tree (benchmarks are not tests).

What it asserts is structure, not time: every step ran, and a 1-file commit read one file
and uploaded about one file's bytes. restic is left out (--no-restic) to keep this under
~15 s and because CI machines need not have it; the benchmark itself runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = {"first_commit", "one_file_commit", "cold_hydrate", "one_file_rehydrate", "list_root", "agent_write_back"}


def test_scale_bench_runs_on_a_tiny_tree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--tiny", "--no-restic",
                           "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "scale.json").read_text())
    tools = report["sizes"]["300"]
    assert set(tools["syncd"]) == STEPS
    assert all(not step.get("exceeded") and step["rss_mib"] > 0 for step in tools["syncd"].values())
    one = tools["syncd"]["one_file_commit"]
    assert one["files_read"] == 1 and 0 < one["uploaded_bytes"] <= 4096
    assert "restic" not in tools
    agent = tools["syncd"]["agent_write_back"]
    assert agent["watch"]["mode"] == "inotify" and agent["watch"]["scans"] == 1   # noticed without a walk
