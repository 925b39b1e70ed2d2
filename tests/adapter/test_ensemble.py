"""ensemble_map: one Prefect task run, one backend task per member (real backends, real API).

Runs on `concurrent` (threads and processes) and a real Dask LocalCluster; the
Prefect API is the session's ephemeral server (tests/conftest.py).
"""

from __future__ import annotations

import itertools
import os
import pathlib
import time
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext, get_run_context
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from rhapsody_prefect import (
    ConfigurationError,
    EnsembleFailed,
    ExecutableResult,
    RhapsodyRunner,
    ensemble_map,
    executable_task,
    task_resources,
)
from rhapsody_prefect.adapter import progress
from tests.helpers import count_and_fail_first, pid_alive, wait_until

ENSEMBLE_SPECS = [
    pytest.param("concurrent_thread", id="concurrent-thread"),
    pytest.param("concurrent_process", id="concurrent-process"),
    pytest.param("dask", id="dask", marks=pytest.mark.dask),
]


@pytest.fixture
def runner(request: pytest.FixtureRequest) -> RhapsodyRunner:
    name, kwargs = request.getfixturevalue(f"{request.param}_backend_spec")
    return RhapsodyRunner(name, **kwargs)


@pytest.fixture
def thread_runner() -> RhapsodyRunner:
    return RhapsodyRunner("concurrent", max_workers=2)


@task
def scale(x: int, factor: int = 1, offset: int = 0) -> int:
    return x * factor + offset


@executable_task
def echo(word: str, suffix: str) -> list[str]:
    return ["/bin/echo", f"{word}{suffix}"]


def artifacts_of(flow_run_id: Any, expected: int, timeout: float = 30.0) -> list[Any]:
    """The flow run's artifacts in the API, polled until `expected` of them are there."""
    found: list[Any] = []

    def enough() -> bool:
        nonlocal found
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        return len(found) >= expected

    wait_until(enough, timeout=timeout, interval=0.5)
    return found


# ---------------------------------------------------------------- results
@pytest.mark.parametrize("runner", ENSEMBLE_SPECS, indirect=True)
def test_results_in_input_order_python_and_executable(runner: RhapsodyRunner) -> None:
    @flow(task_runner=runner)
    def sweep() -> tuple[list[int], list[int], list[ExecutableResult]]:
        plain = ensemble_map(scale, range(40))
        scaled = ensemble_map(scale, range(40), unmapped(3), offset=[1] * 40)
        commands = ensemble_map(echo, ["a", "b", "c"], unmapped("!"))
        return plain.result(), scaled.result(), commands.result()

    plain, scaled, commands = sweep()
    assert plain == list(range(40))
    assert scaled == [3 * x + 1 for x in range(40)]
    assert [r.stdout for r in commands] == ["a!\n", "b!\n", "c!\n"]
    assert all(isinstance(r, ExecutableResult) and r.exit_code == 0 for r in commands)


def test_one_task_run_for_the_whole_ensemble(thread_runner: RhapsodyRunner) -> None:
    @flow(task_runner=thread_runner)
    def sweep() -> tuple[list[int], str]:
        future = ensemble_map(scale, range(300), artifacts=False)
        return future.result(), str(get_run_context().flow_run.id)

    results, flow_run_id = sweep()
    assert results == list(range(300))
    runs: list[Any] = []

    def recorded() -> bool:
        nonlocal runs
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_run_id])))
        return bool(runs) and all(run.state_type == StateType.COMPLETED for run in runs)

    assert wait_until(recorded, timeout=30)
    time.sleep(1)  # nothing else arrives later
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
    assert [run.name.rsplit("-", 1)[0] for run in runs] == ["scale-ensemble"]


def test_resources_apply_to_every_member(thread_runner: RhapsodyRunner) -> None:
    @task_resources(environment={"ENSEMBLE_COLOUR": "teal"})
    @executable_task
    def colour(i: int) -> str:
        return f"echo {i}-$ENSEMBLE_COLOUR"

    @task
    @task_resources(cores_per_rank=3)
    def too_big(i: int) -> int:
        return i

    @flow(task_runner=thread_runner)
    def sweep() -> tuple[list[str], Any]:
        colours = ensemble_map(colour, range(3))
        refused = ensemble_map(too_big, range(3), artifacts=False)
        return [r.stdout.strip() for r in colours.result()], refused.wait() or refused.state

    colours, refused = sweep()
    assert colours == ["0-teal", "1-teal", "2-teal"]
    assert refused.is_failed()
    with pytest.raises(ConfigurationError) as info:
        refused.result()
    assert info.value.config_key == "cores_per_rank"


