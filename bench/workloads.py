"""The benchmarked workloads and the rows that run them, one measurement each.

Every measurement runs in a fresh child process (`bench/child.py`), so that
flow-side memory is that run's alone. A measurement:

1. starts its runner/backend and runs one warm-up task (backend, pilot, pool and
   Prefect's client are up: start-up cost is not part of the timed window);
2. times submitting `n` tasks and waiting for all of them (the *timed window*),
   while a thread samples the process's RSS every 10 ms;
3. reports seconds, completed count, baseline RSS and peak RSS.

Workloads: `python` (a trivial function task returning its argument) and `exec`
(`/bin/true` as an executable task: `executable_task` under Prefect runners, a
task dict with `executable` on the RHAPSODY API, a TaskDescription on raw RP).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

WORKLOADS = ("python", "exec")
TRUE = "/bin/true"

#: Row name -> (backend family, what it is). Prefect rows run a flow.
ROWS: dict[str, tuple[str, str]] = {
    "rhapsody-concurrent": ("concurrent", 'RhapsodyRunner("concurrent")'),
    "prefect-threadpool": ("concurrent", "ThreadPoolTaskRunner"),
    "prefect-processpool": ("concurrent", "ProcessPoolTaskRunner"),
    "api-concurrent": ("concurrent", 'RHAPSODY API get_backend("concurrent") (floor)'),
    "rhapsody-dask": ("dask", 'RhapsodyRunner("dask", address=...)'),
    "prefect-dask": ("dask", "prefect_dask.DaskTaskRunner(address=...)"),
    "api-dask": ("dask", 'RHAPSODY API get_backend("dask", address=...) (floor)'),
    "rhapsody-rp": ("radical_pilot", 'RhapsodyRunner("radical_pilot")'),
    "raw-rp": ("radical_pilot", "raw RADICAL-Pilot (Session/TaskManager)"),
    "api-rp": ("radical_pilot", 'RHAPSODY API get_backend("radical_pilot") (floor)'),
}
PREFECT_ROWS = {"rhapsody-concurrent", "prefect-threadpool", "prefect-processpool",
                "rhapsody-dask", "prefect-dask", "rhapsody-rp"}


def noop(i: int) -> int:
    """The trivial Python task body."""
    return i


class RssSampler:
    """Samples this process's RSS in a daemon thread; `peak` since the last `reset`."""

    def __init__(self, interval: float = 0.01) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self.cpu_start = self._cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def _cpu(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def reset(self) -> None:
        """Start of the timed window: RSS baseline and CPU time."""
        self.baseline = self.peak = self._process.memory_info().rss
        self.cpu_start = self._cpu()

    def end(self) -> float:
        """End of the timed window: CPU seconds this process used in it (all threads)."""
        return self._cpu() - self.cpu_start

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return self.baseline, self.peak


# ------------------------------------------------------------------ Prefect rows
#: The running measurement's sampler (a global: the flow must not close over a lock,
#: ProcessPoolTaskRunner pickles the flow run's context).
_SAMPLER: RssSampler | None = None


def current_sampler() -> RssSampler:
    """The running measurement's sampler (module level: pickled by reference)."""
    assert _SAMPLER is not None
    return _SAMPLER


def make_runner(row: str, workload: str, options: dict[str, Any]) -> Any:
    """The task runner a Prefect row uses."""
    if row == "rhapsody-concurrent":
        from rhapsody_prefect import RhapsodyRunner
        return RhapsodyRunner("concurrent", **options.get("runner_kwargs", {}))
    if row == "prefect-threadpool":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    if row == "prefect-processpool":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner()
    if row == "rhapsody-dask":
        from rhapsody_prefect import RhapsodyRunner

        return RhapsodyRunner(
            "dask", address=options["dask_address"], **options.get("runner_kwargs", {})
        )
    if row == "prefect-dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=options["dask_address"])
    if row == "rhapsody-rp":
        from rhapsody_prefect import RhapsodyRunner

        return RhapsodyRunner(
            "radical_pilot", **rp_backend_kwargs(workload, options),
            **options.get("runner_kwargs", {}),
        )
    raise ValueError(f"not a Prefect row: {row}")


#: The resource label of the Slurm cluster `bench/slurm.py` starts (an inline config).
SLURM_LABEL = "benchsite.slurm"


def rp_backend_kwargs(workload: str, options: dict[str, Any]) -> dict[str, Any]:
    """The radical_pilot backend's options: a pilot of `rp_cores` cores for tasks.

    With `rp_slurm` ({"entry": resource config, "nodes": n}, from bench/slurm.py): a
    pilot of n nodes of the local Slurm cluster instead.
    """
    slurm = options.get("rp_slurm")
    if slurm:
        return {"resources": {"resource": SLURM_LABEL, "nodes": slurm["nodes"], "runtime": 30},
                "resource_config": slurm["entry"], "work_dir": options["work_dir"],
                "raptor": workload == "python"}
    return {
        "resources": {"cores": options["rp_cores"], "runtime": 60},
        "work_dir": options["work_dir"],
        "raptor": workload == "python",
    }


def run_prefect(row: str, workload: str, n: int, options: dict[str, Any]) -> dict[str, Any]:
    """One flow run: warm-up task, then `n` tasks submitted and waited for."""
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.futures import wait

    from bench.prefect_tasks import noop_task, true_task

    bench_task = noop_task if workload == "python" else true_task
    global _SAMPLER
    sampler = _SAMPLER = RssSampler()

    @flow(name=f"bench-{row}-{workload}-{n}", task_runner=make_runner(row, workload, options))
    def bench_flow() -> dict[str, Any]:
        sampler = current_sampler()
        warm = bench_task.submit(-1)
        warm.wait()
        if not warm.state.is_completed():
            raise RuntimeError(f"warm-up task ended {warm.state!r}")
        active = pilot_active_seconds(getattr(getattr(
            get_run_context().task_runner, "_dispatcher", None), "backend", None))
        sampler.reset()
        start = time.perf_counter()
        futures = [bench_task.submit(i) for i in range(n)]
        wait(futures)
        seconds = time.perf_counter() - start
        cpu = sampler.end()
        completed = sum(1 for future in futures if future.state.is_completed())
        return {"seconds": seconds, "cpu_seconds": cpu, "completed": completed,
                "active_seconds": active}

    total = time.perf_counter()
    result = bench_flow()
    result["flow_seconds"] = time.perf_counter() - total
    result["rss_base"], result["rss_peak"] = sampler.stop()
    return result


# ------------------------------------------------------------- RHAPSODY API rows
def api_specs(workload: str, n: int, first: int = 0) -> list[dict[str, Any]]:
    if workload == "python":
        return [{"uid": f"t{i}", "function": noop, "args": (i,)} for i in range(first, first + n)]
    return [{"uid": f"t{i}", "executable": TRUE} for i in range(first, first + n)]


def run_api(row: str, workload: str, n: int, options: dict[str, Any]) -> dict[str, Any]:
    """The RHAPSODY API alone: get_backend(...).submit_tasks / wait, no Prefect."""
    from rhapsody_prefect import TaskState, get_backend

    name = {"api-concurrent": "concurrent", "api-dask": "dask", "api-rp": "radical_pilot"}[row]
    kwargs: dict[str, Any] = {}
    if name == "dask":
        kwargs = {"address": options["dask_address"]}
    elif name == "radical_pilot":
        kwargs = rp_backend_kwargs(workload, options)
    sampler = RssSampler()

    async def main() -> dict[str, Any]:
        backend = get_backend(name, **kwargs)
        try:
            await backend.submit_tasks(api_specs(workload, 1, first=-1))
            await backend.wait()
            active = pilot_active_seconds(backend)
            sampler.reset()
            start = time.perf_counter()
            specs = api_specs(workload, n)
            await backend.submit_tasks(specs)
            await backend.wait()
            seconds = time.perf_counter() - start
            cpu = sampler.end()
            completed = sum(1 for s in specs if s.get("state") == TaskState.COMPLETED)
        finally:
            await backend.terminate()
        return {"seconds": seconds, "cpu_seconds": cpu, "completed": completed,
                "active_seconds": active}

    total = time.perf_counter()
    result = asyncio.run(main())
    result["flow_seconds"] = time.perf_counter() - total
    result["rss_base"], result["rss_peak"] = sampler.stop()
    return result


# ------------------------------------------------------------------ raw RP row
def run_raw_rp(row: str, workload: str, n: int, options: dict[str, Any]) -> dict[str, Any]:
    """Raw RADICAL-Pilot: one session, a pilot of `rp_cores` cores, /bin/true tasks."""
    if workload != "exec":
        raise ValueError("raw RADICAL-Pilot is measured with executable tasks only")
    import radical.pilot as rp

    work_dir = options["work_dir"]
    slurm = options.get("rp_slurm")
    if slurm:  # the same pilot as rp_backend_kwargs: n nodes of the local Slurm cluster
        description = {"resource": SLURM_LABEL, "nodes": slurm["nodes"], "runtime": 30,
                       "exit_on_error": False}
        _user_config(work_dir, "resource_benchsite.json", {"slurm": slurm["entry"]})
        os.environ["HOME"] = os.path.join(work_dir, "home")  # psij's ~/.psij, as the backend
        os.makedirs(os.environ["HOME"], exist_ok=True)
    else:
        description = {"resource": "local.localhost", "cores": options["rp_cores"],
                       "runtime": 60, "exit_on_error": False,
                       "sandbox": os.path.join(work_dir, "sandbox")}
        _size_local_node(work_dir, options["rp_cores"])
    sampler = RssSampler()
    total = time.perf_counter()
    session = rp.Session(cfg={"base": work_dir, "path": work_dir, "client_sandbox": work_dir})
    try:
        pmgr = rp.PilotManager(session=session)
        tmgr = rp.TaskManager(session=session)
        pilot = pmgr.submit_pilots(rp.PilotDescription(description))
        submitted = time.perf_counter()
        tmgr.add_pilots(pilot)
        pilot.wait([rp.PMGR_ACTIVE, *rp.FINAL], timeout=900)
        active = time.perf_counter() - submitted

        def describe(i: int) -> Any:
            return rp.TaskDescription({"uid": f"task.{i + 1:06d}", "executable": TRUE})

        warm = tmgr.submit_tasks([describe(-1)])
        tmgr.wait_tasks(uids=[t.uid for t in warm])
        if warm[0].state != rp.DONE:
            raise RuntimeError(f"warm-up task ended {warm[0].state}")
        sampler.reset()
        start = time.perf_counter()
        tasks = tmgr.submit_tasks([describe(i) for i in range(n)])
        tmgr.wait_tasks(uids=[t.uid for t in tasks])
        seconds = time.perf_counter() - start
        cpu = sampler.end()
        completed = sum(1 for t in tasks if t.state == rp.DONE)
    finally:
        session.close(download=False)
    result: dict[str, Any] = {"seconds": seconds, "cpu_seconds": cpu, "completed": completed,
                              "active_seconds": active}
    result["flow_seconds"] = time.perf_counter() - total
    result["rss_base"], result["rss_peak"] = sampler.stop()
    return result


def _size_local_node(work_dir: str, cores: int) -> None:
    """Make local.localhost a node of `cores` cores, as the radical_pilot backend does.

    RP's built-in local.localhost pretends to be one 8-core node and a pilot gets whole
    nodes, so `cores=2` alone would give raw RP 8 cores against the backend's 2.
    """
    _user_config(work_dir, "resource_local.json", {"localhost": {
        "cores_per_node": cores, "gpus_per_node": 0, "fake_resources": True}})


def _user_config(work_dir: str, name: str, entries: dict[str, Any]) -> None:
    """Raw RP's user resource config `name` (RADICAL_CONFIG_USER_DIR in work_dir)."""
    config_dir = os.path.join(work_dir, "raw-rp-config")
    configs = os.path.join(config_dir, ".radical", "pilot", "configs")
    os.makedirs(configs, exist_ok=True)
    with open(os.path.join(configs, name), "w") as stream:
        json.dump(entries, stream)
    os.environ["RADICAL_CONFIG_USER_DIR"] = config_dir


def pilot_active_seconds(backend: Any) -> float | None:
    """Seconds from the pilot's submission to active, for a radical_pilot backend."""
    timings = getattr(backend, "timings", None) or {}
    if "pilot_active" in timings and "pilot_submitted" in timings:
        return round(timings["pilot_active"] - timings["pilot_submitted"], 3)
    return None


def runner_for(row: str) -> Callable[[str, str, int, dict[str, Any]], dict[str, Any]]:
    if row in PREFECT_ROWS:
        return run_prefect
    if row == "raw-rp":
        return run_raw_rp
    return run_api
