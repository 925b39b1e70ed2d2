"""RhapsodyRunner when things go wrong, and at scale (on the `concurrent` backend).

Backend-independent runner behaviour: runtime-registered backends, a backend
that cannot start, a body that kills its worker, SIGTERM of the flow process,
and thousands of in-flight tasks without a thread each.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import psutil
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import get_run_context

import rhapsody_prefect as rhapsody
from rhapsody_prefect import BackendError, RhapsodyRunner, TaskState
from rhapsody_prefect.backends.base import ExecutionBackend, Outcome
from tests.helpers import pid_alive, signal_flow_script, wait_until


class _UppercaseBackend(ExecutionBackend):
    """A user backend registered at run time: runs functions inline, uppercases str results."""

    backend_type = "uppercase"

    async def _launch(self, attempts):
        for attempt in attempts:
            spec = attempt.task
            self._report(attempt, TaskState.EXECUTING)
            try:
                value = spec["function"](*spec["args"], **spec["kwargs"])
            except Exception as error:
                self._report(attempt, Outcome.failed(error))
                continue
            self._report(attempt, Outcome.completed(value.upper()))


class _BrokenBackend(ExecutionBackend):
    backend_type = "broken"

    async def _start(self):
        raise OSError("no route to the batch system (test)")

    async def _launch(self, attempts):  # pragma: no cover - never started
        raise AssertionError


def test_backend_registered_at_run_time():
    rhapsody.register_backend("uppercase", _UppercaseBackend)

    @task
    def hello(name: str) -> str:
        return f"hello {name}"

    @flow(task_runner=RhapsodyRunner("uppercase"))
    def greet():
        return hello.submit("world").result()

    assert greet() == "HELLO WORLD"


def test_backend_that_cannot_start_fails_the_flow_with_backend_error():
    rhapsody.register_backend("broken", _BrokenBackend)

    @task
    def anything():
        return 1

    @flow(task_runner=RhapsodyRunner("broken"))
    def doomed():
        return anything.submit().result()

    state = doomed(return_state=True)
    assert state.is_failed()
    with pytest.raises(BackendError) as info:
        state.result()
    assert "no route to the batch system" in str(info.value)
    assert info.value.backend_type == "broken"


def test_body_that_kills_its_worker_fails_only_that_task():
    @task
    def suicide():
        os.kill(os.getpid(), signal.SIGKILL)

    @task
    def fine(x):
        return x

    @flow(task_runner=RhapsodyRunner("concurrent", max_workers=2, executor="process"))
    def mixed():
        bad = suicide.submit()
        good = [fine.submit(i) for i in range(4)]
        bad.wait()
        return bad.state, [g.result() for g in good]

    bad_state, good = mixed()
    assert bad_state.type == StateType.FAILED
    assert "died with signal SIGKILL" in bad_state.message
    assert good == [0, 1, 2, 3]


FLOW_SCRIPT = textwrap.dedent("""
    import sys
    from prefect import flow
    from rhapsody_prefect import RhapsodyRunner, executable_task

    pid_file = sys.argv[1]

    @executable_task
    def sleeper(i):
        return ["/bin/sh", "-c", f"echo $$ >> {pid_file}; exec sleep 300"]

    @flow(task_runner=RhapsodyRunner("concurrent", max_workers=2))
    def long_flow():
        return [f.result() for f in sleeper.map(range(2))]

    long_flow()
""")


def test_sigterm_of_the_flow_process_cancels_backend_tasks(tmp_path):
    """What a Prefect worker does to cancel a flow run: SIGTERM the flow process."""
    pids = signal_flow_script(tmp_path / "long_flow.py", FLOW_SCRIPT, 2, signal.SIGTERM,
                              timeout=180)
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=30), (
        "backend commands outlived the cancelled flow run"
    )


@pytest.mark.slow
def test_two_thousand_tasks_on_two_slots_without_a_thread_each():
    @task
    def increment(x: int) -> int:
        return x + 1

    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.is_set():
            samples.append((me.memory_info().rss, threading.active_count()))
            time.sleep(0.2)

    @flow(task_runner=RhapsodyRunner("concurrent", max_workers=2, transition_log_level=None))
    def many() -> tuple[int, str]:
        futures = increment.map(range(2000))
        return sum(f.result() for f in futures), str(get_run_context().flow_run.id)

    sampler = threading.Thread(target=sample, daemon=True)
    baseline = psutil.Process().memory_info().rss
    sampler.start()
    started = time.monotonic()
    try:
        total, flow_run_id = many()
    finally:
        stop.set()
        sampler.join()
    elapsed = time.monotonic() - started
    assert total == sum(range(1, 2001))
    # The API records all 2,000 as completed. Waiting for it also leaves the shared
    # ephemeral server idle for the next test (its SQLite lags behind such bursts, and
    # a busy server answers writes with 503 for longer than the client retries).
    with get_client(sync_client=True) as client:
        def recorded() -> bool:
            response = client.request("POST", "/task_runs/count", json={
                "flow_runs": {"id": {"any_": [flow_run_id]}},
                "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            })
            return response.json() == 2000
        assert wait_until(recorded, timeout=600, interval=2), "API never recorded 2000 runs"
    peak_rss = max(rss for rss, _ in samples)
    peak_threads = max(threads for _, threads in samples)
    print(f"\n2000 tasks / 2 slots: {elapsed:.1f}s, {2000 / elapsed:.0f} tasks/s, peak threads "
          f"{peak_threads}, flow-side RSS +{(peak_rss - baseline) / 2**20:.0f} MiB "
          f"(peak {peak_rss / 2**20:.0f} MiB)")
    assert peak_threads < 60, f"{peak_threads} threads for 2000 in-flight tasks"
