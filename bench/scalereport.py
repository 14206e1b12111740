"""bench/scale.py's results as Markdown tables: one column pair per size, the ratios, the growth.

A cell is ``seconds, peak RSS, CPU seconds`` (user and system); a ratio is restic's seconds over syncd's, so
above 1.0x syncd is the faster. The agent's rows are compared with restic's
CLI step of the same kind (its incremental backup, its restore after a
backup made elsewhere): restic has no agent. The growth divides each figure
by the one of the previous size.
"""

from __future__ import annotations

import itertools
from typing import Any

STEPS = {
    "first_commit": "first commit",
    "one_file_commit": "1-file commit, CLI",
    "agent_one_file_commit": "1-file commit, agent (write to durable)",
    "cold_hydrate": "cold hydrate",
    "agent_mount": "agent mount (a cold hydrate)",
    "one_file_rehydrate": "1-file re-hydrate, CLI",
    "agent_one_file_rehydrate": "1-file re-hydrate, agent (reload)",
    "list_root": "list the root",
    "find_cold": "`find`, lazy mount, cold",
    "find_warm": "`find`, lazy mount, warm",
}
YARDSTICK = {"agent_one_file_commit": "one_file_commit", "agent_one_file_rehydrate": "one_file_rehydrate",
             "agent_mount": "cold_hydrate"}


def ok(step: dict[str, Any] | None) -> bool:
    return step is not None and bool(step) and not step.get("exceeded") and not step.get("error") and "seconds" in step


def cell(step: dict[str, Any] | None) -> str:
    if not step:
        return "-"
    if step.get("skipped"):
        return "skipped"
    if step.get("error"):
        return f"failed ({str(step['error'])[:40]})"
    if step.get("exceeded"):
        return f"killed at {step['seconds']:.0f} s"
    text = f"{_secs(step['seconds'])}, {step['rss_mib']:.0f} MiB" if step.get("rss_mib") else _secs(step["seconds"])
    if step.get("cpu_s") is not None:
        text += f", {step['cpu_s']:.1f} CPU-s"
    if step.get("uploaded_bytes") is not None:
        text += f", {_bytes(step['uploaded_bytes'])} up"
    if step.get("files_written") is not None:
        text += f", {step['files_written']} written"
    return text


def ratio(syncd: dict[str, Any] | None, restic: dict[str, Any] | None) -> str:
    if not ok(syncd) or not ok(restic) or not syncd or not restic or not syncd["seconds"]:
        return "-"
    return f"{restic['seconds'] / syncd['seconds']:.2f}x"


def show(results: dict[str, Any]) -> list[str]:
    sizes = list(results["sizes"])
    head = ["step"]
    for n in sizes:
        head += [f"{int(n):,} syncd", "restic", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in STEPS.items():
        if not any(key in results["sizes"][n].get("syncd", {}) for n in sizes):
            continue                 # a step this mode does not run (--find-only, --commit-only)
        row = [label]
        for n in sizes:
            tools = results["sizes"][n]
            mine, theirs = tools.get("syncd", {}).get(key), tools.get("restic", {}).get(YARDSTICK.get(key, key))
            row += [cell(mine), cell(theirs) if key not in YARDSTICK else f"({cell(theirs)})", ratio(mine, theirs)]
        lines.append("| " + " | ".join(row) + " |")
    row = ["agent peak RSS"]
    for n in sizes:
        rss = results["sizes"][n].get("syncd", {}).get("agent_peak_rss_mib")
        row += ["-" if rss is None else f"{rss:.0f} MiB", "", ""]
    if any(c not in ("-", "") for c in row[1:]):
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"load (1-minute average at each step's start), {int(n):,} files: " + loads(results["sizes"][n])
                     for n in sizes]
    lines += [""] + results.get("growth", [])
    if "real" in results:
        lines += [""] + show_real(results["real"])
    return lines


def loads(tools: dict[str, Any]) -> str:
    """The lowest and highest load average each tool's steps started at."""
    parts = []
    for tool in ("syncd", "restic"):
        seen = [load for step in tools.get(tool, {}).values() if isinstance(step, dict) and "load" in step
                for load in step.get("runs_load", [step["load"]])]
        if seen:
            parts.append(f"{tool} {min(seen):.1f}-{max(seen):.1f}")
    return ", ".join(parts) or "-"


def show_real(real: dict[str, Any]) -> list[str]:
    s = real["shape"]
    lines = [f"real tree: a copy of {real['source']}: {s['entries']:,} entries ({s['files']:,} files, "
             f"{s['dirs']:,} directories, {s['links']:,} symlinks), {_bytes(s['bytes'])}, {s['depth']} levels", "",
             "| step | syncd | restic | ratio |", "|---|---|---|---|"]
    for key in ("first_commit", "cold_hydrate"):
        mine, theirs = real.get("syncd", {}).get(key), real.get("restic", {}).get(key)
        if mine is None and theirs is None:
            continue                 # not run in this mode (--commit-only)
        lines.append(f"| {STEPS[key]} | {cell(mine)} | {cell(theirs)} | {ratio(mine, theirs)} |")
    lines.append(f"\nload (1-minute average at each step's start): {loads(real)}")
    left_out = (real.get("syncd", {}).get("first_commit") or {}).get("left_out")
    if left_out:
        lines.append(f"\nsyncd left out {left_out} symlink(s) pointing outside the tree")
    return lines


def growth(results: dict[str, Any]) -> list[str]:
    """Per step, seconds and peak RSS at each size over the previous size's."""
    out = []
    for a, b in itertools.pairwise(list(results["sizes"])):
        for tool in ("syncd", "restic"):
            x, y = results["sizes"][a].get(tool, {}), results["sizes"][b].get(tool, {})
            parts = []
            for s in STEPS:
                if ok(x.get(s)) and ok(y.get(s)) and x[s]["seconds"]:
                    rss = f", RSS {y[s]['rss_mib'] / x[s]['rss_mib']:.1f}x" if x[s].get("rss_mib") else ""
                    parts.append(f"{s} {y[s]['seconds'] / x[s]['seconds']:.1f}x{rss}")
            if parts:
                out.append(f"growth {int(a):,} -> {int(b):,} ({int(b) / int(a):.0f}x files), {tool}: "
                           + "; ".join(parts))
    return out


def _secs(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
