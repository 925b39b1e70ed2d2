"""RhapsodyRunner through a real Prefect API (the ephemeral server), on every backend.

Covers the cases of prefect-dask's own `tests/test_task_runners.py`, plus
retries, caching, timeouts that kill the backend task, tags, logs, task_inputs
and executable tasks. Backends join through `<name>_backend_spec` fixtures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import cloudpickle
import pytest
from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import INPUTS
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.futures import as_completed

from rhapsody_prefect import RhapsodyRunner, executable_task, task_resources
from rhapsody_prefect.exceptions import ConfigurationError
from tests.conftest import BACKEND_SPECS
from tests.helpers import count_and_fail_first, pid_alive, task_run_logs, wait_until

pytestmark = [pytest.mark.parametrize("backend_spec", BACKEND_SPECS, indirect=True)]


@pytest.fixture
def runner(backend_spec) -> RhapsodyRunner:
    name, kwargs = backend_spec
    return RhapsodyRunner(name, **kwargs)


def api_logs(task_run_id, contains: str, timeout: float = 30.0) -> list[str]:
    """Messages of a task run's logs in the API, waiting until one contains `contains`."""
    return [log.message for log in task_run_logs(task_run_id, contains, timeout)]


# -------------------------------------------------------------- prefect-dask cases
def test_duplicate_and_pickle(runner):
    twin = runner.duplicate()
    assert twin == runner
    assert twin is not runner
    clone = cloudpickle.loads(cloudpickle.dumps(runner))
    assert clone == runner


def test_successful_flow_run(runner):
    @task
    def task_a():
        return "a"

    @task
    def task_b():
        return "b"

    @task
    def task_c(b: str):
        return b + "c"

    @flow(task_runner=runner)
    def test_flow():
        a = task_a.submit()
        b = task_b.submit()
        c = task_c.submit(b)
        return a.result(), b.result(), c.result()

    assert test_flow() == ("a", "b", "bc")


def test_failing_flow_run(runner):
    @task
    def task_a():
        raise RuntimeError("This task fails!")

    @task
    def task_b():
        raise ValueError("This task fails and passes data downstream!")

    @task
    def task_c(b: str):
        return b + "c"

    @flow(task_runner=runner)
    def test_flow():
        a = task_a.submit()
        b = task_b.submit()
        c = task_c.submit(b)
        d = task_c.submit(c)
        return a, b, c, d

    state = test_flow(return_state=True)
    assert state.is_failed()
    a, b, c, d = state.result(raise_on_failure=False)
    with pytest.raises(RuntimeError, match="This task fails!"):
        a.result()
    with pytest.raises(ValueError, match="This task fails and passes data downstream"):
        b.result()
    # futures returned by a flow come back as their final states
    assert c.is_pending() and c.name == "NotReady"
    assert (
        f"Upstream task run '{b.state_details.task_run_id}' did not reach a 'COMPLETED' state"
        in c.message
    )
    assert d.is_pending() and d.name == "NotReady"


async def test_async_tasks(runner):
    @task
    async def task_a():
        return "a"

    @task
    async def task_b():
        await asyncio.sleep(0.01)
        return "b"

    @task
    async def task_c(b):
        return b + "c"

    @flow(task_runner=runner)
    async def test_flow():
        a = task_a.submit()
        b = task_b.submit()
        c = task_c.submit(b)
        return a.result(), b.result(), c.result()

    assert await test_flow() == ("a", "b", "bc")


def test_sync_task_in_async_flow_and_submit_and_wait(runner):
    @task
    def task_a():
        return "a"

    with runner:
        future = runner.submit(task_a, parameters={}, wait_for=[])
        future.wait()
        assert future.state.is_completed()
        assert future.result() == "a"


def test_sync_task_timeout(runner):
    @task(timeout_seconds=1)
    def my_timeout_task():
        time.sleep(3)
        return 42

    @task
    def my_dependent_task(task_res):
        return 1764

    @task
    def my_independent_task():
        return 74088

    @flow(task_runner=runner)
    def test_flow():
        a = my_timeout_task.submit()
        b = my_dependent_task.submit(a)
        c = my_independent_task.submit()
        return a, b, c

    state = test_flow(return_state=True)
    assert state.is_failed()
    a, b, c = state.result(raise_on_failure=False)
    assert a.type == StateType.FAILED
    assert a.name == "TimedOut"
    assert b.type == StateType.PENDING
    assert c.type == StateType.COMPLETED


async def test_async_task_timeout(runner):
    @task(timeout_seconds=1)
    async def my_timeout_task():
        await asyncio.sleep(3)
        return 42

    @task
    async def my_independent_task():
        return 74088

    @flow(task_runner=runner)
    async def test_flow():
        return my_timeout_task.submit(), my_independent_task.submit()

    state = await test_flow(return_state=True)
    a, c = await state.result(raise_on_failure=False)
    assert a.type == StateType.FAILED
    assert await c.result() == 74088


