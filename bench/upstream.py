"""Benchmark (issue 24 point 6): upstream concurrent under our engine vs its own Session.

    .venv/bin/python bench/upstream.py            # 2,000 function tasks, 5 repeats (~1 min)
    .venv/bin/python bench/upstream.py --quick    # CI smoke: 100 tasks, 1 repeat

The same function tasks on upstream RHAPSODY's `ConcurrentExecutionBackend`
(`rhapsody-py`), both on a ThreadPoolExecutor of the same size: through upstream's
own `rhapsody.api.Session` (submit_tasks + wait_tasks), and through this project's
RHAPSODY API (`get_backend("upstream.concurrent")`: the engine's validation,
attempts and callbacks, then the adapter). Rows alternate in one process, order
reversed every repeat; medians compared. Target: ours at least 0.9x upstream's.
Prints the table and writes the section "Upstream backends" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.env import REPO
from bench.report import replace_section

BEGIN, END = "<!-- upstream:begin -->", "<!-- upstream:end -->"
THREADS = 4


def square(x: int) -> int:
    return x * x


async def through_upstream_session(count: int) -> float:
    from rhapsody.api import ComputeTask, Session
    from rhapsody.backends.execution.concurrent import ConcurrentExecutionBackend

    backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(THREADS))
    async with Session(backends=[backend]) as session:
        tasks = [ComputeTask(function=square, args=(i,)) for i in range(count)]
        start = time.perf_counter()
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)
        seconds = time.perf_counter() - start
        assert [t["return_value"] for t in tasks] == [i * i for i in range(count)]
    return seconds


async def through_our_api(count: int) -> float:
    import rhapsody_prefect as rhapsody

    async with rhapsody.get_backend("upstream.concurrent") as backend:
        await backend.start()
        tasks = [{"function": square, "args": (i,)} for i in range(count)]
        start = time.perf_counter()
        await backend.submit_tasks(tasks)
        await backend.wait()
        seconds = time.perf_counter() - start
        assert [t["return_value"] for t in tasks] == [i * i for i in range(count)]
    return seconds


ROWS = {"upstream Session": through_upstream_session,
        "RHAPSODY API (upstream.concurrent)": through_our_api}


async def measure(count: int, repeats: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in ROWS}
    for row in ROWS.values():  # warm: imports, first pool threads
        await row(min(count, 50))
    for repeat in range(repeats):
        for name in (list(ROWS) if repeat % 2 == 0 else list(reversed(ROWS))):
            results[name].append(await ROWS[name](count))
            print(f"{name}: {count / results[name][-1]:.0f} tasks/s", flush=True)
    return results


def section(count: int, results: dict[str, list[float]]) -> str:
    rates = {name: count / statistics.median(runs) for name, runs in results.items()}
    ratio = rates["RHAPSODY API (upstream.concurrent)"] / rates["upstream Session"]
    lines = [BEGIN, "## Upstream backends", "",
             f"{count} function tasks on upstream `rhapsody-py`'s ConcurrentExecutionBackend "
             f"(ThreadPoolExecutor({THREADS})), rows alternating in one process, medians of "
             f"{len(results['upstream Session'])} repeat(s); `python bench/upstream.py` "
             f"({time.strftime('%Y-%m-%d')}).", "",
             "| path | tasks/s |", "|---|---|"]
    lines += [f"| {name} | {rate:.0f} |" for name, rate in rates.items()]
    lines += ["", f"RHAPSODY API / upstream Session: **{ratio:.2f}x** (target 0.9x).", END, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 tasks, 1 repeat")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    options = parser.parse_args()
    count, repeats = (100, 1) if options.quick else (options.count, options.repeats)
    results = asyncio.run(measure(count, repeats))
    text = section(count, results)
    print(text)
    replace_section(text, options.out, BEGIN, END, REPO / "bench" / "upstream_section.md")


if __name__ == "__main__":
    main()
