"""Benchmark of ensemble_map against plain task runs, the API floor and raw RADICAL-Pilot.

    .venv/bin/python bench/ensemble.py            # full: 10,000 and 100,000 members (~45 min)
    .venv/bin/python bench/ensemble.py --quick    # CI smoke: 100 and 400 members

Rows of one workload and size run side by side in one run (each measurement a
fresh child process, `bench/ensemble_rows.py`); the ratios compare medians of
the same run. Prints the tables, writes the section "ensemble_map" of
docs/benchmarks.md (kept in bench/ensemble_section.md, which `bench/run.py`
includes) and the plot docs/benchmarks-ensemble.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.env import REPO, base_env, dask_cluster, prefect_server, server_settle
from bench.report import markdown_table, replace_section, summarize, text_table

MARKER = "ENSEMBLE-RESULT "
SECTION = Path(__file__).resolve().parent / "ensemble_section.md"
#: Hand-written findings, included at the end of the section.
FINDINGS = Path(__file__).resolve().parent / "ensemble_findings.md"
BEGIN, END = "<!-- ensemble_map: begin -->", "<!-- ensemble_map: end -->"
RP_CORES = 2
Group = tuple[str, str, int, tuple[str, ...]]  # family, workload, n, rows


def plan(quick: bool) -> tuple[list[Group], dict[str, Any]]:
    """Groups (rows side by side) and the settings of this variant.

    Full variant on a 2-core host: plain task runs cost 5-15 ms each and Dask's floor
    for commands runs about 130 tasks/s, so the slow combinations are capped (CAPS)
    and the table says so; the ratios against plain task runs at a larger n divide by
    the plain throughput measured at the largest smaller n (extrapolated).
    """
    if quick:
        sizes = {("concurrent", "python"): (100, 400), ("concurrent", "exec"): (100, 400),
                 ("dask", "python"): (100, 400), ("dask", "exec"): (100, 400)}
        plain_n, base, rp_n, sleep_n, sleep_s = 100, 20, 10, 20, 2
    else:
        sizes = {("concurrent", "python"): (10_000, 100_000), ("concurrent", "exec"): (10_000,),
                 ("dask", "python"): (2_000, 10_000), ("dask", "exec"): (2_000,)}
        plain_n, base, rp_n, sleep_n, sleep_s = 0, 1000, 1000, 1000, 30
    groups: list[Group] = []
    for (family, workload), ns in sizes.items():
        for n in ns:
            with_plain = n == ns[0] and (plain_n == 0 or n <= plain_n)
            rows = (f"ensemble-{family}", *((f"plain-{family}",) if with_plain else ()),
                    f"api-{family}")
            groups.append((family, workload, n, rows))
        if family == "concurrent" and len(ns) > 1:
            groups.append((family, workload, base, (f"ensemble-{family}",)))
    groups.append(("radical_pilot", "exec", rp_n, ("ensemble-rp", "raw-rp")))
    groups.append(("sleep", "exec", sleep_n,
                   ("sleep-ensemble-dask", "sleep-ensemble-concurrent", "sleep-threadpool")))
    return groups, {"base": base, "sleep_seconds": sleep_s, "quick": quick}


def run_child(spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    timeout = 600 + spec["n"] * (0.05 if spec["row"].startswith(("ensemble", "api")) else 0.3)
    with open(log, "a") as stream:
        stream.write(f"\n===== {json.dumps(spec)}\n")
        stream.flush()
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                cwd=spec["work_dir"], stdout=subprocess.PIPE, stderr=stream, text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s"}
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER):]))
    return {"error": f"child exited {done.returncode} without a result"}


def child(spec_json: str) -> int:
    import logging
    import traceback
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from bench.ensemble_rows import measure

    spec = json.loads(spec_json)
    try:
        result = measure(spec)
    except BaseException as error:  # report, never hang the parent
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"[:300]}
    print(MARKER + json.dumps(result), flush=True)
    return 0


def ratio(summary: dict[Any, Any], ours: tuple[str, str, int], peer: tuple[str, str, int],
          peer_scale: float = 1.0) -> float | None:
    a, b = summary.get(ours, {}), summary.get(peer, {})
    if "throughput" not in a or "throughput" not in b:
        return None
    return a["throughput"] / (b["throughput"] * peer_scale)


def verdicts(summary: dict[Any, Any], settings: dict[str, Any]) -> list[list[str]]:
    """The ratio rows: name, workload, n, value, target, verdict."""
    rows: list[list[str]] = []

    def add(name: str, workload: str, n: int, value: float | None, target: str,
            met: bool | None, note: str = "") -> None:
        shown = "-" if value is None else f"{value:.2f}x"
        verdict = "not measured" if value is None else (
            "info" if met is None else ("MET" if met else "MISSED"))
        rows.append([name, workload, str(n), shown, target,
                     verdict + (f"; {note}" if note else "")])

    measured = sorted(k for k, e in summary.items() if "throughput" in e)
    for family in ("concurrent", "dask"):
        for workload in ("python", "exec"):
            ours = [n for (r, w, n) in measured if r == f"ensemble-{family}" and w == workload]
            plains = [n for (r, w, n) in measured if r == f"plain-{family}" and w == workload]
            for n in ours:
                peer_n = max((p for p in plains if p <= n), default=None)
                if peer_n is not None:
                    value = ratio(summary, (f"ensemble-{family}", workload, n),
                                  (f"plain-{family}", workload, peer_n))
                    add(f"{family}: ensemble / plain task runs", workload, n, value, ">= 20x",
                        None if value is None else value >= 20,
                        "" if peer_n == n else f"plain extrapolated from n={peer_n}")
                value = ratio(summary, (f"ensemble-{family}", workload, n),
                              (f"api-{family}", workload, n))
                if value is not None:
                    add(f"{family}: ensemble / API floor", workload, n, value, ">= 0.5x",
                        value >= 0.5)
    base = settings["base"]
    for workload in ("python", "exec"):
        sizes = [n for (r, w, n) in measured if r == "ensemble-concurrent" and w == workload]
        if base in sizes and max(sizes) > base:
            large = max(sizes)
            value = (summary[("ensemble-concurrent", workload, large)]["ms_per_task"]
                     / summary[("ensemble-concurrent", workload, base)]["ms_per_task"])
            add(f"concurrent: cost/member at {large} / at {base}", workload, large, value,
                "<= 1.2x", value <= 1.2)
    n_rp = next((n for (r, w, n) in summary if r == "ensemble-rp"), 0)
    value = ratio(summary, ("ensemble-rp", "exec", n_rp), ("raw-rp", "exec", n_rp))
    add("radical_pilot: ensemble / raw RADICAL-Pilot", "exec", n_rp, value, ">= 0.95x",
        None if value is None else value >= 0.95,
        "" if value is not None else "measured on a Slurm pilot instead: section Slurm")
    return rows


def memory_rows(results: list[dict[str, Any]], settings: dict[str, Any]) -> list[list[str]]:
    """Flow side per member (ensembles at `large`) and while sleeping members run."""
    rows = []
    for r in results:
        if "seconds" not in r or "rss_peak" not in r:
            continue
        n, grown = r["n"], (r.get("rss_peak", 0) - r.get("rss_base", 0)) / 2**20
        largest = max((x["n"] for x in results if x["row"] == r["row"]), default=0)
        if r["row"].startswith("ensemble-") and n == largest and n >= 1000:
            rows.append([r["row"], r["workload"], str(n), f"{grown:.0f} MB",
                         f"{grown * 2**20 / n / 1024:.2f} KB/member",
                         f"{1000 * r['cpu_seconds'] / n:.3f} ms/member", "-"])
        if r["row"].startswith("sleep-"):
            rows.append([r["row"], r["workload"], str(n), f"{grown:.0f} MB",
                         f"{grown * 2**20 / n / 1024:.2f} KB/member",
                         f"{r['cpu_seconds']:.1f} s CPU in {r['seconds']:.1f} s",
                         f"{r.get('threads_before', '?')} -> {r.get('threads_peak', '?')}"])
    return rows


MEASURE_HEADER = ["row", "workload", "n", "runs", "median s", "members/s", "ms/member",
                  "flow CPU ms/member", "flow dRSS MB", "peak RSS MB", "note"]
RATIO_HEADER = ["ratio (ours / peer)", "workload", "n", "value", "target", "verdict"]
MEMORY_HEADER = ["row", "workload", "n", "flow dRSS", "per member", "flow CPU",
                 "flow threads (before -> peak)"]


def measurement_rows(summary: dict[Any, Any]) -> list[list[str]]:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = []
    for (row, workload, n), e in sorted(summary.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                          kv[0][2])):
        rows.append([row, workload, str(n), f"{e['runs']}/{e['of']}",
                     fmt(e.get("seconds"), ".2f"), fmt(e.get("throughput"), ".1f"),
                     fmt(e.get("ms_per_task"), ".3f"), fmt(e.get("cpu_ms_per_task"), ".3f"),
                     fmt(e.get("rss_delta_mb"), ".1f"), fmt(e.get("rss_peak_mb"), ".0f"),
                     e.get("error", "")])
    return rows


def section(meta: dict[str, Any], ratios: list[list[str]], table: list[list[str]],
            memory: list[list[str]]) -> str:
    settings = meta["settings"]
    return "\n".join([
        BEGIN,
        "## ensemble_map: one task run for thousands of members (issue 14)",
        "",
        f"Measured by `python bench/ensemble.py{' --quick' if meta['quick'] else ''}` from "
        f"{meta['measured_at']}; wall time {meta['wall'] / 60:.1f} min; load average at "
        f"start / end {meta['load'][0]} / {meta['load'][1]}.",
        "",
        "![ensemble benchmarks](benchmarks-ensemble.png)",
        "",
        markdown_table(RATIO_HEADER, ratios),
        "",
        markdown_table(MEASURE_HEADER, table),
        "",
        "Flow side while the members run (`sleep-*`: members of "
        f"`sleep {settings['sleep_seconds']}`, all executing at once) and per member at the "
        "largest ensembles:",
        "",
        markdown_table(MEMORY_HEADER, memory),
        "",
        "Method: every measurement is a fresh child process; rows of one workload and size "
        "alternate in one run, and ratios compare them. `ensemble-*`: a flow on "
        "RhapsodyRunner (artifacts on) runs a warm-up ensemble of one member, then times "
        "`ensemble_map(task, range(n)).result()`; `plain-*`: the same tasks as `n` plain "
        "task runs (`task.submit`, RhapsodyRunner's defaults); `api-*`: task dicts through "
        "the backend's API, no Prefect (the floor); `raw-rp`: raw RADICAL-Pilot on a pilot "
        "of the same 2 cores. Plain task runs cost 5-15 ms each, so they are measured at "
        "the smallest size of each workload only; a ratio at a larger n divides by their "
        "throughput there (`plain extrapolated`; their cost per task grows with n, so this "
        "flatters them). Dask rows use a LocalCluster of 2 workers x 1 thread; the Dask "
        "floor runs commands at about 200/s here, so Dask commands stop at 2,000 and Dask "
        "python at 10,000; `concurrent` commands stop at 10,000. `sleep-ensemble-dask` runs "
        "the members on one Dask worker process with one thread per member (the flow "
        "process holds the client only); `sleep-ensemble-concurrent` on `max_workers=n` "
        "(the commands are waited for on the backend's event loop, in the flow process); "
        "`sleep-threadpool` is "
        "ThreadPoolTaskRunner(max_workers=n) with plain task runs of the same command.",
        *([FINDINGS.read_text().rstrip()] if FINDINGS.exists() else []),
        END,
        "",
    ])


def write_docs(text: str, out: Path) -> None:
    """The section in out/benchmarks.md; for docs/, also the copy `bench/run.py` includes."""
    replace_section(text, out, BEGIN, END, SECTION)


def plot(summary: dict[Any, Any], ratios: list[list[str]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    ax = axes[0]
    labels, values, colors = [], [], []
    palette = {"ensemble": "tab:green", "plain": "tab:red", "api": "tab:gray",
               "raw": "tab:blue"}
    for (row, workload, n), e in sorted(summary.items()):
        if "throughput" in e and not row.startswith("sleep"):
            labels.append(f"{row} {workload} n={n}")
            values.append(e["throughput"])
            colors.append(palette.get(row.split("-")[0], "tab:purple"))
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("members (or tasks) per second, median of the timed window")
    ax.set_title("Throughput (green ensemble_map, red plain task runs, grey API floor)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax = axes[1]
    judged = [r for r in ratios if r[3] != "-" and r[5].split(";")[0] in ("MET", "MISSED")]
    ax.barh(range(len(judged)), [float(r[3][:-1]) for r in judged],
            color=["tab:green" if r[5].startswith("MET") else "tab:red" for r in judged])
    for i, r in enumerate(judged):
        target = float(r[4].split()[1][:-1])
        ax.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.set_yticks(range(len(judged)), [f"{r[0]}\n{r[1]} n={r[2]}" for r in judged], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_title("Judged ratios (black bar: target)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    summary = summarize(results)
    ratios = verdicts(summary, meta["settings"])
    table = measurement_rows(summary)
    memory = memory_rows(results, meta["settings"])
    print()
    print(text_table(MEASURE_HEADER, table))
    print()
    print(text_table(RATIO_HEADER, ratios))
    print()
    print(text_table(MEMORY_HEADER, memory) if memory else "(no memory rows)")
    print(f"\nwall time {meta['wall'] / 60:.1f} min")
    out.mkdir(parents=True, exist_ok=True)
    write_docs(section(meta, ratios, table, memory), out)
    plot(summary, ratios, out / "benchmarks-ensemble.png",
         f"ensemble_map ({'quick' if meta['quick'] else 'full'}; medians, 2-core host)")
    print(f"wrote the ensemble section of {out / 'benchmarks.md'} and "
          f"{out / 'benchmarks-ensemble.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke variant")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--only", default="", help="families: concurrent,dask,radical_pilot,sleep")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--group", action="append", default=[],
                        help="run only FAMILY:WORKLOAD:N (repeatable)")
    parser.add_argument("--merge", type=Path, default=None,
                        help="a results.json of an earlier run: its results are kept, except "
                             "those of the groups run now")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--from-results", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args.child)
    if args.from_results is not None:
        saved = json.loads(args.from_results.read_text())
        render(saved["results"], saved["meta"], args.out)
        return 0
    started, measured_at = time.monotonic(), f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    groups, settings = plan(args.quick)
    if args.only:
        groups = [g for g in groups if g[0] in args.only.split(",")]
    if args.group:
        groups = [g for g in groups if f"{g[0]}:{g[1]}:{g[2]}" in args.group]
    work = Path(tempfile.mkdtemp(prefix="rhapsody-bench-ensemble-"))
    env = base_env(work)
    os.environ.update(env)
    os.environ.pop("PREFECT_API_URL", None)
    log = work / "children.log"
    print(f"work dir {work} (child logs: {log})", flush=True)
    results: list[dict[str, Any]] = []
    try:
        with prefect_server(env, work / "server.log", timeout=900) as api_url:
            env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"] = api_url
            with dask_cluster() as cluster:
                for index, (family, workload, n, rows) in enumerate(groups, 1):
                    print(f"[{index}/{len(groups)}] {family} {workload} n={n}: "
                          f"{', '.join(rows)}", flush=True)
                    for repeat in range(args.repeats):
                        for row in rows if repeat % 2 == 0 else tuple(reversed(rows)):
                            work_dir = Path(tempfile.mkdtemp(prefix=f"{row}-", dir=work))
                            spec = {"row": row, "workload": workload, "n": n,
                                    "dask_address": cluster.scheduler_address,
                                    "rp_cores": RP_CORES, "work_dir": str(work_dir),
                                    "sleep_seconds": settings["sleep_seconds"]}
                            begun = time.monotonic()
                            result = run_child(spec, env, log)
                            if "Service Unavailable" in result.get("error", ""):
                                # The server still digests an earlier run's events: wait, retry.
                                server_settle(api_url, max_seconds=180)
                                result = run_child(spec, env, log)
                            shutil.rmtree(work_dir, ignore_errors=True)
                            result.update(row=row, workload=workload, n=n, repeat=repeat)
                            results.append(result)
                            shown = (f"{result['seconds']:.2f}s ({n / result['seconds']:.1f}/s)"
                                     if "seconds" in result else result.get("error"))
                            print(f"    {row:<26} #{repeat + 1}: {shown}  "
                                  f"[{time.monotonic() - begun:.0f}s wall]", flush=True)
                            server_settle(api_url)
    finally:
        if args.merge is not None:
            earlier = json.loads(args.merge.read_text())
            again = {(g[1], g[2], row) for g in groups for row in g[3]}
            results = [r for r in earlier["results"]
                       if (r["workload"], r["n"], r["row"]) not in again] + results
            measured_at = earlier["meta"]["measured_at"] + f" (some rows {measured_at})"
            started -= earlier["meta"]["wall"]
        meta = {"quick": args.quick, "settings": settings, "measured_at": measured_at,
                "wall": time.monotonic() - started,
                "load": [load_start, " ".join(f"{x:.2f}" for x in os.getloadavg())]}
        (work / "results.json").write_text(json.dumps({"results": results, "meta": meta},
                                                      indent=1))
    render(results, meta, args.out)
    print(f"raw results in {work / 'results.json'}")
    failed = [r for r in results if "error" in r]
    return 1 if failed and args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
