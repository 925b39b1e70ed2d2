"""Executables per second through a pilot on a real Slurm cluster: RhapsodyRunner vs raw RP.

    .venv/bin/python bench/slurm.py                   # 200 x /bin/true, 3 runs, both layouts
    .venv/bin/python bench/slurm.py --layout login    # only the login-node layout
    .venv/bin/python bench/slurm.py --n 10 --repeats 1 --out /tmp/slurm-bench   # smoke

Starts a Slurm cluster of its own with scripts/slurm-cluster.sh (2 nodes x 2 CPUs,
its own work directory and ports; root, `slurm-wlm` and `munge` needed; see
docs/hpc.md) and stops it at the end. Every measurement is a fresh child process
(`bench/child.py`, rows from `bench/workloads.py`): a RADICAL-Pilot pilot of both
nodes (one sbatch job, 4 cores, no raptor) from the same inline resource config,
one warm-up task, then `n` x `/bin/true`, each an `srun` step, submitted at once
and waited for (the timed window). The rows alternate, order reversed every
repeat; medians are compared. Each row also reports the time from the pilot's
submission (sbatch) to active (the agent up on the nodes).

Two layouts of the one machine, each with a cluster and a Prefect server of its own:
`login` models an HPC site: the flow, its Prefect server and RADICAL-Pilot's client
on CPU 0 (the login node), the Slurm daemons and so the pilot's agent and every
`srun` step on the other CPUs (the compute nodes; `slurm-cluster.sh --cpu-list`).
`shared`: everything on every CPU, as when a flow runs on the machine that also runs
its tasks; there Prefect's own work per task run takes CPU from the agent.

Rows: `rhapsody-rp` (a Prefect flow, `RhapsodyRunner("radical_pilot")`), `raw-rp`
(RADICAL-Pilot's own Session/TaskManager) and `api-rp` (the RHAPSODY API, the
floor). Writes the section "Slurm" of docs/benchmarks.md (kept in
bench/slurm_section.md, which `bench/run.py` includes). CI does not run it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.child import MARKER
from bench.env import REPO, base_env, prefect_server, server_settle

SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
CHILD = Path(__file__).resolve().parent / "child.py"
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


def compute_cpus() -> set[int]:
    """The CPUs of the compute nodes in the `login` layout: all but the login CPU."""
    return set(os.sched_getaffinity(0)) - {LOGIN_CPU}


def free_ports(count: int) -> int:
    """First of `count` consecutive free ports on 127.0.0.1 (30000-32000)."""
    for base in random.sample(range(30000, 32000 - count), 200):
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


def cluster_args(directory: Path, layout: str) -> list[str]:
    """The cluster's options: 1 + NODES free ports (slurmctld, one per slurmd); in the
    `login` layout its daemons (and so its jobs and steps) on the compute CPUs."""
    base = free_ports(1 + NODES)
    args = ["--dir", str(directory), "--nodes", str(NODES), "--cpus", str(CPUS),
            "--ctld-port", str(base), "--node-port", str(base + 1)]
    if layout == "login":
        args += ["--cpu-list", ",".join(map(str, sorted(compute_cpus())))]
    return args


def resource_entry(sandboxes: Path) -> dict[str, Any]:
    """The inline resource config both rows use (see docs/hpc.md)."""
    return {
        "default_schema": "local",
        "schemas": {"local": {"job_manager_endpoint": "slurm://localhost/",
                              "filesystem_endpoint": "file://localhost/"}},
        "default_queue": "debug", "resource_manager": "SLURM",
        "agent_scheduler": "CONTINUOUS", "agent_spawner": "POPEN",
        "launch_methods": {"order": ["SRUN"], "SRUN": {}},
        "cores_per_node": CPUS, "gpus_per_node": 0,
        "default_remote_workdir": str(sandboxes),
        "rp_version": "installed", "virtenv_mode": "local", "python_dist": "default",
    }


def run_child(spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    """One measurement in a fresh process (bench/child.py); a pilot's start-up on a loaded
    machine takes minutes, so the limit is generous."""
    timeout = 900 + spec["n"] * 1.0
    with open(log, "a") as stream:
        stream.write(f"\n===== {json.dumps(spec)}\n")
        stream.flush()
        try:
            done = subprocess.run([sys.executable, str(CHILD), json.dumps(spec)], env=env,
                                  cwd=spec["work_dir"], stdout=subprocess.PIPE, stderr=stream,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER):]))
    return {"error": f"child exited {done.returncode} without a result"}


def measure(args: argparse.Namespace, work: Path, env: dict[str, str], api_url: str,
            results: list[dict[str, Any]], layout: str) -> None:
    """Run the rows of each group, alternating; appends to `results` as it goes."""
    log = work / "children.log"
    print(f"layout {layout}:", flush=True)
    plan = [("tasks", args.n, args.repeats)]
    if args.ensemble and layout in args.ensemble_layouts.split(","):
        plan.append(("ensemble", args.ensemble, args.ensemble_repeats))
    for group, n, repeats in plan:
        rows = GROUPS[group]
        for repeat in range(repeats):
            for row in rows if repeat % 2 == 0 else tuple(reversed(rows)):
                run_dir = Path(tempfile.mkdtemp(prefix=f"{row}-", dir=work))
                spec = {"row": row, "workload": "exec", "n": n, "work_dir": str(run_dir),
                        "rp_cores": NODES * CPUS,
                        "rp_slurm": {"entry": resource_entry(run_dir / "sandboxes"),
                                     "nodes": NODES}}
                started = time.monotonic()
                load = os.getloadavg()[0]
                result = run_child(spec, env, log)
                result["load"] = round((load + os.getloadavg()[0]) / 2, 1)
                shutil.rmtree(run_dir, ignore_errors=True)
                result.update(row=row, n=n, repeat=repeat, layout=layout, group=group)
                results.append(result)
                active = result.get("active_seconds")
                shown = (f"{n / result['seconds']:.2f} tasks/s, pilot active "
                         f"{active if active is None else round(active, 1)} s after submission"
                         if "seconds" in result else result.get("error"))
                print(f"  {group:<8} {row:<12} #{repeat + 1}: {shown} "
                      f"[{time.monotonic() - started:.0f} s]", flush=True)
                server_settle(api_url)


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
    if out.resolve() == (REPO / "docs").resolve():
        SECTION.write_text(text)
    target = out / "benchmarks.md"
    current = target.read_text() if target.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.DOTALL)
    if pattern.search(current):
        current = pattern.sub(lambda _: text, current)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    out.mkdir(parents=True, exist_ok=True)
    target.write_text(current)


def run_layout(args: argparse.Namespace, work: Path, layout: str,
               results: list[dict[str, Any]]) -> bool:
    """Start a cluster and a Prefect server for `layout`, measure every row, stop both.

    In the `login` layout this process (and so the Prefect server and every
    measurement child it starts) runs on the login CPU only, the cluster on the others.
    """
    cluster = cluster_args(work / f"cluster-{layout}", layout)
    env = base_env(work)
    everywhere = os.sched_getaffinity(0)
    started = subprocess.run([str(SCRIPT), "start", *cluster], capture_output=True, text=True)
    if started.returncode != 0:
        print(started.stdout + started.stderr, file=sys.stderr)
        return False
    env["SLURM_CONF"] = str(work / f"cluster-{layout}" / "slurm.conf")
    os.environ.update(env)
    os.environ.pop("PREFECT_API_URL", None)
    print(started.stdout.strip(), flush=True)
    try:
        if layout == "login":
            os.sched_setaffinity(0, {LOGIN_CPU})
        with prefect_server(env, work / f"server-{layout}.log") as api_url:
            env["PREFECT_API_URL"] = api_url
            measure(args, work, env, api_url, results, layout)
    finally:
        os.sched_setaffinity(0, everywhere)
        subprocess.run([str(SCRIPT), "stop", *cluster], capture_output=True, text=True)
        (work / "results.json").write_text(json.dumps(results, indent=1))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="executables per run (200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (3)")
    parser.add_argument("--ensemble", type=int, default=1000, metavar="N",
                        help="also N members through ensemble_map against N raw RP tasks "
                             "(1000; 0: not measured)")
    parser.add_argument("--ensemble-repeats", type=int, default=2,
                        help="runs per ensemble row (2)")
    parser.add_argument("--ensemble-layouts", default="login",
                        help="layouts that measure the ensemble rows (login; or login,shared)")
    parser.add_argument("--layout", choices=[*LAYOUTS, "both"], default="both",
                        help="login: flow on CPU 0, cluster on the others; shared: "
                             "everything everywhere; both (default): one after the other")
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="directory of the benchmarks.md to update (docs/)")
    parser.add_argument("--from-results", type=Path, default=None, metavar="DIR",
                        help="write the section from a finished run's results.json and "
                             "meta.json in DIR (measures nothing)")
    args = parser.parse_args(argv)
    if args.from_results is not None:
        results = json.loads((args.from_results / "results.json").read_text())
        meta = json.loads((args.from_results / "meta.json").read_text())
        n, repeats = meta.pop("n"), meta.pop("repeats")
        write_docs(section(results, n, repeats, meta), args.out)
        return 0
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    if "login" in layouts and (LOGIN_CPU not in os.sched_getaffinity(0) or not compute_cpus()):
        parser.error(f"--layout login needs CPU {LOGIN_CPU} and at least one other CPU; "
                     f"this process may use CPUs {sorted(os.sched_getaffinity(0))}")
    load_start = f"{os.getloadavg()[0]:.1f}"
    measured_at = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    work = Path(tempfile.mkdtemp(prefix="rhapsody-slurm-bench-", dir="/tmp"))
    work.chmod(0o755)  # the munge user enters the cluster's directory
    results: list[dict[str, Any]] = []
    for layout in layouts:
        if not run_layout(args, work, layout, results):
            return 1
    meta: dict[str, Any] = {"measured_at": measured_at,
            "load": f"{load_start} at start, {os.getloadavg()[0]:.1f} at end"}
    meta.update(ensemble=args.ensemble, ensemble_repeats=args.ensemble_repeats)
    (work / "meta.json").write_text(json.dumps({**meta, "n": args.n,
                                                "repeats": args.repeats}))
    text = section(results, args.n, args.repeats, meta)
    print(text)
    write_docs(text, args.out)
    print(f"wrote the Slurm section of {args.out / 'benchmarks.md'}; raw results in "
          f"{work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
