"""A killed flow process leaves nothing running (issue 13, part 1).

Each test runs a real Prefect flow in a subprocess (against a real `prefect
server`, so the flow process has no API server child of its own), waits until
its backend tasks run, SIGKILLs the flow process, and polls the process table
until nothing the flow started is alive: the deadline is the guarantee's 30 s.
"Started by the flow" is every descendant of the flow process just before the
kill, plus the pids the tasks wrote (a Dask worker's or a pilot's commands are
not the flow's descendants). The `normal` tests check that a flow that ends
cleanly still terminates its backend as before, and that its watchdog exits
without ending anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from rhapsody_prefect.core.guard import LOG_ENV
from tests.helpers import pid_alive, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.server]

REPO = pathlib.Path(__file__).resolve().parents[2]
DEADLINE = 30.0  # seconds: the guarantee

FLOW = textwrap.dedent("""
    import json, os, pathlib, sys, time
    from prefect import flow, task
    from rhapsody_prefect import RhapsodyRunner, executable_task

    @executable_task
    def sleeper(pids: str, seconds: int) -> list[str]:
        return ["/bin/sh", "-c", f"echo $$ >> {pids}; exec /bin/sleep {seconds}"]

    @task
    def python_sleeper(pids: str, seconds: int) -> int:
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(seconds)
        return seconds

    def main(scenario, mode, out, options, tasks):
        pids = str(pathlib.Path(out) / "pids")
        seconds = 300 if mode == "kill" else 0
        body = python_sleeper if scenario == "concurrent-process" else sleeper

        @flow(task_runner=RhapsodyRunner(options.pop("backend"), **options))
        def orphan_maker() -> list:
            futures = [body.submit(pids, seconds) for _ in range(tasks)]
            return [future.result() for future in futures]

        orphan_maker()
        print("flow finished", flush=True)

    if __name__ == "__main__":  # a LocalCluster's spawned workers import this module
        scenario, mode, out, options, tasks = sys.argv[1:6]
        main(scenario, mode, out, json.loads(options), int(tasks))
""")


def alive(process: psutil.Process) -> bool:
    """Still the same process, and not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watchdog_pids(log: pathlib.Path, event: str) -> set[int]:
    text = log.read_text() if log.exists() else ""
    return {int(m) for m in re.findall(rf"watchdog (\d+): {event}", text)}


class FlowRun:
    """The flow script in a subprocess of its own, and what it started."""

    def __init__(self, tmp: pathlib.Path, server: Any, scenario: str, mode: str,
                 options: dict[str, Any], tasks: int) -> None:
        self.tmp = tmp
        self.tasks = tasks
        self.pids_file = tmp / "pids"
        self.log = tmp / "watchdog.log"
        script = tmp / "flow.py"
        script.write_text(FLOW)
        bin_dir = str(pathlib.Path(sys.executable).parent)
        env = {**server.env, LOG_ENV: str(self.log),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
               "VIRTUAL_ENV": sys.prefix}
        self.stderr = tmp / "flow.stderr"
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(script), scenario, mode, str(tmp), json.dumps(options),
                 str(tasks)],
                cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
            )
        self.started: list[psutil.Process] = []
        self.names: dict[int, str] = {}

    def task_pids(self) -> list[int]:
        text = self.pids_file.read_text() if self.pids_file.exists() else ""
        return [int(p) for p in text.split()]

    def wait_for_tasks(self, timeout: float) -> list[int]:
        ok = wait_until(lambda: len(self.task_pids()) >= self.tasks or
                        self.process.poll() is not None, timeout=timeout, interval=0.2)
        assert ok and self.process.poll() is None, f"tasks never ran:\n{self.stderr_tail()}"
        return self.task_pids()

    def snapshot(self, also: list[int]) -> None:
        """Everything the flow started, as of now (same pid and start time later)."""
        found = {p.pid: p for p in psutil.Process(self.process.pid).children(recursive=True)}
        for pid in also:
            with contextlib.suppress(psutil.Error):
                found.setdefault(pid, psutil.Process(pid))
        self.started = list(found.values())
        self.names = {}
        for process in self.started:
            with contextlib.suppress(psutil.Error):
                self.names[process.pid] = process.name()

    def kill_and_measure(self) -> float:
        """SIGKILL the flow process; seconds until nothing it started is alive."""
        killed = time.monotonic()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        deadline = killed + DEADLINE
        while time.monotonic() < deadline and any(alive(p) for p in self.started):
            time.sleep(0.1)
        elapsed = time.monotonic() - killed
        left = [f"{p.pid} {p.cmdline()}" for p in self.started if alive(p)]
        assert not left, (f"alive {DEADLINE:.0f} s after the SIGKILL: {left}\n"
                          f"watchdog log:\n{self.log_text()}")
        return elapsed

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no watchdog log)"

    def stderr_tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        for process in self.started:
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.fixture
def flow_run(tmp_path: pathlib.Path, prefect_server) -> Iterator[Any]:
    runs: list[FlowRun] = []

    def start(scenario: str, mode: str, options: dict[str, Any], tasks: int) -> FlowRun:
        run = FlowRun(tmp_path, prefect_server, scenario, mode, options, tasks)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def kill_scenario(flow_run, scenario: str, options: dict[str, Any], tasks: int,
                  start_timeout: float = 180) -> FlowRun:
    run = flow_run(scenario, "kill", options, tasks)
    pids = run.wait_for_tasks(start_timeout)
    run.snapshot(also=pids)
    assert all(pid_alive(p) for p in pids)
    elapsed = run.kill_and_measure()
    print(f"\n{scenario}: {len(run.started)} processes ({len(pids)} tasks) ended "
          f"{elapsed:.1f} s after the SIGKILL\n{run.log_text()}")
    return run


