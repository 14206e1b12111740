"""Summaries of the runs: medians, ratios, the terminal table, the JSON file and the chart.

Ratios are throughput ratios, syncd / competitor, computed from median wall
times over the same bytes: above 1.0 syncd is faster. CPU is user+system
seconds of the tool's whole process tree per GiB moved (in seconds, in
parentheses, where no bytes are counted: start-up); the S3 server's CPU
is shown apart, as it is shared by all.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from harness import Run
from scenarios import Scenario

GiB = 1 << 30
MiB = 1 << 20


def summarize(runs: list[Run]) -> dict[str, Any]:
    wall = statistics.median(r.wall for r in runs)
    nbytes = runs[0].nbytes
    out: dict[str, Any] = {
        "reps": len(runs),
        "median_s": round(wall, 4),
        "min_s": round(min(r.wall for r in runs), 4),
        "max_s": round(max(r.wall for r in runs), 4),
        "bytes": nbytes,
        "mib_per_s": round(nbytes / MiB / wall, 2) if wall else None,
        "cpu_s": round(statistics.median(r.cpu for r in runs), 3),
        "cpu_s_per_gib": round(statistics.median(r.cpu for r in runs) / (nbytes / GiB), 3) if nbytes else None,
        "peak_rss_mib": round(max(r.rss_kib for r in runs) / 1024, 1),
        "server_cpu_s": round(statistics.median(r.server_cpu for r in runs), 3),
        "walls": [round(r.wall, 4) for r in runs],
    }
    for key in ("uploaded_bytes", "uploaded_chunks", "origin_bytes"):
        values = [r.extra[key] for r in runs if r.extra.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def scenario_summary(scenario: Scenario, runs: dict[str, list[Run]]) -> dict[str, Any]:
    tools = {tool: summarize(rs) for tool, rs in runs.items() if rs}
    ours = tools.get("syncd")
    ratios = {}
    if ours:
        for tool, s in tools.items():
            if not tool.startswith("syncd"):
                ratios[tool] = round(s["median_s"] / ours["median_s"], 3)
    agent = tools.get("syncd agent")
    if agent:  # the agent path against the same competitors (no process start-up)
        agent_ratios = {tool: round(s["median_s"] / agent["median_s"], 3) for tool, s in tools.items()
                        if not tool.startswith("syncd")}
    summary: dict[str, Any] = {"title": scenario.title, "baseline": scenario.baseline,
                               "target": scenario.target, "note": scenario.note,
                               "tools": tools, "throughput_ratio_syncd_over": ratios}
    if agent:
        summary["throughput_ratio_agent_over"] = agent_ratios
    if scenario.max_overhead_s is not None and ours and scenario.baseline in tools:
        summary["overhead_s"] = round(ours["median_s"] - tools[scenario.baseline]["median_s"], 3)
        summary["target"] = f"<= +{scenario.max_overhead_s} s"
        summary["target_met"] = summary["overhead_s"] <= scenario.max_overhead_s
    elif scenario.max_chunks is not None and ours and ours.get("uploaded_chunks") is not None:
        summary["target"] = f"<= {scenario.max_chunks} chunks"
        summary["target_met"] = ours["uploaded_chunks"] <= scenario.max_chunks
    elif scenario.baseline in ratios and scenario.target is not None:
        summary["target_met"] = ratios[scenario.baseline] >= scenario.target
    if scenario.baseline in ratios:
        base = tools[scenario.baseline].get("cpu_s_per_gib")
        if ours and base and ours.get("cpu_s_per_gib") is not None:
            summary["cpu_ratio_syncd_over_baseline"] = round(ours["cpu_s_per_gib"] / base, 3)
        if agent and base and agent.get("cpu_s_per_gib") is not None:
            summary["cpu_ratio_agent_over_baseline"] = round(agent["cpu_s_per_gib"] / base, 3)
    return summary


def write_json(path: Path, meta: dict[str, Any], results: dict[str, Any],
               fanout: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"meta": meta, "scenarios": results}
    if fanout is not None:
        doc["fanout"] = fanout
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def print_fanout(fanout: dict[str, Any] | None) -> None:
    if not fanout:
        return
    if "modes" not in fanout:
        print(f"fanout: failed: {fanout.get('error', '')[-300:]}")
        return
    print(f"fanout ({fanout['workers']} workers, {fanout['volume_bytes'] >> 20} MiB volume, "
          f"medians of {fanout['reps']}):")
    for mode, m in fanout["modes"].items():
        print(f"  {mode:15} wall {m['wall_s_median']:7.3f} s  origin {m['origin_ratio_median']:.2f}x the volume"
              f"  identical: {m['all_identical']}")


def print_table(meta: dict[str, Any], results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"syncd benchmarks ({meta['mode']}, {meta['reps']} reps, medians; "
                        f"load {meta['load_before']})", show_lines=False)
    for col in ("scenario", "tool", "median s", "MiB/s", "syncd/tool", "target (CPU syncd/tool)", "CPU s/GiB",
                "peak RSS MiB", "server CPU s", "uploaded / origin"):
        table.add_column(col, justify="left" if col in ("scenario", "tool") else "right")
    for name, res in results.items():
        first = True
        for tool, s in res["tools"].items():
            ratio = res["throughput_ratio_syncd_over"].get(tool)
            target = ""
            agent = res.get("throughput_ratio_agent_over", {})
            if tool == "syncd agent" and res["baseline"] in agent:
                target = f"agent/{res['baseline']} {agent[res['baseline']]:.2f}x"
                if res.get("cpu_ratio_agent_over_baseline") is not None:
                    target += f", CPU {res['cpu_ratio_agent_over_baseline']:.1f}x"
            if tool == "syncd" and res.get("overhead_s") is not None:
                target = f"+{res['overhead_s']:.3f} s {_target(res['target'])} {'ok' if res.get('target_met') else 'MISSED'}"
            elif tool == res["baseline"] and res["target"] is not None and res.get("overhead_s") is None:
                ok = res.get("target_met")
                target = f"{_target(res['target'])} {'ok' if ok else 'MISSED'}"
                if res.get("cpu_ratio_syncd_over_baseline") is not None:
                    target += f", CPU {res['cpu_ratio_syncd_over_baseline']:.1f}x"
            table.add_row(name if first else "", tool, f"{s['median_s']:.3f}",
                          f"{s['mib_per_s']:.0f}" if s["mib_per_s"] else "-",
                          f"{ratio:.2f}x" if ratio else "", target,
                          f"{s['cpu_s_per_gib']:.2f}" if s["cpu_s_per_gib"] is not None else f"({s['cpu_s']:.3f} s)",
                          f"{s['peak_rss_mib']:.0f}", f"{s['server_cpu_s']:.2f}",
                          _moved(s))
            first = False
    Console(width=170).print(table)
    print("syncd/tool = throughput of syncd divided by throughput of tool (above 1 = syncd faster)")
    if meta.get("syncd_startup_s") is not None:
        print(f"syncd process start-up (interpreter + imports, fastest of 5; included above): "
              f"{meta['syncd_startup_s']:.3f} s")


def _target(target: Any) -> str:
    return target if isinstance(target, str) else f">= {target:g}x"


def _moved(s: dict[str, Any]) -> str:
    """Uploaded bytes (and chunks) for commits, bytes read from the store for fan-out."""
    text = _size(s.get("uploaded_bytes"))
    if s.get("uploaded_chunks") is not None:
        text += f" ({s['uploaded_chunks']:g} chunks)"
    if s.get("origin_bytes") is not None:
        text += f"origin {_size(s['origin_bytes'])}"
    return text


def _size(n: Any) -> str:
    if n is None:
        return ""
    return f"{n / MiB:.1f} MiB"


def chart(path: Path, meta: dict[str, Any], results: dict[str, Any]) -> bool:
    """The ratios as a bar chart; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    palette = {"s5cmd": "#1f77b4", "aws": "#ff7f0e", "boto3": "#2ca02c", "cp -r": "#7f7f7f",
               "restic": "#8c564b", "rclone": "#e377c2"}
    targets = []
    for name, res in results.items():
        for tool, ratio in res["throughput_ratio_syncd_over"].items():
            labels.append(f"{name}\nvs {tool}")
            values.append(ratio)
            colors.append(palette.get(tool, "#9467bd"))
            target = res["target"] if tool == res["baseline"] else None
            targets.append(target if isinstance(target, (int, float)) else None)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    ys = range(len(labels))
    ax.barh(list(ys), values, color=colors)
    for y, v, t in zip(ys, values, targets):
        ax.text(v, y, f" {v:.2f}x", va="center", fontsize=8)
        if t is not None:
            ax.plot([t, t], [y - 0.4, y + 0.4], color="red", linewidth=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("throughput ratio syncd / competitor (log scale; > 1 = syncd faster; red = target)")
    ax.set_title(f"syncd vs competitors ({meta['mode']}, median of {meta['reps']}, {meta['date']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(meta: dict[str, Any], results: dict[str, Any]) -> str:
    """The results as a Markdown table (for docs/BENCHMARKS.md): ``python bench/report.py bench.json``."""
    lines = [f"{meta['mode']} run, {meta['date']}, {meta['reps']} repetitions (medians), {meta['cpus']} CPUs, "
             f"load average {meta['load_before']} before / {meta.get('load_after', '?')} after; "
             f"syncd process start-up {meta.get('syncd_startup_s', '?')} s.", "",
             "| scenario | tool | median s | MiB/s | syncd/tool | target | CPU s/GiB | peak RSS MiB | uploaded / origin |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for name, res in results.items():
        for tool, s in res["tools"].items():
            ratio = res["throughput_ratio_syncd_over"].get(tool)
            target = ""
            agent = res.get("throughput_ratio_agent_over", {})
            if tool == "syncd agent" and res["baseline"] in agent:
                target = f"agent/{res['baseline']} {agent[res['baseline']]:.2f}x"
                if res.get("cpu_ratio_agent_over_baseline") is not None:
                    target += f"; agent CPU/GiB {res['cpu_ratio_agent_over_baseline']:.2f}x"
            if tool == "syncd" and res.get("overhead_s") is not None:
                target = f"+{res['overhead_s']:.3f} s, {_target(res['target'])}: {'met' if res.get('target_met') else 'missed'}"
            elif tool == res["baseline"] and res["target"] is not None and res.get("overhead_s") is None:
                target = f"{_target(res['target'])}: {'met' if res.get('target_met') else 'missed'}"
                if res.get("cpu_ratio_syncd_over_baseline") is not None:
                    target += f"; syncd CPU/GiB {res['cpu_ratio_syncd_over_baseline']:.2f}x"
            uploaded = _moved(s)
            lines.append(f"| {name} | {tool} | {s['median_s']:.3f} | {s['mib_per_s'] or 0:.0f} | "
                         f"{f'{ratio:.2f}x' if ratio else ''} | {target} | "
                         f"{s['cpu_s_per_gib'] if s['cpu_s_per_gib'] is not None else '(' + str(s['cpu_s']) + ' s)'} | "
                         f"{s['peak_rss_mib']:.0f} | {uploaded} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    doc = json.loads(Path(sys.argv[1]).read_text())
    print(markdown(doc["meta"], doc["scenarios"]))
    if "modes" in doc.get("fanout", {}):
        f = doc["fanout"]
        print(f"\nfanout.py: {f['workers']} workers, {f['volume_bytes'] >> 20} MiB volume, medians of {f['reps']}\n")
        print("| mode | wall s | origin / volume | identical |\n| --- | ---: | ---: | --- |")
        for mode, m in f["modes"].items():
            print(f"| {mode} | {m['wall_s_median']:.3f} | {m['origin_ratio_median']:.2f}x | {m['all_identical']} |")
    if len(sys.argv) > 2:  # python bench/report.py bench.json chart.png: redraw the chart
        chart(Path(sys.argv[2]), doc["meta"], doc["scenarios"])
