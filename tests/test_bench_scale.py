"""bench/scale.py runs end to end on a tiny tree (benchmarks are not tests).

What it asserts is structure, not time: every step ran, a 1-file commit read one file and
uploaded about one file's bytes, a 1-file re-hydrate wrote one file (CLI and agent), the lazy
mount's ``find`` listed every entry, and the real-tree case committed a tree with symlinks
(leaving out the one pointing outside it). restic is left out (--no-restic) to keep this short
and because CI machines need not have it; the benchmark itself runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mountutil import fuse_missing

ROOT = Path(__file__).resolve().parent.parent
STEPS = {"first_commit", "one_file_commit", "cold_hydrate", "one_file_rehydrate", "list_root", "find_cold",
         "find_warm", "agent_mount", "agent_one_file_commit", "agent_one_file_rehydrate"}


def small_real_tree(root: Path) -> Path:
    (root / "a" / "b" / "c").mkdir(parents=True)
    for i in range(20):
        (root / "a" / f"f{i}").write_text(f"{i}\n")
        (root / "a" / "b" / "c" / f"g{i}").write_text(f"{i}{i}\n")
    os.symlink("f1", root / "a" / "inside")
    os.symlink("b/c", root / "a" / "dir-link")
    os.symlink("/etc/hostname", root / "a" / "outside")
    return root


def test_scale_bench_runs_on_a_tiny_tree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    real = small_real_tree(tmp_path / "real")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--tiny", "--no-restic",
                           "--real-tree", str(real), "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "scale.json").read_text())
    tools = report["sizes"]["300"]
    assert "restic" not in tools
    syncd = tools["syncd"]
    assert STEPS <= set(syncd)
    steps = [syncd[s] for s in STEPS if not (fuse_missing() and s.startswith("find"))]
    assert all("seconds" in s and not s.get("exceeded") and not s.get("error") and s["rss_mib"] > 0 for s in steps)
    one = syncd["one_file_commit"]
    assert one["files_read"] == 1 and 0 < one["uploaded_bytes"] <= 4096
    assert syncd["one_file_rehydrate"]["files_written"] == 1
    assert syncd["cold_hydrate"]["entries"] == 300 + 8 + 64   # files, 8 x 8 leaf directories in 8
    agent = syncd["agent_one_file_commit"]
    assert agent["watch"]["mode"] == "inotify" and agent["watch"]["scans"] == 1   # noticed without a walk
    assert syncd["agent_one_file_rehydrate"]["files_written"] == 1
    assert syncd["agent_peak_rss_mib"] > 0
    if not fuse_missing():
        assert syncd["find_cold"]["entries"] == syncd["cold_hydrate"]["entries"]
    shape = report["real"]["shape"]
    assert (shape["files"], shape["dirs"], shape["links"]) == (40, 3, 3)
    commit = report["real"]["syncd"]["first_commit"]
    assert commit["left_out"] == 1 and commit["changed"] == 45       # all but the link pointing outside
    assert report["real"]["syncd"]["cold_hydrate"]["entries"] == 45
    assert "| first commit |" in proc.stdout and "real tree" in proc.stdout


@pytest.mark.skipif(fuse_missing() is not None, reason=fuse_missing() or "")
def test_scale_bench_find_only_repeats_the_find_on_fresh_mounts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--tiny", "--no-restic", "--find-only",
                           "--repeat", "2", "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    syncd = json.loads((out / "scale.json").read_text())["sizes"]["300"]["syncd"]
    assert set(syncd) == {"seed", "find_cold", "find_warm"} and "seconds" in syncd["seed"]
    cold = syncd["find_cold"]
    assert cold["entries"] == 300 + 8 + 64 and cold["median_of"] == 2 and len(cold["runs_s"]) == 2
    assert cold["dirs_listed"] == 1 + 8 + 64                 # a fresh mount each time: every directory listed
    assert "| `find`, lazy mount, cold |" in proc.stdout


def test_hydrates_bench_alternates_fresh_cold_hydrates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "hydrates.py"), "--tiny", "--no-restic",
                           "--repeat", "2", "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "hydrates.json").read_text())["sets"]["300"]
    assert "seconds" in data["seed"]["syncd"] and set(data["runs"]) == {"syncd", "agent"}
    for tool, runs in data["runs"].items():      # each run a whole cold copy, with its CPU
        assert [r["entries"] for r in runs] == [300 + 8 + 64] * 2, tool
        assert all(r["cpu_s"] > 0 and r["rss_mib"] > 0 for r in runs), tool
    assert data["median"]["syncd"]["runs_s"] == [r["seconds"] for r in data["runs"]["syncd"]]
    assert not (tmp_path / "work" / "trash").exists()    # each round's copies are gone when it is over
    assert "| 300 | agent |" in proc.stdout


def test_scale_bench_commit_only_alternates_first_commits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    real = small_real_tree(tmp_path / "real")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--tiny", "--no-restic", "--commit-only",
                           "--repeat", "2", "--real-tree", str(real), "--out", str(out),
                           "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "scale.json").read_text())
    first = report["sizes"]["300"]["syncd"]["first_commit"]
    assert first["files_read"] == 300 and first["median_of"] == 2 and len(first["runs_s"]) == 2
    assert first["cpu_s"] > 0
    real_first = report["real"]["syncd"]["first_commit"]
    assert real_first["changed"] == 45 and real_first["median_of"] == 2
    assert "| first commit |" in proc.stdout