# ---------------------------------------------------------------- failures
@pytest.mark.parametrize("runner", ENSEMBLE_SPECS, indirect=True)
def test_failed_members_are_retried_by_the_backend(
    runner: RhapsodyRunner, tmp_path: pathlib.Path
) -> None:
    @task(retries=1, retry_delay_seconds=0)
    def flaky(i: int, directory: str) -> str:
        return count_and_fail_first(os.path.join(directory, f"member-{i}"), failures=1)

    @flow(task_runner=runner)
    def sweep() -> list[str]:
        return ensemble_map(flaky, range(6), unmapped(str(tmp_path))).result()

    assert sweep() == ["ok after 2 calls"] * 6
    # Each member ran twice, as backend attempts of one task run.
    assert all((tmp_path / f"member-{i}").read_text() == "2" for i in range(6))


def test_each_retry_waits_its_own_delay(
    thread_runner: RhapsodyRunner, tmp_path: pathlib.Path
) -> None:
    """retry_delay_seconds=[0.1, 1.2]: retry 1 after 0.1 s, retries 2 and 3 after 1.2 s."""

    @task(retries=3, retry_delay_seconds=[0.1, 1.2])
    def flaky(i: int, directory: str) -> str:
        with open(os.path.join(directory, f"starts-{i}"), "a") as starts:
            starts.write(f"{time.monotonic()}\n")
        return count_and_fail_first(os.path.join(directory, f"member-{i}"), failures=3)

    @flow(task_runner=thread_runner)
    def sweep() -> list[str]:
        return ensemble_map(flaky, range(2), unmapped(str(tmp_path)), artifacts=False).result()

    assert sweep() == ["ok after 4 calls"] * 2
    for i in range(2):
        starts = [float(line) for line in (tmp_path / f"starts-{i}").read_text().split()]
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert len(gaps) == 3
        assert 0.1 <= gaps[0] < 1.1 and gaps[1] >= 1.2 and gaps[2] >= 1.2, gaps


def test_a_retry_condition_is_refused_with_what_to_use(thread_runner: RhapsodyRunner) -> None:
    @task(retries=2, retry_condition_fn=lambda task, run, state: True)
    def picky(i: int) -> int:
        return i

    @flow(task_runner=thread_runner)
    def sweep() -> None:
        ensemble_map(picky, range(3))

    with pytest.raises(ConfigurationError, match=r"Use task\.map") as info:
        sweep()
    assert info.value.config_key == "retry_condition_fn"


def test_failure_counts_and_lists_members(thread_runner: RhapsodyRunner) -> None:
    @task
    def picky(i: int) -> int:
        if i % 3 == 0:
            raise ValueError(f"member {i} refuses")
        return i

    @executable_task
    def exits(code: int) -> list[str]:
        return ["/bin/sh", "-c", f"exit {code}"]

    @flow(task_runner=thread_runner)
    def sweep() -> tuple[Any, Any]:
        python = ensemble_map(picky, range(30), artifacts=False)
        commands = ensemble_map(exits, [0, 3, 0, 4], artifacts=False)
        python.wait()
        commands.wait()
        return python.state, commands.state

    python, commands = sweep()
    assert python.is_failed() and commands.is_failed()
    with pytest.raises(EnsembleFailed) as info:
        python.result()
    message = str(info.value)
    assert message.startswith("10 of 30 members of 'picky' failed:")
    assert "member 0 (picky-ensemble-" in message
    assert "ValueError: member 0 refuses" in message
    assert "member 12 (" in message and "member 15 (" not in message
    assert "... and 5 more" in message
    assert info.value.details["indices"] == list(range(0, 30, 3))
    with pytest.raises(EnsembleFailed) as info:
        commands.result()
    assert "2 of 4 members" in str(info.value)
    assert "member 1 (" in str(info.value) and "exit code 3" in str(info.value)
    assert "exit code 4" in str(info.value)


