"""RhapsodyRunner on upstream RHAPSODY backends, through a real Prefect API (ephemeral).

`RhapsodyRunner("upstream.concurrent")` runs task bodies on rhapsody-py's own
ConcurrentExecutionBackend via the adapter; `upstream.noop` marks every body done
without running it. Prefect's engine stays in the flow process, as on every backend.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from prefect import flow, get_run_logger, task
from prefect.client.schemas.objects import StateType

from rhapsody_prefect import RhapsodyRunner, executable_task, task_resources
from rhapsody_prefect.exceptions import ConfigurationError
from tests.helpers import count_and_fail_first, task_run_logs

pytest.importorskip("rhapsody")


@pytest.fixture
def runner() -> RhapsodyRunner:
    return RhapsodyRunner("upstream.concurrent")


def test_results_failures_and_dependencies(runner):
    @task
    def add(a: int, b: int) -> int:
        return a + b

    @task
    async def slow_double(x: int) -> int:
        await asyncio.sleep(0.05)
        return 2 * x

    @task
    def fails():
        raise RuntimeError("planned failure in an upstream body")

    @flow(task_runner=runner)
    def test_flow():
        total = add.submit(1, 2)
        doubled = slow_double.submit(total)
        return total, doubled, fails.submit()

    state = test_flow(return_state=True)
    total, doubled, failed = state.result(raise_on_failure=False)
    assert (total.result(), doubled.result()) == (3, 6)
    assert failed.type == StateType.FAILED
    with pytest.raises(RuntimeError, match="planned failure in an upstream body"):
        failed.result()


def test_prefect_retries_run_the_body_again_and_logs_reach_the_api(runner, tmp_path):
    counter = str(tmp_path / "calls")

    @task(retries=2, retry_delay_seconds=0.2, log_prints=True)
    def flaky():
        print("printed-in-upstream-body")
        get_run_logger().warning("logged-in-upstream-body pid=%s", os.getpid())
        return count_and_fail_first(counter, 2)

    @flow(task_runner=runner)
    def test_flow():
        future = flaky.submit()
        return future.result(), future.task_run_id

    result, task_run_id = test_flow()
    assert result == "ok after 3 calls"
    messages = [log.message for log in task_run_logs(task_run_id, ".3 finished", 60)]
    finished = {m.split(" task ")[1].split(" ")[0] for m in messages if " finished:" in m}
    assert len(finished) == 3, messages  # three attempts, three backend tasks
    assert any("printed-in-upstream-body" in m for m in messages), messages
    assert any("logged-in-upstream-body" in m for m in messages), messages


def test_executable_task_and_timeout(runner, tmp_path):
    @executable_task
    def greet(name: str):
        return ["/bin/sh", "-c", f"echo hello {name}; echo to-stderr >&2"]

    @executable_task
    def broken():
        return "echo disk-full-marker >&2; exit 7"

    @task(timeout_seconds=1)
    def too_slow():
        import time

        time.sleep(2)  # upstream cannot stop a thread: it runs on and ends by itself

    @flow(task_runner=runner)
    def test_flow():
        return greet.submit("world"), broken.submit(), too_slow.submit()

    greeted, failed, timed_out = test_flow(return_state=True).result(raise_on_failure=False)
    result = greeted.result()
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello world\n", "to-stderr\n")
    assert failed.is_failed() and "exited with code 7" in failed.message
    assert "disk-full-marker" in failed.message
    assert timed_out.type == StateType.FAILED and timed_out.name == "TimedOut"


def test_a_resource_request_upstream_cannot_honour_fails_the_task(runner):
    @task
    @task_resources(cores_per_rank=2)
    def wants_two_cores():
        return 1

    @flow(task_runner=runner)
    def test_flow():
        return wants_two_cores.submit()

    state = test_flow(return_state=True).result(raise_on_failure=False)
    assert state.is_failed()
    with pytest.raises(ConfigurationError) as info:
        state.result()
    assert info.value.config_key == "cores_per_rank"


def test_noop_runner_completes_bodies_without_running_them(tmp_path):
    marker = tmp_path / "ran"

    @task
    def writes():
        marker.write_text("ran")
        return "real result"

    @flow(task_runner=RhapsodyRunner("upstream.noop"))
    def test_flow():
        return writes.submit().result()

    assert test_flow() is True  # upstream noop's return_value for every task
    assert not marker.exists()


def test_unknown_prefixed_name_and_bad_options_fail_where_the_flow_is_defined():
    with pytest.raises(ConfigurationError, match=r"Unknown backend 'upstream\.nope'"):
        RhapsodyRunner("upstream.nope")
    with pytest.raises(ConfigurationError, match="Bad options"):
        RhapsodyRunner("upstream.concurrent", max_workers=2)
