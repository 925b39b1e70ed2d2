"""Benchmark of several backends in one flow (issue 24): a two-backend runner against one backend.

    .venv/bin/python bench/several_backends.py            # 2,000 task runs, 3 repeats (~6 min)
    .venv/bin/python bench/several_backends.py --quick    # CI smoke: 100 task runs, 1 repeat

Each row is one flow of N trivial Python task runs (`task.submit`) in a fresh child
process, against one `prefect server` all rows share (as bench/run.py does), rows
interleaved and the order reversed every repeat; medians compared. Rows: `one
backend` (`RhapsodyRunner("concurrent", max_workers=2)`) and `two backends`
(`backends=` two `concurrent` backends of `max_workers=1` each, the same two slots),
half the task runs routed to the second by the tag `rhapsody:b`. The one-backend
row tags the same half with a tag that routes nothing, so both rows pay for the same
`with_options` and tags. The ratio is throughput, two backends / one (target >= 0.95x).
Prints the table and writes the section "Several backends in one flow" of
docs/benchmarks.md (`--out DIR` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.env import REPO, base_env, prefect_server, server_settle
from bench.report import replace_section

BEGIN, END = "<!-- several-backends:begin -->", "<!-- several-backends:end -->"
ROWS = ("one backend", "two backends")
TARGET = 0.95

CHILD = r'''
import json, sys, time
from prefect import flow, task
from prefect.futures import wait
from rhapsody_prefect import RhapsodyRunner

count, row = int(sys.argv[1]), sys.argv[2]

@task
def noop(i: int) -> int:
    return i

if row == "one backend":
    runner = RhapsodyRunner("concurrent", max_workers=2, executor="thread")
    halves = [noop, noop.with_options(tags=["bench-half"])]
else:
    one_slot = {"backend": "concurrent", "max_workers": 1, "executor": "thread"}
    runner = RhapsodyRunner(backends={"a": one_slot, "b": one_slot}, default="a")
    halves = [noop, noop.with_options(tags=["rhapsody:b"])]

@flow(task_runner=runner)
def many(n: int) -> dict:
    wait([half.submit(-1) for half in halves])  # both backends started, the engine warm
    start = time.perf_counter()
    futures = [halves[i % 2].submit(i) for i in range(n)]
    wait(futures)
    seconds = time.perf_counter() - start
    return {"seconds": seconds,
            "completed": sum(1 for f in futures if f.state.is_completed())}

print("RESULT " + json.dumps(many(count)))
'''


def measure(count: int, row: str, env: dict[str, str], work: Path) -> dict[str, float]:
    """One row in a fresh process, against the shared server."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(count), row], capture_output=True, text=True,
        env=env, cwd=work, timeout=1800,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            if result["completed"] != count:
                raise RuntimeError(f"{row}: {result['completed']} of {count} completed")
            return result
    raise RuntimeError(f"{row}: no result (exit {done.returncode})\n{done.stderr[-3000:]}")


def ratio(results: dict[str, list[dict[str, float]]]) -> float:
    one, two = (statistics.median(r["seconds"] for r in results[row]) for row in ROWS)
    return one / two


def section(count: int, results: dict[str, list[dict[str, float]]]) -> str:
    value = ratio(results)
    lines = [BEGIN, "## Several backends in one flow", "",
             f"{count} trivial Python task runs (`task.submit`) in one flow, half routed to a "
             "second backend by the tag `rhapsody:b`, against the same flow on one backend "
             "(`concurrent`, two slots either way); each row in a fresh process against one "
             f"`prefect server`, rows interleaved, medians of {len(results[ROWS[0]])} "
             f"repeat(s); `python bench/several_backends.py` ({time.strftime('%Y-%m-%d')}).",
             "", "| row | seconds | task runs per second | each repeat (s) |", "|---|---|---|---|"]
    for row in ROWS:
        runs = [r["seconds"] for r in results[row]]
        seconds = statistics.median(runs)
        lines.append(f"| {row} | {seconds:.2f} | {count / seconds:.0f} | "
                     f"{', '.join(f'{s:.2f}' for s in runs)} |")
    verdict = "met" if value >= TARGET else "missed"
    lines += ["", f"Throughput, two backends / one: **{value:.2f}x** (target >= {TARGET}x: "
              f"{verdict}). Routing a body costs a few dict look-ups and a scan of its task "
              "run's tags; the second backend adds its start (on the first body routed to "
              "it) and its own thread pool.", END, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 task runs, 1 repeat")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    options = parser.parse_args()
    count, repeats = (100, 1) if options.quick else (options.count, options.repeats)
    results: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    with tempfile.TemporaryDirectory(prefix="rhapsody-bench-several-") as work:
        home = Path(work)
        env = base_env(home)
        with prefect_server(env, home / "server.log") as api_url:
            env = {**env, "PREFECT_API_URL": api_url}
            for repeat in range(repeats):
                for row in ROWS if repeat % 2 == 0 else tuple(reversed(ROWS)):
                    server_settle(api_url)
                    row_dir = home / f"{repeat}-{row.replace(' ', '-')}-{os.getpid()}"
                    row_dir.mkdir()
                    results[row].append(measure(count, row, env, row_dir))
                    print(f"{row:<14} {count} {len(results[row])}/{repeats} "
                          f"{results[row][-1]['seconds']:.2f} s", flush=True)
    print(f"two backends / one backend  python {count} {ratio(results):.2f}x "
          f"(target >= {TARGET}x)")
    text = section(count, results)
    print(text)
    replace_section(text, options.out, BEGIN, END, REPO / "bench" / "several_backends_section.md")


if __name__ == "__main__":
    main()
