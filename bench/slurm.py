"""Executables per second through a pilot on a real Slurm cluster: RhapsodyRunner vs raw RP.

    .venv/bin/python bench/slurm.py                   # 200 x /bin/true, 3 runs, both layouts
    .venv/bin/python bench/slurm.py --layout login    # only the login-node layout
    .venv/bin/python bench/slurm.py --n 10 --repeats 1 --out /tmp/slurm-bench   # smoke
    .venv/bin/python bench/slurm.py --layout login --profile rhapsody-rp   # + py-spy stacks

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

The report (rows, layouts, the Markdown section) is `bench/slurm_report.py`.
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
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.child import MARKER
from bench.env import REPO, VENV_BIN, base_env, prefect_server, server_settle
from bench.profile import py_spy_record
from bench.slurm_report import CPUS, GROUPS, LAYOUTS, LOGIN_CPU, NODES, section, write_docs

SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
CHILD = Path(__file__).resolve().parent / "child.py"
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


def run_child(spec: dict[str, Any], env: dict[str, str], log: Path,
              profile: Path | None = None) -> dict[str, Any]:
    """One measurement in a fresh process (bench/child.py); a pilot's start-up on a loaded
    machine takes minutes, so the limit is generous. `profile`: run it under `py-spy
    record` (raw collapsed stacks of every thread, to that file; see bench/profile.py)."""
    timeout = 900 + spec["n"] * 1.0
    command = [sys.executable, str(CHILD), json.dumps(spec)]
    if profile is not None:
        command = py_spy_record(command, profile, rate=100)
    with open(log, "a") as stream:
        stream.write(f"\n===== {json.dumps(spec)}\n")
        stream.flush()
        try:
            done = subprocess.run(command, env=env,
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
                profile = (work / f"profile-{layout}-{row}-{repeat + 1}.txt"
                           if row in args.profile.split(",") else None)
                result = run_child(spec, env, log, profile)
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
    parser.add_argument("--profile", default="", metavar="ROWS",
                        help="run these rows (comma-separated) under py-spy record; the "
                             "stacks stay in the work directory (`pip install py-spy`)")
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
    if args.profile and not (VENV_BIN / "py-spy").exists():
        parser.error(f"--profile needs py-spy in {VENV_BIN} (pip install py-spy)")
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