def normal_scenario(flow_run, scenario: str, options: dict[str, Any], tasks: int) -> None:
    run = flow_run(scenario, "normal", options, tasks)
    assert run.process.wait(300) == 0, run.stderr_tail()
    assert len(run.task_pids()) == tasks
    watching = watchdog_pids(run.log, "watching")
    assert watching, f"no watchdog started:\n{run.log_text()}"
    assert wait_until(lambda: not any(pid_alive(p) for p in watching), timeout=DEADLINE)
    text = run.log_text()
    assert not re.search(r"ending [1-9]|started \[", text), f"a watchdog acted:\n{text}"
    assert "bye: nothing to end" in text, text
    script = str(run.tmp / "flow.py")  # a helper forked from the flow shares its command line

    def forks_left() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"])
                if script in (p.info["cmdline"] or []) and alive(p)]

    assert wait_until(lambda: not forks_left(), timeout=DEADLINE), forks_left()


# ---------------------------------------------------------------- concurrent
CONCURRENT_THREAD = {"backend": "concurrent", "max_workers": 3}
CONCURRENT_PROCESS = {"backend": "concurrent", "max_workers": 2, "executor": "process"}


def test_concurrent_threads_three_sleeps(flow_run) -> None:
    """The issue's scenario: three `executable_task`s `/bin/sleep 300`, SIGKILL."""
    kill_scenario(flow_run, "concurrent-thread", CONCURRENT_THREAD, tasks=3)


def test_concurrent_process_workers(flow_run) -> None:
    run = kill_scenario(flow_run, "concurrent-process", CONCURRENT_PROCESS, tasks=2)
    assert {p.pid for p in run.started} >= set(run.task_pids())


@pytest.mark.parametrize("options", [CONCURRENT_THREAD, CONCURRENT_PROCESS],
                         ids=["thread", "process"])
def test_concurrent_normal_end(flow_run, options: dict[str, Any]) -> None:
    scenario = f"concurrent-{options.get('executor', 'thread')}"
    normal_scenario(flow_run, scenario, dict(options), tasks=3)


# ---------------------------------------------------------------------- dask
DASK_LOCAL = {"backend": "dask", "resources": {"workers": 2, "threads_per_worker": 1}}


@pytest.mark.dask
def test_dask_cluster_started_by_the_backend(flow_run) -> None:
    pytest.importorskip("distributed")
    run = kill_scenario(flow_run, "dask-local", DASK_LOCAL, tasks=2)
    workers = [pid for pid, name in run.names.items() if name.startswith("dask worker")]
    assert len(workers) == 2, run.names  # the cluster's worker processes ended too


@pytest.mark.dask
def test_dask_normal_end(flow_run) -> None:
    pytest.importorskip("distributed")
    normal_scenario(flow_run, "dask-local", DASK_LOCAL, tasks=2)


