"""Executables per second through a pilot on a real Slurm cluster: RhapsodyRunner vs raw RP.

    .venv/bin/python bench/slurm.py                   # 200 x /bin/true, 3 runs per row
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
NODES, CPUS = 2, 2


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


def cluster_args(directory: Path) -> list[str]:
    """The cluster's options: 1 + NODES free ports (slurmctld, one per slurmd)."""
    base = free_ports(1 + NODES)
    return ["--dir", str(directory), "--nodes", str(NODES), "--cpus", str(CPUS),
            "--ctld-port", str(base), "--node-port", str(base + 1)]


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
            results: list[dict[str, Any]]) -> None:
    """Run the rows, alternating; appends to `results` as it goes."""
    log = work / "children.log"
    for repeat in range(args.repeats):
        for row in ROWS if repeat % 2 == 0 else tuple(reversed(ROWS)):
            run_dir = Path(tempfile.mkdtemp(prefix=f"{row}-", dir=work))
            spec = {"row": row, "workload": "exec", "n": args.n, "work_dir": str(run_dir),
                    "rp_cores": NODES * CPUS,
                    "rp_slurm": {"entry": resource_entry(run_dir / "sandboxes"),
                                 "nodes": NODES}}
            started = time.monotonic()
            load = os.getloadavg()[0]
            result = run_child(spec, env, log)
            result["load"] = round((load + os.getloadavg()[0]) / 2, 1)
            shutil.rmtree(run_dir, ignore_errors=True)
            result.update(row=row, n=args.n, repeat=repeat)
            results.append(result)
            active = result.get("active_seconds")
            shown = (f"{args.n / result['seconds']:.2f} tasks/s, pilot active "
                     f"{active if active is None else round(active, 1)} s after submission"
                     if "seconds" in result else result.get("error"))
            print(f"  {row:<12} #{repeat + 1}: {shown} [{time.monotonic() - started:.0f} s]",
                  flush=True)
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


def summarize(results: list[dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        done = [r for r in results if r["row"] == row and "seconds" in r
                and r.get("completed") == n]
        rates = [n / r["seconds"] for r in done]
        active = [r["active_seconds"] for r in done if r.get("active_seconds") is not None]
        summary[row] = {
            "runs": len(done), "rates": rates, "loads": [r.get("load") for r in done],
            "rate": statistics.median(rates) if rates else None,
            "active": statistics.median(active) if active else None,
            "active_all": active,
            "errors": [r["error"] for r in results if r["row"] == row and "error" in r],
        }
    return summary


def section(summary: dict[str, dict[str, Any]], results: list[dict[str, Any]], n: int,
            repeats: int, meta: dict[str, str]) -> str:
    def ratio(ours: str, peer: str) -> str:
        pairs = paired_ratio(results, n, ours, peer)
        if not pairs:
            return "n/a"
        each = ", ".join(f"{p:.2f}" for p in pairs)
        return f"{statistics.median(pairs):.2f}x (per repeat: {each})"

    pairs = paired_ratio(results, n, "rhapsody-rp", "raw-rp")
    verdict = ("n/a" if not pairs
               else "meets" if statistics.median(pairs) >= 0.9 else "misses")
    lines = [
        BEGIN,
        "## Slurm: executables through a pilot on a real Slurm cluster",
        "",
        f"Measured {meta['measured_at']} by `bench/slurm.py` (load average {meta['load']}): "
        f"a local Slurm cluster of {NODES} nodes x {CPUS} CPUs (`scripts/slurm-cluster.sh`, "
        "Slurm 22.05, all nodes this machine), one RADICAL-Pilot pilot of both nodes (one "
        f"`sbatch` job, {NODES * CPUS} cores, no raptor) per measurement, from the same inline "
        f"resource config; a warm-up task, then {n} x `/bin/true`, each launched by the agent "
        f"with `srun`, submitted at once. {repeats} repeats, rows alternating (raw RP always "
        "between the other two); a ratio is the median over repeats of the two rows' rates "
        "in the same repeat, which saw about the same load.",
        "",
        f"**RhapsodyRunner / raw RADICAL-Pilot: {ratio('rhapsody-rp', 'raw-rp')}** "
        f"(target >= 0.9x: {verdict}); RHAPSODY API / raw: {ratio('api-rp', 'raw-rp')}.",
        "",
        "| row | what | executables/s (median) | runs: tasks/s (load average) "
        "| submit -> pilot active (median) |",
        "|---|---|---|---|---|",
    ]
    what = {"rhapsody-rp": 'Prefect flow, `RhapsodyRunner("radical_pilot")`',
            "raw-rp": "raw RADICAL-Pilot (Session, PilotManager, TaskManager)",
            "api-rp": 'RHAPSODY API, `get_backend("radical_pilot")`'}
    for row in ROWS:
        entry = summary[row]
        runs = ", ".join(f"{r:.2f}" + (f" ({load})" if load is not None else "")
                         for r, load in zip(entry["rates"], entry["loads"], strict=True))
        runs = runs or "; ".join(entry["errors"])[:200]
        shown = f"{entry['rate']:.2f}" if entry["rate"] else "-"
        active = f"{entry['active']:.1f} s" if entry["active"] is not None else "-"
        lines.append(f"| `{row}` | {what[row]} | {shown} | {runs} | {active} |")
    lines += [
        "",
        "Submit -> active is the pilot's batch job starting (the nodes are idle: under a "
        "second) plus the agent's bootstrap on the nodes (Python start-up of RADICAL-Pilot's "
        "components), which grows with the machine's load. The per-task rate is bounded by "
        "RADICAL-Pilot's agent and one `srun` step per task, the same for all rows.",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="executables per run (200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (3)")
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
        write_docs(section(summarize(results, n), results, n, repeats, meta), args.out)
        return 0
    load_start = f"{os.getloadavg()[0]:.1f}"
    measured_at = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    work = Path(tempfile.mkdtemp(prefix="rhapsody-slurm-bench-", dir="/tmp"))
    work.chmod(0o755)  # the munge user enters the cluster's directory
    cluster = cluster_args(work / "cluster")
    env = base_env(work)
    started = subprocess.run([str(SCRIPT), "start", *cluster], capture_output=True, text=True)
    if started.returncode != 0:
        print(started.stdout + started.stderr, file=sys.stderr)
        return 1
    env["SLURM_CONF"] = str(work / "cluster" / "slurm.conf")
    os.environ.update(env)
    os.environ.pop("PREFECT_API_URL", None)
    print(f"Slurm cluster up ({NODES} nodes x {CPUS} CPUs), work dir {work}", flush=True)
    results: list[dict[str, Any]] = []
    try:
        with prefect_server(env, work / "server.log") as api_url:
            env["PREFECT_API_URL"] = api_url
            measure(args, work, env, api_url, results)
    finally:
        subprocess.run([str(SCRIPT), "stop", *cluster], capture_output=True, text=True)
        (work / "results.json").write_text(json.dumps(results, indent=1))
    summary = summarize(results, args.n)
    meta = {"measured_at": measured_at,
            "load": f"{load_start} at start, {os.getloadavg()[0]:.1f} at end"}
    (work / "meta.json").write_text(json.dumps({**meta, "n": args.n,
                                                "repeats": args.repeats}))
    text = section(summary, results, args.n, args.repeats, meta)
    print(text)
    write_docs(text, args.out)
    print(f"wrote the Slurm section of {args.out / 'benchmarks.md'}; raw results in "
          f"{work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
