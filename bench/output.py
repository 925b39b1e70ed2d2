"""Benchmark of command output (issue 23): commands printing 100 KB each against printing nothing.

    .venv/bin/python bench/output.py            # 1,000 commands, 3 repeats (~2 min)
    .venv/bin/python bench/output.py --quick    # CI smoke: 50 commands, 1 repeat

One `ensemble_map` of N `executable_task` members on `concurrent` per row, each
row in a fresh child process (its peak RSS is the flow's peak memory), rows
interleaved and the order reversed every repeat; medians compared. Every row runs
the same pipeline (`head -c N /dev/zero | tr ...`), so only the bytes differ. Rows:
members printing nothing, 100 KB each (held whole: under the 1 MiB `output_limit`), and
100 KB each with `output_limit=10_000` (head and tail in the result, the rest in a
file). Prints the table and writes the section "Command output" of
docs/benchmarks.md (`--out DIR` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.env import REPO, base_env
from bench.report import replace_section

BEGIN, END = "<!-- output:begin -->", "<!-- output:end -->"
ROWS = {"silent": (0, None), "100 KB": (100_000, None), "100 KB, limit 10 KB": (100_000, 10_000)}

CHILD = r'''
import json, resource, sys, time
from prefect import flow
from rhapsody_prefect import RhapsodyRunner, ensemble_map, executable_task
count, size, limit, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
limit = None if limit == "none" else int(limit)

@executable_task
def member(index: int) -> dict:
    command = f"head -c {size} /dev/zero | tr '\\0' x"   # the same pipeline, 0 bytes or more
    task = {"executable": command, "shell": True, "output_dir": out_dir}
    if limit is not None:
        task["output_limit"] = limit
    return task

@flow(task_runner=RhapsodyRunner("concurrent", max_workers=2, artifacts=False))
def run() -> int:
    return sum(len(r.stdout) for r in ensemble_map(member, range(count)).result())

run()  # warm: the Prefect server and the first flow run
start = time.perf_counter()
held = run()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "held": held,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def measure(
    count: int, size: int, limit: int | None, home: Path, work: Path
) -> dict[str, float]:
    """One row in a fresh process; `home` (PREFECT_HOME, TMPDIR) is shared by the rows."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(count), str(size),
         "none" if limit is None else str(limit), str(work)],
        capture_output=True, text=True, env=base_env(home), cwd=work, timeout=1800,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def section(count: int, results: dict[str, list[dict[str, float]]]) -> str:
    silent = statistics.median(r["seconds"] for r in results["silent"])
    lines = [BEGIN, "## Command output", "",
             f"{count} `executable_task` members in one `ensemble_map` on `concurrent` "
             "(max_workers=2), each row in a fresh process, rows interleaved, medians of "
             f"{len(results['silent'])} repeat(s); `python bench/output.py` "
             f"({time.strftime('%Y-%m-%d')}).", "",
             "| members print | seconds | vs silent | flow peak RSS (MB) | held in results (MB) |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_mb"] for r in runs)
        held = runs[0]["held"] / 1e6
        lines.append(f"| {name} | {seconds:.2f} | {silent / seconds:.2f}x | {peak:.0f} | "
                     f"{held:.1f} |")
    lines += ["", "Ratios are throughput against the silent row (1.00x: no cost). The "
              "100 KB rows hold what the policy keeps: whole up to `output_limit` (1 MiB by "
              "default), so 1,000 x 100 KB stays in the results; `output_limit=10_000` "
              "keeps 10 KB each and the rest in files.", END, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 commands, 1 repeat")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    options = parser.parse_args()
    count, repeats = (50, 1) if options.quick else (options.count, options.repeats)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ROWS}
    with tempfile.TemporaryDirectory(prefix="rhapsody-bench-output-") as work:
        for repeat in range(repeats):
            order = list(ROWS) if repeat % 2 == 0 else list(reversed(ROWS))
            for name in order:
                size, limit = ROWS[name]
                row_dir = Path(work) / f"{repeat}-{list(ROWS).index(name)}"
                row_dir.mkdir()
                results[name].append(measure(count, size, limit, Path(work), row_dir))
                print(name, results[name][-1], flush=True)
    text = section(count, results)
    print(text)
    replace_section(text, options.out, BEGIN, END, REPO / "bench" / "output_section.md")


if __name__ == "__main__":
    main()