def test_timeout_kills_backend_command(runner, tmp_path):
    pid_file = tmp_path / "pid"

    @executable_task(timeout_seconds=2)
    def sleeper():
        return ["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"]

    @flow(task_runner=runner)
    def test_flow():
        future = sleeper.submit()
        future.wait()
        return future.state

    started = time.monotonic()
    assert test_flow(return_state=True).result(raise_on_failure=False).name == "TimedOut"
    assert time.monotonic() - started < 50
    pid = int(pid_file.read_text())
    assert wait_until(lambda: not pid_alive(pid), timeout=20), "timed-out command still running"


def test_as_completed_yields_correct_order(runner):
    @task
    def sleep_task(seconds):
        time.sleep(seconds)
        return seconds

    # prefect-dask uses three tasks on a bigger cluster; the backends here have two
    # slots, so two tasks keep the test about ordering, not about queueing.
    timings = [0.5, 6]  # wide apart: RP's raptor forks (and imports) per function task
    with runner:
        futures = [
            runner.submit(sleep_task, parameters={"seconds": s}, wait_for=[])
            for s in reversed(timings)
        ]
        done = [future.result() for future in as_completed(futures=futures)]
    assert done == timings


def test_keyboard_interrupt_in_body_is_crashed(runner):
    @task
    def task_a():
        raise KeyboardInterrupt()

    with runner:
        future = runner.submit(task=task_a, parameters={}, wait_for=[])
        future.wait()
        assert future.state.type == StateType.CRASHED
        # the runner is still usable afterwards
        future = runner.submit(task=task_resources()(task(lambda: 5)), parameters={})
        assert future.result() == 5


@dataclasses.dataclass
class Foo:
    value: int


def test_dataclasses_can_be_passed(runner):
    @task
    def get_dataclass_values(n: int):
        return [Foo(value=i) for i in range(n)]

    @task
    def echo_foo(x: Foo) -> Foo:
        return x

    @flow(task_runner=runner)
    def test_flow(n: int = 3) -> list[Foo]:
        foos = get_dataclass_values(n)
        future = echo_foo.submit(foos[0])
        futures = echo_foo.map(foos)
        return [fut.result() for fut in [*futures, future]]

    assert test_flow() == [Foo(value=i) for i in range(3)] + [Foo(value=0)]


def test_nested_task_submission(runner):
    @task
    def nested_task(x: int):
        return f"nested task {x}"

    @task
    def parent_task():
        return nested_task.submit(1).result()

    @flow(task_runner=runner)
    def umbrella_flow():
        return parent_task.submit().result()

    assert umbrella_flow() == "nested task 1"


def test_state_dependencies_via_wait_for(runner):
    @task
    def task_a():
        time.sleep(0.5)
        return time.time()

    @task
    def task_b():
        return time.time()

    @task
    def task_c():
        return time.time()

    @flow(task_runner=runner)
    def test_flow():
        a = task_a.submit()
        b = task_b.submit()
        c = task_c.submit(wait_for=[a, b])
        return a.result(), b.result(), c.result()

    a_time, b_time, c_time = test_flow()
    assert c_time > a_time and c_time > b_time


# ------------------------------------------------------------ Prefect semantics
def test_retries_submit_each_attempt_to_the_backend(runner, tmp_path):
    counter = str(tmp_path / "calls")

    @task(retries=2, retry_delay_seconds=0.2)
    def flaky():
        return count_and_fail_first(counter, 2)

    @flow(task_runner=runner)
    def test_flow():
        future = flaky.submit()
        return future.result(), future.task_run_id

    result, task_run_id = test_flow()
    assert result == "ok after 3 calls"
    messages = api_logs(task_run_id, ".3 finished")
    finished = {m.split(" task ")[1].split(" ")[0] for m in messages if " finished:" in m}
    assert len(finished) == 3, messages  # three attempts, three backend tasks


def test_cache_policy_and_cache_key_fn(runner, tmp_path):
    counter = tmp_path / "calls"

    def count_call(x: int) -> int:
        with open(counter, "a") as handle:
            handle.write("x")
        return x * 10

    # The result store outlives a test: make this test's cache keys its own.
    run = str(tmp_path)

    @task(cache_policy=INPUTS, persist_result=True)
    def cached(x: int, run: str) -> int:
        return count_call(x)

    @task(cache_key_fn=lambda ctx, params: f"key-{run}-{params['x'] % 2}", persist_result=True)
    def keyed(x: int) -> int:
        return count_call(x)

    @flow(task_runner=runner)
    def test_flow():
        first = cached.submit(7, run).result()
        second = cached.submit(7, run, return_state=True)
        third = keyed.submit(2).result()
        fourth = keyed.submit(4, return_state=True)
        return first, second, third, fourth

    first, second, third, fourth = test_flow()
    assert first == 70 and second.name == "Cached" and second.result() == 70
    assert third == 20 and fourth.name == "Cached" and fourth.result() == 20
    assert counter.read_text() == "xx"