def test_allow_failures_keeps_each_members_exception(thread_runner: RhapsodyRunner) -> None:
    @task
    def picky(i: int) -> int:
        if i == 2:
            raise KeyError("two")
        return i

    @flow(task_runner=thread_runner)
    def sweep() -> list[Any]:
        return ensemble_map(picky, range(4), allow_failures=True, artifacts=False).result()

    results = sweep()
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2], KeyError)


# ---------------------------------------------------------------- futures
def test_two_ensembles_side_by_side_and_a_downstream_task(
    thread_runner: RhapsodyRunner, tmp_path: pathlib.Path
) -> None:
    @executable_task
    def mark(name: str, i: int) -> list[str]:
        return ["/bin/sh", "-c", f"touch {tmp_path}/{name}-{i}-start; sleep 0.3"]

    @task
    def count(first: list[Any], second: list[Any]) -> int:
        return len(first) + len(second)

    @flow(task_runner=RhapsodyRunner("concurrent", max_workers=4))
    def sweep() -> tuple[int, float]:
        started = time.monotonic()
        first = ensemble_map(mark, unmapped("a"), range(4), artifacts=False)
        second = ensemble_map(mark, unmapped("b"), range(4), artifacts=False)
        # ensemble_map returned at once: both run while the flow goes on.
        assert wait_until(lambda: any(tmp_path.glob("a-*")) and any(tmp_path.glob("b-*")),
                          timeout=30)
        total = count.submit(first, second).result()
        return total, time.monotonic() - started

    total, _seconds = sweep()
    assert total == 8
    assert len(list(tmp_path.glob("*-start"))) == 8


def test_ensemble_over_an_upstream_future(thread_runner: RhapsodyRunner) -> None:
    @task
    def seeds(n: int) -> list[int]:
        return list(range(n))

    @flow(task_runner=thread_runner)
    def sweep() -> list[int]:
        return ensemble_map(scale, seeds.submit(5), unmapped(10), artifacts=False).result()

    assert sweep() == [0, 10, 20, 30, 40]


def test_cancelling_the_flow_cancels_the_members(
    thread_runner: RhapsodyRunner, tmp_path: pathlib.Path
) -> None:
    @executable_task
    def sleeper(i: int) -> list[str]:
        return ["/bin/sh", "-c", f"echo $$ > {tmp_path}/pid-{i}; exec sleep 60"]

    @flow(task_runner=thread_runner)
    def sweep() -> tuple[Any, list[int], float]:
        future = ensemble_map(sleeper, range(6), artifacts=False)
        assert wait_until(lambda: len(list(tmp_path.glob("pid-*"))) == 2, timeout=60)
        time.sleep(0.2)  # both pid files written
        pids = [int(p.read_text()) for p in tmp_path.glob("pid-*")]
        started = time.monotonic()
        FlowRunContext.get().task_runner.cancel_all()  # what Prefect calls on cancellation
        future.wait(timeout=60)
        return future.state, pids, time.monotonic() - started

    state, pids, _seconds = sweep(return_state=True).result(raise_on_failure=False)
    assert state.type == StateType.CANCELLED
    assert "6 of 6 members were cancelled" in (state.message or "")
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=20)
    assert len(list(tmp_path.glob("pid-*"))) == 2  # the queued members never started


def test_nothing_is_sent_after_cancel_all(
    thread_runner: RhapsodyRunner, tmp_path: pathlib.Path
) -> None:
    @task
    def touch(i: int, directory: str) -> int:
        (pathlib.Path(directory) / f"ran-{i}").touch()
        return i

    @flow(task_runner=thread_runner)
    def sweep() -> tuple[Any, Any]:
        FlowRunContext.get().task_runner.cancel_all()  # before the backend is even created
        members = ensemble_map(touch, range(5), unmapped(str(tmp_path)), artifacts=False)
        plain = touch.submit(99, str(tmp_path))
        members.wait(timeout=60)
        plain.wait(timeout=60)
        return members.state, plain.state

    members, plain = sweep(return_state=True).result(raise_on_failure=False)
    assert members.type == StateType.CANCELLED
    assert "5 of 5 members were cancelled" in (members.message or "")
    assert plain.type == StateType.CANCELLED
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- errors
def test_outside_a_flow_or_on_another_runner_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="outside a flow run"):
        ensemble_map(scale, range(3))

    @flow(task_runner=ThreadPoolTaskRunner())
    def elsewhere() -> None:
        ensemble_map(scale, range(3))

    with pytest.raises(ConfigurationError, match="task runner is ThreadPoolTaskRunner"):
        elsewhere()


