"""One builder for a body's backend task, group-key routing, and ensemble retry options.

The builder is fed a real Prefect `TaskRun` model; routing runs a real
`BodyDispatcher` over a real `concurrent` backend (threads); the retry options
are compared with Prefect's own resolution (`exponential_backoff`, the clamp of
`clamped_poisson_interval`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from prefect import task
from prefect.client.schemas.objects import TaskRun
from prefect.tasks import exponential_backoff

import rhapsody_prefect as rhapsody
from rhapsody_prefect import ConfigurationError, TaskState, executable_task, task_resources
from rhapsody_prefect.adapter.body_spec import BodySpec, group_key
from rhapsody_prefect.adapter.dispatch import BodyDispatcher
from rhapsody_prefect.adapter.ensemble import MemberRetries
from rhapsody_prefect.adapter.timeline import TransitionLines
from rhapsody_prefect.body.capture import BodyContext
from rhapsody_prefect.core.tasks import retry_delay, validate_task


def _task_run(name: str = "scale-a1b", run_count: int = 2) -> TaskRun:
    return TaskRun(flow_run_id=uuid.uuid4(), task_key="scale-key", dynamic_key="0",
                   name=name, run_count=run_count)


@task_resources(cores_per_rank=2)
def scale(x: int, factor: int = 1) -> int:
    return x * factor


@executable_task
@task_resources(environment={"COLOUR": "teal"})
def echo(word: str) -> list[str]:
    return ["/bin/echo", word]


# ------------------------------------------------------------------ the builder
def test_one_uid_scheme_for_a_plain_body_and_for_members() -> None:
    task_run = _task_run()
    bodies = BodySpec(scale, task_run, "scale", log_prints=True, log_level=logging.DEBUG)
    group = f"scale-a1b.{task_run.id.hex[-8:]}"
    assert bodies.group == group_key(task_run) == group

    plain = bodies.build(task_run.run_count, (3,), {"factor": 2})
    members = [bodies.build(index, [index], {}) for index in range(3)]
    assert plain["uid"] == f"{group}.2"
    assert [m["uid"] for m in members] == [f"{group}.0", f"{group}.1", f"{group}.2"]
    for spec in (plain, *members):
        assert spec["group"] == group and spec["name"] == "scale-a1b"  # name: display only
        assert spec["function"] is scale and spec["cores_per_rank"] == 2
        assert spec["capture"] == BodyContext(
            task_run={"id": str(task_run.id), "name": "scale-a1b",
                      "flow_run_id": str(task_run.flow_run_id), "task_key": "scale-key"},
            task_name="scale", log_prints=True, log_level=logging.DEBUG)
    assert (plain["args"], plain["kwargs"]) == ((3,), {"factor": 2})
    validate_task(plain)  # every key the builder writes is a task key


def test_a_command_body_and_extra_keys() -> None:
    bodies = BodySpec(echo.fn, _task_run("echo-ensemble-3f0"), "echo", False, logging.INFO,
                      keys={"retries": 2, "retry_delay": [0.5, 1.0]})
    spec = bodies.build(4, ["hi"], {}, retry_delay=[0.7, 1.3])
    assert (spec["executable"], spec["arguments"]) == ("/bin/echo", ["hi"])
    assert "function" not in spec and "capture" not in spec
    assert spec["environment"] == {"COLOUR": "teal"}
    assert (spec["retries"], spec["retry_delay"]) == (2, [0.7, 1.3])  # the body's own keys win
    assert bodies.build(5, ["ho"], {})["retry_delay"] == [0.5, 1.0]
    assert spec["uid"].endswith(".4") and spec["group"] == bodies.group
    validate_task(spec)


# ------------------------------------------------------------------ routing
class _Recorder:
    def __init__(self) -> None:
        self.states: list[tuple[str, TaskState]] = []
        self.cancels = 0

    def on_state(self, task: dict[str, Any], state: TaskState) -> None:
        self.states.append((task["uid"], state))

    async def cancel(self) -> None:
        self.cancels += 1


async def test_callbacks_are_routed_by_group_key_not_by_name() -> None:
    backend = rhapsody.get_backend("concurrent", max_workers=2, executor="thread")
    dispatcher = BodyDispatcher(TransitionLines("concurrent", None), 1.0, artifacts=False)
    dispatcher.attach(backend)
    bodies = BodySpec(scale, _task_run(), "scale", False, logging.INFO)
    other = BodySpec(scale, _task_run("scale-a1b"), "scale", False, logging.INFO)
    mine, theirs = _Recorder(), _Recorder()
    try:
        await backend.start()
        member = bodies.build(0, [1], {})
        member["name"] = "renamed-for-display"
        # Another task run's member whose display name is this group's key.
        stranger = other.build(0, [2], {})
        stranger["name"] = bodies.group
        with dispatcher.join(bodies.group, mine), dispatcher.join(other.group, theirs):
            with pytest.raises(ValueError, match="already in use"), \
                    dispatcher.join(bodies.group, theirs):
                pass
            await backend.submit_tasks([member, stranger])
            await backend.wait(timeout=30)
            assert [s for uid, s in mine.states if s.is_terminal] == [TaskState.COMPLETED]
            assert {uid for uid, _ in mine.states} == {member["uid"]}
            assert {uid for uid, _ in theirs.states} == {stranger["uid"]}
            await dispatcher.cancel_all()
            assert (mine.cancels, theirs.cancels) == (1, 1)
        assert dispatcher.cancelled
        late = bodies.build(1, [3], {})
        await backend.submit_tasks([late])
        await backend.wait(timeout=30)
        assert {uid for uid, _ in mine.states} == {member["uid"]}  # left the group: not routed
    finally:
        await backend.terminate()


async def test_cancel_all_before_a_backend_is_attached_stops_every_body() -> None:
    dispatcher = BodyDispatcher(TransitionLines("concurrent", None), 1.0, artifacts=False)
    await dispatcher.cancel_all()
    assert dispatcher.cancelled and not dispatcher.attached
    state = await dispatcher.run_body(scale, (1,), {})  # returns before building a spec
    assert state.is_cancelled()


# ------------------------------------------------------------- retry options
def test_a_list_of_delays_is_kept_per_retry_the_last_repeated() -> None:
    options = MemberRetries(task(scale, retries=4, retry_delay_seconds=[0.1, 2]))
    assert options.keys == {"retries": 4, "retry_delay": [0.1, 2.0]}
    assert options.member_keys() == {}
    spec = validate_task({"function": scale, **options.keys})
    assert [retry_delay(spec, k) for k in (1, 2, 3, 4)] == [0.1, 2.0, 2.0, 2.0]


def test_a_callable_delay_is_resolved_as_prefect_resolves_it() -> None:
    backoff = exponential_backoff(backoff_factor=0.5)
    made = task(scale, retries=3, retry_delay_seconds=backoff)
    assert MemberRetries(made).keys["retry_delay"] == made.retry_delay_seconds == [0.5, 1, 2]
    made.retry_delay_seconds = backoff  # set after Task() resolved it: resolved the same way
    assert MemberRetries(made).keys["retry_delay"] == [0.5, 1.0, 2.0]


def test_jitter_draws_each_members_delays_within_prefects_clamp() -> None:
    options = MemberRetries(task(scale, retries=3, retry_delay_seconds=[0, 1.0, 2.0],
                                 retry_jitter_factor=0.5, timeout_seconds=9))
    assert options.keys["timeout"] == 9.0
    drawn = [options.member_keys()["retry_delay"] for _ in range(200)]
    assert all(len(delays) == 3 and delays[0] == 0 for delays in drawn)  # 0 is not jittered
    seconds, thirds = [d[1] for d in drawn], [d[2] for d in drawn]
    assert all(0 <= d <= 1.5 for d in seconds) and all(0 <= d <= 3.0 for d in thirds)
    assert len(set(seconds)) > 150  # a fresh draw per member
    assert 0.7 < sum(seconds) / len(seconds) < 1.3  # around the configured delay


def test_retry_condition_fn_is_refused_with_what_to_use() -> None:
    picky = task(scale, retries=2, retry_condition_fn=lambda task, run, state: True)
    with pytest.raises(ConfigurationError, match=r"task\.map") as info:
        MemberRetries(picky)
    assert info.value.config_key == "retry_condition_fn"
    assert "'scale' has a retry_condition_fn" in str(info.value)


# --------------------------------------------------- the engine's delays per retry
def test_retry_delay_validation() -> None:
    assert validate_task({"function": scale, "retry_delay": (0, 1)})["retry_delay"] == [0.0, 1.0]
    assert validate_task({"function": scale})["retry_delay"] == 1.0
    for bad in ([-1], ["1"], [True], -0.5):
        with pytest.raises(ConfigurationError) as info:
            validate_task({"function": scale, "retry_delay": bad})
        assert info.value.config_key == "retry_delay"
    assert retry_delay(validate_task({"function": scale, "retry_delay": []}), 3) == 0.0


async def test_the_engine_waits_each_retrys_own_delay(tmp_path: Any) -> None:
    from tests.helpers import count_and_fail_first

    backend = rhapsody.get_backend("concurrent", max_workers=2, executor="thread")
    seen: list[tuple[float, TaskState]] = []
    loop = asyncio.get_running_loop()
    backend.register_callback(lambda _task, state: seen.append((loop.time(), TaskState(state))))
    try:
        spec = {"function": count_and_fail_first, "args": (str(tmp_path / "calls"), 3),
                "retries": 3, "retry_delay": [0.05, 0.6]}
        await backend.submit_tasks([spec])
        await backend.wait(timeout=30)
    finally:
        await backend.terminate()
    assert spec["state"] == TaskState.COMPLETED
    # Each RETRYING is followed by the next attempt's WAITING after that retry's delay.
    gaps = [seen[i + 1][0] - when for i, (when, state) in enumerate(seen)
            if state is TaskState.RETRYING]
    assert len(gaps) == 3, seen
    assert 0.049 <= gaps[0] < 0.5 and gaps[1] >= 0.599 and gaps[2] >= 0.599, gaps
