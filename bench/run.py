"""Benchmarks of RhapsodyRunner against its peers: one command, table + Markdown + plot.

    .venv/bin/python bench/run.py            # full: 200, 2,000, 10,000 tasks (~30-40 min)
    .venv/bin/python bench/run.py --quick    # CI smoke variant: 20 and 50 tasks

Prints the results and the ratio table, writes docs/benchmarks.md and draws
docs/benchmarks.png. Each measurement runs in a fresh child process
(`bench/child.py`); the rows of one workload and task count run interleaved
(order reversed every repeat) and the medians are compared, so the ratios hold
on a noisy shared machine even when absolute times do not. Rows whose backend
is unavailable (`rhapsody_prefect.why_unavailable`) are listed as such.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.child import MARKER
from bench.env import REPO, base_env, dask_cluster, prefect_server, server_settle
from bench.plan import PREDICTED_LIMIT, SINGLE_RUN_ROWS, Group, build_plan
from bench.report import (
    RATIO_HEADER,
    TABLE_HEADER,
    judge,
    markdown_table,
    plot,
    ratio_rows,
    summarize,
    table_rows,
    text_table,
)
from bench.workloads import ROWS

CHILD = Path(__file__).resolve().parent / "child.py"
FINDINGS = Path(__file__).resolve().parent / "findings.md"
ENSEMBLE_SECTION = Path(__file__).resolve().parent / "ensemble_section.md"
SLURM_SECTION = Path(__file__).resolve().parent / "slurm_section.md"
#: Sections the other benchmarks write (bench/output.py, staging.py, upstream.py, ...),
#: kept when this script rewrites benchmarks.md.
OTHER_SECTIONS = [Path(__file__).resolve().parent / f"{name}_section.md"
                  for name in ("output", "staging", "upstream", "several_backends")]
RP_CORES = 2


def child_timeout(row: str, workload: str, n: int) -> float:
    """Generous per-measurement limit (a hung peer must not stall the whole run)."""
    per_task = 1.0 if row in ("prefect-processpool", "prefect-dask") else 0.25
    if row.endswith("rp"):
        per_task = 2.0 if workload == "python" else 0.5
        return 240 + n * per_task
    return min(120 + n * per_task, 900)


def run_child(spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    timeout = child_timeout(spec["row"], spec["workload"], spec["n"])
    with open(log, "a") as stream:
        stream.write(f"\n===== {json.dumps(spec)}\n")
        stream.flush()
        try:
            completed = subprocess.run(
                [sys.executable, str(CHILD), json.dumps(spec)], env=env, cwd=spec["work_dir"],
                stdout=subprocess.PIPE, stderr=stream, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s"}
    for line in completed.stdout.splitlines():
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER):]))
    return {"error": f"child exited {completed.returncode} without a result"}


def unavailable_families() -> dict[str, str]:
    import rhapsody_prefect

    reasons = {}
    for family in ("concurrent", "dask", "radical_pilot"):
        reason = rhapsody_prefect.why_unavailable(family)
        if reason is not None:
            reasons[family] = reason
    return reasons


def machine() -> dict[str, str]:
    import psutil

    versions = {}
    for package in ("prefect", "prefect_dask", "distributed", "radical.pilot"):
        try:
            module = __import__(package, fromlist=["__version__"])
            versions[package] = str(getattr(module, "version", None)
                                    or getattr(module, "__version__", "?"))
        except Exception as error:  # pragma: no cover - reported, not fatal
            versions[package] = f"unavailable ({type(error).__name__})"
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": f"{cpu}, {psutil.cpu_count()} logical cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        **versions,
    }


def run_groups(
    groups: list[Group], env: dict[str, str], unavailable: dict[str, str], work: Path,
    api_url: str, dask_address: str | None, log: Path, limit: float,
    results: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Run the groups; appends to `results` as it goes (kept when interrupted)."""
    rates: dict[tuple[str, str], tuple[int, float]] = {}  # slowest rate seen per row
    for index, group in enumerate(groups, 1):
        if group.family in unavailable:
            continue
        print(f"[{index}/{len(groups)}] {group.family} {group.workload} n={group.n} "
              f"x{group.repeats}: {', '.join(group.rows)}", flush=True)
        for repeat in range(group.repeats):
            order = group.rows if repeat % 2 == 0 else tuple(reversed(group.rows))
            for row in order:
                if repeat > 0 and row in SINGLE_RUN_ROWS:
                    continue
                seen = rates.get((row, group.workload))
                if seen is not None and group.n / seen[1] > limit:
                    reason = (f"skipped: {seen[1]:.1f} tasks/s at n={seen[0]} predicts "
                              f"{group.n / seen[1] / 60:.0f} min")
                    print(f"    {row:<22} {reason}", flush=True)
                    results.append({"error": reason, "skipped": True, "row": row,
                                    "workload": group.workload, "n": group.n,
                                    "repeat": repeat, "family": group.family})
                    continue
                work_dir = Path(tempfile.mkdtemp(prefix=f"{row}-", dir=work))
                spec = {"row": row, "workload": group.workload, "n": group.n,
                        "dask_address": dask_address, "rp_cores": RP_CORES,
                        "work_dir": str(work_dir)}
                started = time.monotonic()
                result = run_child(spec, env, log)
                shutil.rmtree(work_dir, ignore_errors=True)
                result.update(row=row, workload=group.workload, n=group.n, repeat=repeat,
                              family=group.family)
                results.append(result)
                if "seconds" in result:
                    rate = group.n / result["seconds"]
                    if seen is None or seen[0] < group.n or rate < seen[1]:
                        rates[(row, group.workload)] = (group.n, rate)
                shown = (f"{result['seconds']:.2f}s ({group.n / result['seconds']:.1f}/s)"
                         if "seconds" in result else result.get("error"))
                print(f"    {row:<22} #{repeat + 1}: {shown}  "
                      f"[{time.monotonic() - started:.0f}s wall]", flush=True)
                server_settle(api_url)
    return results


