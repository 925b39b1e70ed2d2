"""Summaries, ratio judgements, the printed/Markdown tables and the PNG plot."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.env import REPO
from bench.plan import RATIOS, SCALING_ROWS, SCALING_TARGET
from bench.workloads import ROWS

MB = 1024 * 1024

Key = tuple[str, str, int]  # row, workload, n


def summarize(results: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Median over repeats per (row, workload, n); errors and unavailability kept."""
    grouped: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        grouped[(result["row"], result["workload"], result["n"])].append(result)
    summary: dict[Key, dict[str, Any]] = {}
    for key, runs in grouped.items():
        n = key[2]
        good = [r for r in runs if "seconds" in r and r.get("completed") == n]
        entry: dict[str, Any] = {"runs": len(good), "of": len(runs)}
        problems = [r.get("error") or f"{r.get('completed')}/{n} completed" for r in runs
                    if r not in good]
        if problems:
            entry["error"] = problems[0]
        if good:
            seconds = statistics.median(r["seconds"] for r in good)
            entry.update(
                seconds=seconds,
                throughput=n / seconds,
                ms_per_task=1000 * seconds / n,
                cpu_ms_per_task=statistics.median(1000 * r["cpu_seconds"] / n for r in good)
                if all("cpu_seconds" in r for r in good) else (
                    statistics.median(1000 * r["cpu_seconds"] / n for r in good
                                      if "cpu_seconds" in r)
                    if any("cpu_seconds" in r for r in good) else None),
                rss_delta_mb=statistics.median(
                    (r["rss_peak"] - r["rss_base"]) / MB for r in good if "rss_peak" in r
                ) if any("rss_peak" in r for r in good) else None,
                rss_peak_mb=max((r["rss_peak"] / MB for r in good if "rss_peak" in r),
                                default=None),
                spread=(max(r["seconds"] for r in good) - min(r["seconds"] for r in good))
                / seconds if len(good) > 1 else 0.0,
            )
        summary[key] = entry
    return summary


