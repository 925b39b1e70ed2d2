"""Prefect features that rely on Prefect's task engine running in the flow process.

    .venv/bin/python -m pytest tests/adapter/test_prefect_features.py -q

RhapsodyRunner keeps the engine (states, concurrency slots, retries, result
persistence) in the flow process and sends only task bodies to the backend, so
these must behave as with Prefect's own task runners: task tag concurrency
limits, `task.with_options`, `return_state=True`, `allow_failure`, `unmapped`,
and `persist_result=True` read back after the flow. Runs on
`RhapsodyRunner("concurrent", max_workers=4)` and the ephemeral API (conftest.py).
"""

from __future__ import annotations

import itertools
import pathlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prefect import allow_failure, flow, task, unmapped
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import StateType, TaskRun
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultRecord
from prefect.states import State

from rhapsody_prefect import RhapsodyRunner
from tests.helpers import count_and_fail_first, wait_until

SLEEP = 0.5
TASKS = 4


def runner() -> RhapsodyRunner:
    """Four free slots: anything serialised below is serialised by Prefect, not the backend."""
    return RhapsodyRunner("concurrent", max_workers=TASKS)


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as api:
        yield api


def read_task_run(client: SyncPrefectClient, task_run_id: Any,
                  ready: Callable[[TaskRun], bool], timeout: float = 30.0) -> TaskRun:
    """The API's view of a task run, polled until `ready` (the API lags behind the engine)."""
    run = client.read_task_run(task_run_id)

    def check() -> bool:
        nonlocal run
        run = client.read_task_run(task_run_id)
        return ready(run)

    wait_until(check, timeout=timeout, interval=0.3)
    return run


def overlaps(spans: list[tuple[float, float]]) -> bool:
    """Whether any two (start, end) intervals overlap."""
    ordered = sorted(spans)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered))


# ------------------------------------------------------------- tag concurrency limits
@task
def timed_sleep(index: int) -> tuple[float, float, str]:
    started = time.time()
    time.sleep(SLEEP)
    return started, time.time(), threading.current_thread().name


@pytest.fixture
def limited_tag(client: SyncPrefectClient) -> Iterator[str]:
    """A task tag with a concurrency limit of 1 (Prefect's `prefect concurrency-limit create`)."""
    tag = f"rhapsody-limit-{uuid.uuid4().hex[:8]}"
    client.create_concurrency_limit(tag=tag, concurrency_limit=1)
    try:
        yield tag
    finally:
        client.delete_concurrency_limit_by_tag(tag)


def test_tag_concurrency_limit_serialises_bodies(limited_tag: str) -> None:
    @flow(task_runner=runner())
    def spans(tag_names: list[str]) -> list[tuple[float, float, str]]:
        limited = timed_sleep.with_options(tags=tag_names)
        futures = [limited.submit(i) for i in range(TASKS)]
        return [f.result() for f in futures]

    free = spans([])
    assert overlaps([(s, e) for s, e, _ in free]), (
        f"without a limit the {TASKS} bodies should run side by side on {TASKS} slots: {free}")

    limited = spans([limited_tag])
    assert len(limited) == TASKS
    assert not overlaps([(s, e) for s, e, _ in limited]), (
        f"tag {limited_tag!r} has a concurrency limit of 1, but bodies overlapped: {limited}")


# ------------------------------------------------------------------- task.with_options
def test_with_options_name_retries_tags(tmp_path: pathlib.Path,
                                        client: SyncPrefectClient) -> None:
    @task
    def flaky(counter: str) -> str:
        return count_and_fail_first(counter, 2)

    renamed = flaky.with_options(name="renamed-flaky", retries=2, retry_delay_seconds=0,
                                 tags=["with-options-tag"])
    assert (renamed.name, renamed.retries, renamed.tags) == (
        "renamed-flaky", 2, {"with-options-tag"})

    @flow(task_runner=runner())
    def run_it(counter: str) -> tuple[str, Any]:
        future = renamed.submit(counter)
        return future.result(), future.task_run_id

    value, task_run_id = run_it(str(tmp_path / "calls"))
    assert value == "ok after 3 calls"
    assert (tmp_path / "calls").read_text() == "3", "each retry runs the body again"
    run = read_task_run(client, task_run_id, lambda r: r.state_type == StateType.COMPLETED)
    assert run.state_type == StateType.COMPLETED
    assert run.name.startswith("renamed-flaky-"), run.name
    assert "with-options-tag" in run.tags
    assert run.run_count == 3, f"two retries, three attempts: {run}"


# ---------------------------------------------------------------------- return_state
@task
def fails(message: str) -> str:
    raise ValueError(message)


@task
def succeeds(value: int) -> int:
    return value * 2