@pytest.mark.dask
def test_dask_user_cluster_stays_and_the_commands_end(flow_run, dask_pair_factory) -> None:
    pair = dask_pair_factory(nthreads=2, resources=None)
    cluster = [psutil.Process(pair.scheduler.pid), psutil.Process(pair.worker.pid),
               *psutil.Process(pair.worker.pid).children(recursive=True)]
    kill_scenario(flow_run, "dask-address", {"backend": "dask", "address": pair.address}, tasks=2)
    assert all(alive(p) for p in cluster), "the user's cluster must be left alone"
    from distributed import Client

    with Client(pair.address, set_as_default=False, timeout="30s") as client:
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3


# ------------------------------------------------------------- radical_pilot
@pytest.mark.radical_pilot
def test_radical_pilot_local(flow_run, tmp_path: pathlib.Path) -> None:
    processes = pytest.importorskip("rhapsody_prefect.backends.radical_pilot.processes")
    work_dir = tmp_path / "rp"
    run = flow_run("radical_pilot", "kill",
                   {"backend": "radical_pilot", "work_dir": str(work_dir), "raptor": False},
                   tasks=2)
    pids = run.wait_for_tasks(timeout=300)
    (run_dir,) = work_dir.iterdir()
    marked = [p for p, _ in processes.marked_processes(run_dir.name)]
    assert marked, "no RADICAL-Pilot process found for the run"
    run.snapshot(also=[*pids, *(p.pid for p in marked)])
    elapsed = run.kill_and_measure()
    assert list(processes.marked_processes(run_dir.name)) == []
    print(f"\nradical_pilot: {len(run.started)} processes ({len(marked)} marked) ended "
          f"{elapsed:.1f} s after the SIGKILL\n{run.log_text()}")


@pytest.mark.radical_pilot
def test_radical_pilot_normal_end(flow_run, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("rhapsody_prefect.backends.radical_pilot")
    options = {"backend": "radical_pilot", "work_dir": str(tmp_path / "rp"), "raptor": False}
    normal_scenario(flow_run, "radical_pilot", options, tasks=2)
    assert not list((tmp_path / "rp").glob("rhapsody.rp.*")), "terminate removes the run dir"


# ---------------------------------------------------------------------- slurm
BATCH_OWNER = textwrap.dedent("""
    import os, signal, subprocess, sys
    from rhapsody_prefect.core.guard import Guard

    guard = Guard("batch")
    job = subprocess.run(["sbatch", "--parsable", "-J", "rhapsody-orphan", "-o", os.devnull,
                          "--wrap", "sleep 300"], capture_output=True, text=True, check=True)
    job_id = job.stdout.strip().split(";")[0]
    # What a batch pilot's backend registers once it knows its job id.
    guard.on_death(["scancel", job_id], env={"SLURM_CONF": os.environ["SLURM_CONF"]})
    print(job_id, flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)
""")


def job_state(job_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip()


@pytest.mark.slurm
def test_batch_job_is_cancelled_when_its_owner_dies(slurm_cluster, tmp_path: pathlib.Path) -> None:
    """A batch job registered with `Guard.on_death(["scancel", id])` leaves the queue."""
    script = tmp_path / "owner.py"
    script.write_text(BATCH_OWNER)
    log = tmp_path / "watchdog.log"
    env = {**os.environ, **slurm_cluster.env, LOG_ENV: str(log),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    owner = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, text=True)
    assert owner.stdout is not None and owner.stdin is not None
    job_id = owner.stdout.readline().strip()
    try:
        assert job_id.isdigit(), f"sbatch failed: {job_id!r}"
        assert wait_until(lambda: job_state(job_id) == "RUNNING", timeout=60), job_state(job_id)
        killed = time.monotonic()
        owner.stdin.write("\n")
        owner.stdin.flush()
        assert owner.wait(30) == -signal.SIGKILL
        assert wait_until(lambda: job_state(job_id) in ("", "CANCELLED", "COMPLETING"),
                          timeout=DEADLINE), f"{job_state(job_id)}\n{log.read_text()}"
        print(f"\nslurm: job {job_id} left the queue {time.monotonic() - killed:.1f} s after "
              "the SIGKILL of its owner")
        assert "started ['scancel'" in log.read_text()
    finally:
        subprocess.run(["scancel", job_id], check=False, capture_output=True)
        if owner.poll() is None:
            owner.kill()