def test_futures_as_parameters_are_recorded_as_task_inputs(runner):
    @task
    def upstream():
        return 1

    @task
    def downstream(x):
        return x + 1

    @flow(task_runner=runner)
    def test_flow():
        a = upstream.submit()
        b = downstream.submit(a)
        return a.task_run_id, b.task_run_id, b.result()

    a_id, b_id, b_result = test_flow()
    assert b_result == 2

    def recorded() -> bool:
        with get_client(sync_client=True) as client:
            run = client.read_task_run(b_id)
        return [i.id for i in run.task_inputs.get("x", [])] == [a_id]

    assert wait_until(recorded, timeout=30, interval=0.5)


def test_tags_reach_the_api(runner):
    @task(tags=["from-decorator"])
    def tagged():
        return 1

    @flow(task_runner=runner)
    def test_flow():
        with tags("from-context"):
            future = tagged.submit()
        future.wait()
        return future.task_run_id

    task_run_id = test_flow()
    with get_client(sync_client=True) as client:
        run = client.read_task_run(task_run_id)
    assert {"from-decorator", "from-context"} <= set(run.tags)


def test_logs_and_prints_reach_the_task_run_in_the_api(runner):
    @task(log_prints=True)
    def chatty(x):
        print(f"printed-marker-{x}")
        get_run_logger().warning("logger-marker-%s pid=%s", x, os.getpid())
        return x

    @flow(task_runner=runner)
    def test_flow():
        future = chatty.submit(5)
        return future.result(), future.task_run_id

    result, task_run_id = test_flow()
    assert result == 5
    messages = api_logs(task_run_id, "logger-marker-5")
    assert any("printed-marker-5" in m for m in messages), messages
    assert any("logger-marker-5" in m for m in messages), messages
    # the backend transitions are recorded on the task run, with backend and uid
    finished = [m for m in messages if " finished: RHAPSODY COMPLETED" in m]
    assert len(finished) == 1, messages
    assert "queued " in finished[0] and "executing +" in finished[0], finished


def test_map_and_many_tasks(runner):
    @task
    def double(x):
        return 2 * x

    @flow(task_runner=runner)
    def test_flow():
        return double.map(range(40)).result()

    assert test_flow() == [2 * x for x in range(40)]


# ------------------------------------------------------------------ executables
def test_executable_task_results_and_failures(runner, tmp_path):
    counter = tmp_path / "attempts"

    @executable_task
    def greet(name: str):
        return ["/bin/sh", "-c", f"echo hello {name}; echo to-stderr >&2"]

    @executable_task(retries=1, retry_delay_seconds=0)
    def broken():
        return f"echo attempt >> {counter}; echo disk-full-marker >&2; exit 7"

    @flow(task_runner=runner)
    def test_flow():
        return greet.submit("world"), broken.submit()

    state = test_flow(return_state=True)
    greeted, failed = state.result(raise_on_failure=False)
    result = greeted.result()
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello world\n", "to-stderr\n")
    assert failed.is_failed()
    assert "exited with code 7" in failed.message
    assert "disk-full-marker" in failed.message
    assert counter.read_text().count("attempt") == 2  # retries apply to commands


def test_resources_reach_the_backend(runner):
    """A body asking for more cores than any backend here offers is refused by it."""

    @task
    @task_resources(cores_per_rank=4096)
    def too_big():
        return 1

    @flow(task_runner=runner)
    def test_flow():
        return too_big.submit()

    state = test_flow(return_state=True).result(raise_on_failure=False)
    assert state.is_failed()
    with pytest.raises(ConfigurationError) as info:
        state.result()
    assert info.value.config_key in {"cores_per_rank", "ranks", "resources"}


# -------------------------------------------------------------------- failures
def test_cancel_all_cancels_backend_tasks(runner, tmp_path):
    pid_file = tmp_path / "pid"

    @executable_task
    def sleeper():
        return ["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"]

    with runner:
        future = runner.submit(sleeper, parameters={})
        assert wait_until(pid_file.exists, timeout=120)
        runner.cancel_all()
        future.wait(timeout=60)
        assert future.state.type == StateType.CANCELLED
    pid = int(pid_file.read_text())
    assert wait_until(lambda: not pid_alive(pid), timeout=20)