def test_bad_arguments_are_configuration_errors(thread_runner: RhapsodyRunner) -> None:
    @flow(task_runner=thread_runner)
    def bad(case: str) -> None:
        if case == "lengths":
            ensemble_map(scale, range(3), [1, 2])
        elif case == "option":
            ensemble_map(scale, range(3), colour="teal")
        else:
            ensemble_map(scale.fn, range(3))

    for case, key in (("lengths", "iterables"), ("option", "colour"), ("fn", "task")):
        with pytest.raises(ConfigurationError) as info:
            bad(case)
        assert info.value.config_key == key


# ---------------------------------------------------------------- artifacts
def test_progress_and_summary_artifacts(thread_runner: RhapsodyRunner) -> None:
    @task
    def nap(i: int) -> int:
        time.sleep(0.05)
        return i

    @flow(task_runner=thread_runner)
    def sweep() -> str:
        ensemble_map(nap, range(40), progress_interval=0.2).result()
        ensemble_map(nap, range(4), artifacts=False).result()
        return str(get_run_context().flow_run.id)

    flow_run_id = sweep()
    found = artifacts_of(flow_run_id, expected=2)
    by_type = {artifact.type: artifact for artifact in found}
    assert sorted(by_type) == ["progress", "table"], found
    progress_artifact, table = by_type["progress"], by_type["table"]
    assert progress_artifact.data == 100.0
    assert "40 of 40 members done" in progress_artifact.description
    assert progress_artifact.task_run_id == table.task_run_id is not None
    rows = {row["metric"]: row["value"] for row in _table(table.data)}
    assert rows["members"] == "40" and rows["completed"] == "40" and rows["failed"] == "0"
    assert rows["backend"] == "concurrent"
    assert rows["where they ran"].startswith("host ")
    assert rows["cores available"] == "2"
    assert rows["queue time per attempt (WAITING -> EXECUTING)"].startswith("p50 ")
    assert float(rows["busy core-seconds"]) >= 40 * 0.05 * 0.9
    assert rows["utilisation (busy / available core-seconds)"].endswith(")")


def test_artifacts_off_on_the_runner(tmp_path: pathlib.Path) -> None:
    @flow(task_runner=RhapsodyRunner("concurrent", max_workers=2, artifacts=False))
    def sweep() -> str:
        ensemble_map(scale, range(10)).result()
        return str(get_run_context().flow_run.id)

    flow_run_id = sweep()
    time.sleep(2)
    assert artifacts_of(flow_run_id, expected=1, timeout=3) == []


def test_flow_level_artifacts_for_plain_task_runs(
    thread_runner: RhapsodyRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0.3)

    @task
    def nap(i: int) -> int:
        time.sleep(0.2)
        return i

    @flow(task_runner=thread_runner)
    def plain() -> str:
        assert sum(f.result() for f in nap.map(range(8))) == 28
        return str(get_run_context().flow_run.id)

    flow_run_id = plain()
    by_type = {a.type: a for a in artifacts_of(flow_run_id, expected=2)}
    assert sorted(by_type) == ["progress", "table"]
    assert by_type["progress"].data == 100.0
    assert by_type["progress"].task_run_id is None
    assert "8 of 8 backend tasks done" in by_type["progress"].description
    rows = {row["metric"]: row["value"] for row in _table(by_type["table"].data)}
    assert rows["backend tasks"] == "8" and rows["completed"] == "8"


def test_a_quick_flow_gets_no_flow_level_artifacts(thread_runner: RhapsodyRunner) -> None:
    @flow(task_runner=thread_runner)
    def quick() -> str:
        scale.submit(1).result()
        return str(get_run_context().flow_run.id)

    flow_run_id = quick()
    time.sleep(1)
    assert artifacts_of(flow_run_id, expected=1, timeout=2) == []


def _table(data: Any) -> list[dict[str, str]]:
    import json

    return json.loads(data) if isinstance(data, str) else data