def judge(summary: dict[Key, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every ratio that both sides were measured for, with its target and verdict."""
    verdicts: list[dict[str, Any]] = []
    keys = sorted({(w, n) for (_, w, n) in summary}, key=lambda k: (k[0], k[1]))
    for ratio in RATIOS:
        for workload, n in keys:
            ours = summary.get((ratio.ours, workload, n))
            peer = summary.get((ratio.peer, workload, n))
            if ours is None or peer is None:
                continue
            entry: dict[str, Any] = {"name": ratio.name, "workload": workload, "n": n,
                                     "target": ratio.target, "kind": "throughput"}
            if "throughput" in ours and "throughput" in peer:
                entry["value"] = ours["throughput"] / peer["throughput"]
                entry["met"] = None if ratio.target is None else entry["value"] >= ratio.target
            else:
                entry["value"] = None
                entry["met"] = None
                entry["note"] = ours.get("error") or peer.get("error") or "not measured"
            verdicts.append(entry)
    for row in SCALING_ROWS:
        for workload in ("python", "exec"):
            sizes = sorted(n for (r, w, n), e in summary.items()
                           if r == row and w == workload and "ms_per_task" in e)
            if len(sizes) < 2:
                continue
            small, large = summary[(row, workload, sizes[0])], summary[(row, workload, sizes[-1])]
            value = large["ms_per_task"] / small["ms_per_task"]
            verdicts.append({
                "name": f"{row}: cost/task at {sizes[-1]} / at {sizes[0]}",
                "workload": workload, "n": sizes[-1], "target": SCALING_TARGET,
                "kind": "scaling", "value": value,
                "met": value <= SCALING_TARGET if row.startswith("rhapsody") else None,
            })
    return verdicts


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(
    summary: dict[Key, dict[str, Any]], unavailable: dict[str, str],
    caps: dict[str, tuple[int, str]],
) -> list[list[str]]:
    """Rows of the results table (strings), in plan order."""
    rows: list[list[str]] = []
    order = {row: i for i, row in enumerate(ROWS)}
    for (row, workload, n), entry in sorted(
        summary.items(), key=lambda item: (order.get(item[0][0], 99), item[0][1], item[0][2])
    ):
        note = entry.get("error", "")
        if row in caps and n == caps[row][0]:
            note = (note + "; " if note else "") + f"capped at n={n}: {caps[row][1]}"
        rows.append([
            row, workload, str(n), f"{entry['runs']}/{entry['of']}",
            _fmt(entry.get("seconds"), ".2f"), _fmt(entry.get("throughput"), ".1f"),
            _fmt(entry.get("ms_per_task"), ".2f"), _fmt(entry.get("cpu_ms_per_task"), ".2f"),
            _fmt(entry.get("rss_delta_mb"), ".1f"),
            _fmt(entry.get("rss_peak_mb"), ".0f"), note,
        ])
    for family, reason in unavailable.items():
        rows.append([f"{family} (all rows)", "-", "-", "0/0", "-", "-", "-", "-", "-", "-",
                     f"unavailable: {reason}"])
    return rows


TABLE_HEADER = ["row", "workload", "n", "runs", "median s", "tasks/s", "ms/task",
                "flow CPU ms/task", "flow dRSS MB", "peak RSS MB", "note"]
RATIO_HEADER = ["ratio (ours / peer)", "workload", "n", "value", "target", "verdict"]


def ratio_rows(verdicts: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for v in verdicts:
        if v["target"] is None or v["met"] is None:
            verdict = v.get("note", "info") if v["value"] is None else "info"
        else:
            verdict = "MET" if v["met"] else "MISSED"
        if v["kind"] == "scaling":
            target = f"<= {v['target']:.1f}x"
        else:
            target = "-" if v["target"] is None else f">= {v['target']:.1f}x"
        rows.append([v["name"], v["workload"], str(v["n"]), _fmt(v["value"], ".2f") + "x"
                     if v["value"] is not None else "-", target, verdict])
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def clean(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def plot(summary: dict[Key, dict[str, Any]], verdicts: list[dict[str, Any]], path: Path,
         title: str) -> None:
    """Throughput vs task count per workload, flow-side memory, and the judged ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    sizes = sorted({n for (_, _, n) in summary})

    def size_axis(ax: Any) -> None:
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    styles = {row: ("-" if row.startswith("rhapsody") else "--" if row.startswith("api")
                    else ":") for row in ROWS}
    for ax, workload in zip(axes[0], ("python", "exec"), strict=True):
        for row in ROWS:
            points = sorted((n, e["throughput"]) for (r, w, n), e in summary.items()
                            if r == row and w == workload and "throughput" in e)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, styles[row], marker="o", label=row)
        size_axis(ax)
        ax.set_yscale("log")
        ax.set_xlabel("tasks per flow")
        ax.set_ylabel("tasks/s (timed window, median)")
        ax.set_title(f"Throughput, {workload} tasks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[1][0]
    for row in ROWS:
        points = sorted((n, e["rss_delta_mb"]) for (r, w, n), e in summary.items()
                        if r == row and w == "python" and "rss_delta_mb" in e)
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, styles[row], marker="o", label=row)
    size_axis(ax)
    ax.set_xlabel("tasks per flow")
    ax.set_ylabel("peak RSS growth in the timed window, MB")
    ax.set_title("Flow-side memory, python tasks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1][1]
    judged = [v for v in verdicts if v["met"] is not None]
    labels = [f"{v['name']}\n{v['workload']} n={v['n']}" for v in judged]
    values = [v["value"] for v in judged]
    colors = ["tab:green" if v["met"] else "tab:red" for v in judged]
    ax.barh(range(len(values)), values, color=colors)
    for i, v in enumerate(judged):
        ax.plot([v["target"], v["target"]], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.set_yticks(range(len(values)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio (black bar: target; throughput ratios >= target, cost ratios <= it)")
    ax.set_title("Judged ratios (green met, red missed)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replace_section(text: str, out: Path, begin: str, end: str, copy: Path) -> None:
    """Put a section (`text`, from its `begin` to its `end` marker) into out/benchmarks.md,
    in place of the old one or appended; for docs/, also into `copy`, the file
    `bench/run.py` includes when it rewrites benchmarks.md."""
    if out.resolve() == (REPO / "docs").resolve():
        copy.write_text(text)
    target = out / "benchmarks.md"
    current = target.read_text() if target.exists() else ""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end) + "\n?", re.DOTALL)
    if pattern.search(current):
        current = pattern.sub(lambda _: text, current)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    out.mkdir(parents=True, exist_ok=True)
    target.write_text(current)