def write_markdown(
    path: Path, quick: bool, info: dict[str, str], table: list[list[str]],
    ratios: list[list[str]], wall: float, load: tuple[str, str], measured_at: str,
) -> None:
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    variant = "quick (CI smoke: 20 and 50 tasks)" if quick else "full (200, 2,000, 10,000 tasks)"
    lines = [
        "# Benchmarks: RhapsodyRunner against its peers",
        "",
        f"Measured by `python bench/run.py{' --quick' if quick else ''}` from "
        f"{measured_at}; variant: {variant}; "
        f"wall time {wall / 60:.1f} min.",
        "",
        "![benchmarks](benchmarks.png)",
        "",
        "## Ratios (the result)",
        "",
        markdown_table(RATIO_HEADER, ratios),
        "",
        "## Measurements",
        "",
        markdown_table(TABLE_HEADER, table),
        "",
        "Rows: " + "; ".join(f"`{name}` = {what}" for name, (_, what) in ROWS.items()) + ".",
        "",
        "## Method",
        "",
        "- Every measurement is a fresh child process. It starts its runner/backend, runs one "
        "warm-up task (backend, pool, pilot and Prefect client up), then times submitting `n` "
        "tasks and waiting for all of them (the *timed window*; throughput = n / window). "
        "Start-up (pilot, cluster connection, first flow) is outside the window for every row.",
        "- Prefect rows: one `@flow` per measurement, tasks via `task.submit(i)` then "
        "`prefect.futures.wait`; `python` = a trivial `@task` returning its argument, `exec` = "
        "`executable_task` returning `['/bin/true']` (under Prefect's own runners it runs as "
        "a local subprocess in the worker). Runners use their defaults (ThreadPoolTaskRunner: "
        "unbounded threads; ProcessPoolTaskRunner: one process per core; "
        "RhapsodyRunner('concurrent'): 4 thread slots; RhapsodyRunner logs its per-task "
        "transition lines at INFO, its default: one 'finished' line per task, plus an "
        "'executing' line for a body still running after 1 s).",
        "- API floor rows: the same tasks as RHAPSODY task dicts through "
        "`get_backend(...).submit_tasks(...)` and `wait()`, no Prefect imported.",
        "- Dask rows share one `LocalCluster(n_workers=2, threads_per_worker=1)` started by "
        "`bench/run.py`; both runners get its `address`. RADICAL-Pilot rows use a "
        f"`local.localhost` pilot of {RP_CORES} cores for tasks (raw RP: "
        f"`PilotDescription(cores={RP_CORES})` on a `local.localhost` node sized to {RP_CORES} "
        "cores by a user resource config, as the backend does (RP's built-in "
        "local.localhost is one 8-core node and a pilot gets whole nodes); "
        f"backend: `resources={{'cores': {RP_CORES}}}`, "
        "raptor only for python tasks; raw RP is measured for executables only).",
        "- One `prefect server` (SQLite, temporary PREFECT_HOME, analytics off) serves all "
        "runs; after each run the bench waits (at most 20 s) until the server's CPU is idle, "
        "so one run's event backlog does not slow the next.",
        "- Rows of one workload and size alternate (order reversed every repeat); the table "
        "shows medians of the repeats (`runs` = good runs / runs). Ratios compare medians "
        "measured side by side in this one run; absolute numbers are noisy (the 2-core machine "
        "is shared with other work).",
        "- Flow CPU: CPU seconds (user + system, all threads) the flow process used in the "
        "timed window, per task; less sensitive than wall time to other load on the host.",
        "- Flow-side memory: a thread samples the flow process's RSS every 10 ms; `flow dRSS` is "
        "the peak growth during the timed window, `peak RSS` the process's peak.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        f"- load average at start / end: {load[0]} / {load[1]}",
        "",
    ]
    if findings:
        lines += [findings.rstrip(), ""]
    if ENSEMBLE_SECTION.exists():  # written by bench/ensemble.py
        lines += [ENSEMBLE_SECTION.read_text().rstrip(), ""]
    if SLURM_SECTION.exists():  # written by bench/slurm.py
        lines += [SLURM_SECTION.read_text().rstrip(), ""]
    lines += [f"{section.read_text().rstrip()}\n" for section in OTHER_SECTIONS
              if section.exists()]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced CI variant (20/50 tasks)")
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="directory for benchmarks.md and benchmarks.png")
    parser.add_argument("--only", default="",
                        help="comma-separated families to run (concurrent,dask,radical_pilot)")
    parser.add_argument("--max-n", type=int, default=None,
                        help="run only the groups with at most this many tasks")
    parser.add_argument("--from-results", type=Path, default=None,
                        help="re-render the table, Markdown and plot from a results.json")
    args = parser.parse_args(argv)
    if args.from_results is not None:
        return render_saved(args.from_results, args.quick, args.out)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # results.json is written on the way out
    signal.signal(signal.SIGINT, interrupted)
    started = time.monotonic()
    measured_at = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    groups, caps = build_plan(args.quick)
    limit = PREDICTED_LIMIT[args.quick]
    if args.only:
        wanted = set(args.only.split(","))
        groups = [g for g in groups if g.family in wanted]
    if args.max_n is not None:
        groups = [g for g in groups if g.n <= args.max_n]
    unavailable = unavailable_families()
    for family, reason in unavailable.items():
        print(f"{family}: unavailable: {reason}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rhapsody-bench-"))
    env = base_env(work)
    os.environ.update(env)  # the Dask cluster's workers inherit it (DaskTaskRunner needs it)
    os.environ.pop("PREFECT_API_URL", None)
    log = work / "children.log"
    print(f"work dir {work} (child logs: {log})", flush=True)
    results: list[dict[str, Any]] = []
    try:
        with prefect_server(env, work / "server.log") as api_url:
            env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"] = api_url
            print(f"prefect server at {api_url}", flush=True)
            plain = [g for g in groups if g.family != "dask"]
            dask_groups = [g for g in groups if g.family == "dask"]
            run_groups(
                [g for g in plain if g.family == "concurrent"], env, unavailable, work,
                api_url, None, log, limit, results,
            )
            if dask_groups and "dask" not in unavailable:
                with dask_cluster() as cluster:
                    print(f"dask cluster at {cluster.scheduler_address}", flush=True)
                    run_groups(dask_groups, env, unavailable, work, api_url,
                               cluster.scheduler_address, log, limit, results)
            run_groups(
                [g for g in plain if g.family != "concurrent"], env, unavailable, work,
                api_url, None, log, limit, results,
            )
    finally:
        (work / "results.json").write_text(json.dumps(results, indent=1))
    wanted_families = {g.family for g in groups}
    unavailable = {f: r for f, r in unavailable.items() if f in wanted_families}
    wall = time.monotonic() - started
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta = {"wall": wall, "load": [load_start, load_end], "unavailable": unavailable,
            "quick": args.quick, "measured_at": measured_at}
    (work / "meta.json").write_text(json.dumps(meta, indent=1))
    render(results, meta, caps, args.out)
    print(f"raw results in {work / 'results.json'}")
    failed = [r for r in results if "error" in r and not r.get("skipped")]
    return 1 if failed and args.quick else 0