def test_return_state_gives_a_failed_state_without_raising() -> None:
    @flow(task_runner=runner())
    def states() -> tuple[State, State, list[State]]:
        failed = fails.submit("boom", return_state=True)
        done = succeeds.submit(21, return_state=True)
        mapped = succeeds.map([1, 2], return_state=True)
        return failed, done, list(mapped)

    failed, done, mapped = states()
    assert isinstance(failed, State) and failed.is_failed(), failed
    with pytest.raises(ValueError, match="boom"):
        failed.result()
    assert failed.result(raise_on_failure=False).args == ("boom",)
    assert done.is_completed() and done.result() == 42
    assert [s.result() for s in mapped] == [2, 4]


# ---------------------------------------------------------------------- allow_failure
def test_allow_failure_runs_downstream_after_failed_upstream(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "upstream-ran"

    @task
    def upstream(path: str) -> str:
        pathlib.Path(path).write_text("ran")
        raise RuntimeError("upstream fails")

    @task
    def downstream(path: str) -> str:
        return "downstream saw " + pathlib.Path(path).read_text()

    @flow(task_runner=runner())
    def pipeline(path: str) -> dict[str, State]:
        first = upstream.submit(path)
        tolerant = downstream.submit(path, wait_for=[allow_failure(first)])
        strict = downstream.submit(path, wait_for=[first])
        tolerant.wait()
        strict.wait()
        # A dict, not a tuple: a flow returning only states takes its own state from them.
        return {"first": first.state, "tolerant": tolerant.state, "strict": strict.state}

    states = pipeline(str(marker))
    first, tolerant, strict = states["first"], states["tolerant"], states["strict"]
    assert first.is_failed()
    assert tolerant.is_completed(), tolerant
    assert tolerant.result() == "downstream saw ran", "downstream ran after the upstream body"
    # Without allow_failure Prefect does not run the downstream body at all.
    assert not strict.is_completed(), strict
    assert strict.name == "NotReady", strict


def test_allow_failure_as_a_parameter() -> None:
    @task
    def describe(upstream: Any) -> str:
        return f"{type(upstream).__name__}: {upstream}"

    @flow(task_runner=runner())
    def pipeline() -> str:
        return describe.submit(allow_failure(fails.submit("bad input"))).result()

    assert pipeline() == "ValueError: bad input"


# --------------------------------------------------------------------------- unmapped
def test_unmapped() -> None:
    @task
    def add(x: int, offset: int) -> int:
        return x + offset

    @task
    def pick(index: int, items: list[str]) -> str:
        return items[index]

    @task
    def make_items() -> list[str]:
        return ["a", "b", "c"]

    @flow(task_runner=runner())
    def mapped() -> tuple[list[int], list[str], list[str]]:
        constant = add.map([1, 2, 3], unmapped(10))
        static = pick.map([2, 0], unmapped(["x", "y", "z"]))
        from_future = pick.map([0, 1, 2], unmapped(make_items.submit()))
        return constant.result(), static.result(), from_future.result()

    assert mapped() == ([11, 12, 13], ["z", "x"], ["a", "b", "c"])


# ---------------------------------------------------------------- result persistence
def test_persisted_results_read_back_after_the_flow(tmp_path: pathlib.Path,
                                                    client: SyncPrefectClient) -> None:
    prefix = uuid.uuid4().hex[:8]
    storage = LocalFileSystem(basepath=str(tmp_path / "results"))
    # Prefect wants result storage saved server-side, so that the API's states can name it.
    storage.save(f"rhapsody-results-{prefix}")

    @task(persist_result=True, result_storage=storage, result_serializer="json",
          result_storage_key=prefix + "-square-{parameters[x]}", cache_policy=None)
    def square(x: int) -> dict[str, int]:
        return {"x": x, "square": x * x}

    @flow(task_runner=runner())
    def persisted() -> list[Any]:
        futures = square.map([2, 3, 4])
        futures.wait()
        return [f.task_run_id for f in futures]

    task_run_ids = persisted()
    expected = [{"x": x, "square": x * x} for x in (2, 3, 4)]

    # From storage: the files the engine wrote in the flow process.
    for x, value in zip((2, 3, 4), expected, strict=True):
        path = tmp_path / "results" / f"{prefix}-square-{x}"
        assert path.is_file(), sorted(p.name for p in (tmp_path / "results").iterdir())
        record = ResultRecord.deserialize(path.read_bytes())
        assert record.result == value

    # From the API: each task run's final state references its persisted result.
    for task_run_id, value in zip(task_run_ids, expected, strict=True):
        run = read_task_run(client, task_run_id, lambda r: r.state_type == StateType.COMPLETED)
        assert run.state is not None and run.state.is_completed(), run.state
        assert run.state.result() == value
