"""The "Slurm" section of docs/benchmarks.md from `bench/slurm.py`'s results.

    from bench.slurm_report import section, write_docs
    write_docs(section(results, n=200, repeats=3, meta=meta), Path("docs"))

Rows, layouts and the cluster's shape are defined here, so that the measuring
script and the report agree on them; a ratio is always of two rows measured in
the same repeat (see `paired_ratio`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.report import replace_section

SECTION = Path(__file__).resolve().parent / "slurm_section.md"
#: Hand-written findings, included at the end of the section.
FINDINGS = Path(__file__).resolve().parent / "slurm_findings.md"
BEGIN, END = "<!-- slurm-bench:begin -->", "<!-- slurm-bench:end -->"
ROWS = ("rhapsody-rp", "raw-rp", "api-rp")
#: `--ensemble N`: N members in ONE task run (`ensemble_map`) against raw RP, same pilot.
ENSEMBLE_ROWS = ("ensemble-rp", "raw-rp")
GROUPS = {"tasks": ROWS, "ensemble": ENSEMBLE_ROWS}
NODES, CPUS = 2, 2
LAYOUTS = ("login", "shared")
#: The CPU that plays the login node in the `login` layout; the others are the compute nodes.
LOGIN_CPU = 0



def paired_ratio(results: list[dict[str, Any]], n: int, ours: str, peer: str) -> list[float]:
    """ours / peer per repeat: the two ran next to each other (raw RP runs between the
    others in every repeat), so they saw about the same load on a shared machine."""
    ratios = []
    for repeat in sorted({r["repeat"] for r in results}):
        pair = {r["row"]: r for r in results if r["repeat"] == repeat and "seconds" in r
                and r.get("completed") == n}
        if ours in pair and peer in pair:
            ratios.append(pair[peer]["seconds"] / pair[ours]["seconds"])
    return ratios


def summarize(results: list[dict[str, Any]], n: int,
              rows: tuple[str, ...] = ROWS) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for row in rows:
        done = [r for r in results if r["row"] == row and "seconds" in r
                and r.get("completed") == n]
        rates = [n / r["seconds"] for r in done]
        cpu = [1000 * r["cpu_seconds"] / n for r in done if r.get("cpu_seconds") is not None]
        active = [r["active_seconds"] for r in done if r.get("active_seconds") is not None]
        summary[row] = {
            "runs": len(done), "rates": rates, "loads": [r.get("load") for r in done],
            "rate": statistics.median(rates) if rates else None,
            "active": statistics.median(active) if active else None,
            "cpu_ms": statistics.median(cpu) if cpu else None,
            "active_all": active,
            "errors": [r["error"] for r in results if r["row"] == row and "error" in r],
        }
    return summary


LAYOUT_TEXT = {
    "login": ("Login node and compute nodes",
              f"the flow, its Prefect server and RADICAL-Pilot's client on CPU {LOGIN_CPU} "
              "(the login node); the Slurm daemons, and so the pilot's agent and every "
              "`srun` step, on the other CPU (the compute nodes: "
              "`slurm-cluster.sh --cpu-list`), as on an HPC site"),
    "shared": ("Everything on both CPUs",
               "the flow, its Prefect server, the Slurm daemons, the agent and the `srun` "
               "steps share both CPUs, as when a flow runs on the machine that runs its "
               "tasks"),
}


def of_layout(results: list[dict[str, Any]], layout: str,
              group: str = "tasks") -> list[dict[str, Any]]:
    """The results of one layout and group (runs from before layouts and groups existed
    were `shared` and `tasks`)."""
    return [r for r in results
            if r.get("layout", "shared") == layout and r.get("group", "tasks") == group]


WHAT = {"rhapsody-rp": 'Prefect flow, a task run per executable, `RhapsodyRunner("radical_pilot")`',
        "ensemble-rp": "Prefect flow, ONE task run: `ensemble_map` of an `executable_task`",
        "raw-rp": "raw RADICAL-Pilot (Session, PilotManager, TaskManager)",
        "api-rp": 'RHAPSODY API, `get_backend("radical_pilot")`'}


def ratio_text(measured: list[dict[str, Any]], n: int, ours: str, peer: str,
               target: float | None = None) -> str:
    """`0.95x (per repeat: ...)`, and the verdict against `target`."""
    pairs = paired_ratio(measured, n, ours, peer)
    if not pairs:
        return "n/a"
    each = ", ".join(f"{p:.2f}" for p in pairs)
    text = f"{statistics.median(pairs):.2f}x (per repeat: {each})"
    if target is not None:
        met = "meets" if statistics.median(pairs) >= target else "misses"
        text += f" (target >= {target}x: {met})"
    return text


def table(measured: list[dict[str, Any]], n: int, rows: tuple[str, ...]) -> list[str]:
    lines = ["| row | what | executables/s (median) | runs: tasks/s (load average) "
             "| flow CPU ms/task (median) | submit -> pilot active (median) |",
             "|---|---|---|---|---|---|"]
    summary = summarize(measured, n, rows)
    for row in rows:
        entry = summary[row]
        runs = ", ".join(f"{r:.2f}" + (f" ({load})" if load is not None else "")
                         for r, load in zip(entry["rates"], entry["loads"], strict=True))
        runs = runs or "; ".join(entry["errors"])[:200]
        shown = f"{entry['rate']:.2f}" if entry["rate"] else "-"
        cpu = f"{entry['cpu_ms']:.1f}" if entry["cpu_ms"] is not None else "-"
        active = f"{entry['active']:.1f} s" if entry["active"] is not None else "-"
        lines.append(f"| `{row}` | {WHAT[row]} | {shown} | {runs} | {cpu} | {active} |")
    return lines


def section(results: list[dict[str, Any]], n: int, repeats: int, meta: dict[str, Any]) -> str:
    members, member_repeats = meta.get("ensemble", 0), meta.get("ensemble_repeats", 0)
    lines = [
        BEGIN,
        "## Slurm: executables through a pilot on a real Slurm cluster",
        "",
        f"Measured {meta['measured_at']} by `bench/slurm.py` (load average {meta['load']}): "
        f"a local Slurm cluster of {NODES} nodes x {CPUS} CPUs (`scripts/slurm-cluster.sh`, "
        "Slurm 22.05, all nodes this machine), one RADICAL-Pilot pilot of both nodes (one "
        f"`sbatch` job, {NODES * CPUS} cores, no raptor) per measurement, from the same inline "
        f"resource config; a warm-up task, then {n} x `/bin/true`, each launched by the agent "
        f"with `srun`, submitted at once; {repeats} repeat(s) per layout"
        + (f", and {members} members through `ensemble_map` against {members} raw RP tasks, "
           f"{member_repeats} repeat(s)" if members else "")
        + ". Rows alternate (raw RP always between the others); a ratio is the median over "
        "repeats of the two rows' rates in the same repeat, which saw about the same load. "
        "Each layout has a Slurm cluster and a Prefect server of its own.",
    ]
    for layout in LAYOUTS:
        measured = of_layout(results, layout)
        ensemble = of_layout(results, layout, "ensemble")
        if not measured and not ensemble:
            continue
        title, where = LAYOUT_TEXT[layout]
        judged = 0.9 if layout == "login" else None
        lines += ["", f"### {title} (`--layout {layout}`)", "", f"{where[0].upper()}{where[1:]}."]
        if measured:
            lines += [
                "",
                f"**One task run per executable, RhapsodyRunner / raw RADICAL-Pilot: "
                f"{ratio_text(measured, n, 'rhapsody-rp', 'raw-rp', judged)}**"
                + ("" if judged else " (the 0.9x target is judged on the login-node layout)")
                + f"; RHAPSODY API / raw: {ratio_text(measured, n, 'api-rp', 'raw-rp')}.",
                "", *table(measured, n, ROWS),
            ]
        if ensemble:
            lines += [
                "",
                f"**{members} members in one `ensemble_map` / raw RADICAL-Pilot: "
                f"{ratio_text(ensemble, members, 'ensemble-rp', 'raw-rp', 0.95)}**.",
                "", *table(ensemble, members, ENSEMBLE_ROWS),
            ]
    lines += [
        "",
        "Flow CPU: CPU seconds of the measuring process (the flow, or raw RP's client) in "
        "the timed window, per task; the Prefect server's and RADICAL-Pilot's own "
        "processes are not in it. Submit -> active is the pilot's batch job starting (the "
        "nodes are idle: under a second) plus the agent's bootstrap on the nodes (Python "
        "start-up of RADICAL-Pilot's components), which grows with the machine's load. The "
        "per-task rate is bounded by RADICAL-Pilot's agent and one `srun` step per task, "
        "the same for all rows.",
        *(["", FINDINGS.read_text().rstrip()] if FINDINGS.exists() else []),
        END,
        "",
    ]
    return "\n".join(lines)


def write_docs(text: str, out: Path) -> None:
    """The section in out/benchmarks.md; for docs/, also the copy `bench/run.py` includes."""
    replace_section(text, out, BEGIN, END, SECTION)