def render_saved(path: Path, quick: bool, out: Path) -> int:
    """Re-render from a saved results.json (and the meta.json beside it, if any)."""
    results = json.loads(path.read_text())
    if isinstance(results, dict):  # {"results": [...], "meta": {...}} from a merge
        meta = results["meta"]
        _, caps = build_plan(meta["quick"])
        render(results["results"], meta, caps, out)
        return 0
    meta_path = path.parent / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {
        "wall": 0.0, "load": ["?", "?"], "unavailable": {}, "quick": quick}
    _, caps = build_plan(meta["quick"])
    render(results, meta, caps, out)
    return 0


def render(results: list[dict[str, Any]], meta: dict[str, Any],
           caps: dict[str, tuple[int, str]], out: Path) -> None:
    """Print the tables; write benchmarks.md and benchmarks.png into `out`."""
    unavailable, wall, quick = meta["unavailable"], meta["wall"], meta["quick"]
    summary = summarize(results)
    verdicts = judge(summary)
    table = table_rows(summary, unavailable, caps)
    ratios = ratio_rows(verdicts)
    print()
    print(text_table(TABLE_HEADER, table))
    print()
    print(text_table(RATIO_HEADER, ratios))
    print(f"\nwall time {wall / 60:.1f} min")
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(out / "benchmarks.md", quick, machine(), table, ratios, wall,
                   (meta["load"][0], meta["load"][1]),
                   meta.get("measured_at", "an unrecorded time (re-rendered)"))
    plot(summary, verdicts, out / "benchmarks.png",
         f"RhapsodyRunner vs peers ({'quick' if quick else 'full'}; medians, 2-core host)")
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'}")


if __name__ == "__main__":
    sys.exit(main())
