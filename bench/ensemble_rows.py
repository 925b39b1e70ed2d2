"""The rows of the ensemble benchmark (`bench/ensemble.py`), one measurement each.

Every measurement runs in a fresh child process and reports seconds (the timed
window), completed members, CPU seconds and RSS of this process (the flow side):

- `ensemble-<backend>`: `ensemble_map(task, range(n))` in a flow on RhapsodyRunner
  (artifacts on, the default), after a warm-up ensemble of one member;
- `plain-<backend>`: the same `n` as plain task runs (`task.submit`), via `bench.workloads`;
- `api-<backend>`: the backend's API floor (task dicts, no Prefect), via `bench.workloads`;
- `raw-rp`: raw RADICAL-Pilot on an equal pilot, via `bench.workloads`;
- `sleep-*`: `n` members that each run `sleep S`, all executing at once: flow-side
  threads (peak), memory and CPU seconds from submit to all done.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

from bench.workloads import (
    RssSampler,
    pilot_active_seconds,
    rp_backend_kwargs,
    run_api,
    run_prefect,
    run_raw_rp,
)

#: row -> (backend family, description)
ROWS: dict[str, tuple[str, str]] = {
    "ensemble-concurrent": ("concurrent", 'ensemble_map on RhapsodyRunner("concurrent")'),
    "plain-concurrent": ("concurrent", 'plain task runs on RhapsodyRunner("concurrent")'),
    "api-concurrent": ("concurrent", 'RHAPSODY API get_backend("concurrent") (floor)'),
    "ensemble-dask": ("dask", 'ensemble_map on RhapsodyRunner("dask", address=...)'),
    "plain-dask": ("dask", 'plain task runs on RhapsodyRunner("dask", address=...)'),
    "api-dask": ("dask", 'RHAPSODY API get_backend("dask", address=...) (floor)'),
    "ensemble-rp": ("radical_pilot", 'ensemble_map on RhapsodyRunner("radical_pilot")'),
    "raw-rp": ("radical_pilot", "raw RADICAL-Pilot (Session/TaskManager), equal pilot"),
    "sleep-ensemble-dask": ("sleep", "ensemble_map on a Dask worker with one thread per member"),
    "sleep-ensemble-concurrent": ("sleep", 'ensemble_map on RhapsodyRunner("concurrent", '
                                           "max_workers=n)"),
    "sleep-threadpool": ("sleep", "ThreadPoolTaskRunner(max_workers=n), plain task runs"),
}


def runner_kwargs(row: str, workload: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if row.endswith("-dask"):
        return "dask", {"address": options["dask_address"]}
    if row.endswith("-rp"):
        return "radical_pilot", rp_backend_kwargs(workload, options)
    return "concurrent", {}


def run_ensemble(row: str, workload: str, n: int, options: dict[str, Any]) -> dict[str, Any]:
    """A flow: a warm-up ensemble of one member, then the timed ensemble of `n`."""
    from prefect import flow
    from prefect.context import get_run_context

    from bench.prefect_tasks import noop_task, true_task
    from rhapsody_prefect import RhapsodyRunner, ensemble_map

    member = noop_task if workload == "python" else true_task
    name, kwargs = runner_kwargs(row, workload, options)
    sampler = RssSampler()

    @flow(name=f"bench-{row}-{workload}-{n}", task_runner=RhapsodyRunner(name, **kwargs))
    def bench_flow() -> dict[str, Any]:
        ensemble_map(member, [-1]).result()
        active = pilot_active_seconds(getattr(getattr(
            get_run_context().task_runner, "_dispatcher", None), "backend", None))
        sampler.reset()
        start = time.perf_counter()
        results = ensemble_map(member, range(n), allow_failures=True).result()
        seconds = time.perf_counter() - start
        cpu = sampler.end()
        completed = sum(1 for r in results if not isinstance(r, BaseException))
        return {"seconds": seconds, "cpu_seconds": cpu, "completed": completed,
                "active_seconds": active}

    total = time.perf_counter()
    result = bench_flow()
    result["flow_seconds"] = time.perf_counter() - total
    result["rss_base"], result["rss_peak"] = sampler.stop()
    return result


class ThreadSampler:
    """Peak thread count of this process, sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._process.num_threads())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_sleep(row: str, workload: str, n: int, options: dict[str, Any]) -> dict[str, Any]:
    """`n` members running `sleep S` at once: threads, memory, CPU on the flow side."""
    from prefect import flow
    from prefect.futures import wait
    from prefect.task_runners import ThreadPoolTaskRunner

    from rhapsody_prefect import RhapsodyRunner, ensemble_map, executable_task

    seconds_each = options["sleep_seconds"]

    @executable_task(name="sleeper")
    def sleeper(i: int) -> list[str]:
        return ["/bin/sleep", str(seconds_each)]

    cluster = None
    if row == "sleep-threadpool":
        runner: Any = ThreadPoolTaskRunner(max_workers=n)
    elif row == "sleep-ensemble-concurrent":
        runner = RhapsodyRunner("concurrent", max_workers=n)
    else:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=n, processes=True,
                               dashboard_address=None)
        runner = RhapsodyRunner("dask", address=cluster.scheduler_address)
    sampler = RssSampler()
    threads: dict[str, int] = {}

    @flow(name=f"bench-{row}-{n}", task_runner=runner)
    def bench_flow() -> dict[str, Any]:
        threads["before"] = psutil.Process().num_threads()
        sampler.reset()
        counter = ThreadSampler()
        start = time.perf_counter()
        if row == "sleep-threadpool":
            futures = [sleeper.submit(i) for i in range(n)]
            wait(futures)
            completed = sum(1 for f in futures if f.state.is_completed())
        else:
            results = ensemble_map(sleeper, range(n), allow_failures=True).result()
            completed = sum(1 for r in results if not isinstance(r, BaseException))
        seconds = time.perf_counter() - start
        cpu = sampler.end()
        threads["peak"] = counter.stop()
        return {"seconds": seconds, "cpu_seconds": cpu, "completed": completed}

    try:
        result = bench_flow()
    finally:
        if cluster is not None:
            cluster.close()
    result["rss_base"], result["rss_peak"] = sampler.stop()
    result["threads_before"], result["threads_peak"] = threads["before"], threads["peak"]
    return result


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    row, workload, n = spec["row"], spec["workload"], spec["n"]
    if row.startswith("sleep-"):
        return run_sleep(row, workload, n, spec)
    if row.startswith("ensemble-"):
        return run_ensemble(row, workload, n, spec)
    if row == "raw-rp":
        return run_raw_rp(row, workload, n, spec)
    if row.startswith("plain-"):
        peer = {"plain-concurrent": "rhapsody-concurrent", "plain-dask": "rhapsody-dask"}[row]
        return run_prefect(peer, workload, n, spec)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return run_api(row, workload, n, spec)


__all__ = ["ROWS", "measure"]
