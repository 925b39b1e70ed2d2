"""The RHAPSODY backend contract, run against every backend configuration.

Each backend adds itself through a `<name>_backend_spec` fixture (see conftest.py).
"""

from __future__ import annotations

import asyncio
import pathlib
import time

import pytest

from rhapsody_prefect import ConfigurationError, TaskError, TaskState, WaitTimeoutError
from tests.conftest import BACKEND_SPECS
from tests.helpers import count_and_fail_first, record_states

pytestmark = [pytest.mark.parametrize("backend_spec", BACKEND_SPECS, indirect=True)]


def square(x: int) -> int:
    return x * x


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


def raise_value_error(message: str) -> None:
    raise ValueError(message)


async def test_function_and_executable_results(backend):
    tasks = [
        {"uid": "sq", "function": square, "args": [7]},
        {"uid": "add", "function": async_add, "args": (1,), "kwargs": {"b": 2}},
        {"uid": "echo", "executable": "/bin/echo", "arguments": ["hello", "world"]},
        {"uid": "sh", "executable": "echo out; echo err >&2; exit 0", "shell": True},
    ]
    await backend.submit_tasks(tasks)
    await backend.wait(timeout=120)
    by_uid = {t["uid"]: t for t in tasks}
    assert by_uid["sq"]["return_value"] == 49
    assert by_uid["add"]["return_value"] == 3
    assert by_uid["echo"]["exit_code"] == 0
    assert by_uid["echo"]["stdout"].strip() == "hello world"
    assert by_uid["sh"]["stdout"].strip() == "out"
    assert by_uid["sh"]["stderr"].strip() == "err"
    assert all(t["state"] == TaskState.COMPLETED == "COMPLETED" for t in tasks)
    assert backend.get_task_state("sq") == TaskState.COMPLETED


async def test_reference_error_example_raises_task_error(backend):
    tasks = [{"uid": "test_task", "executable": "false"}]
    await backend.submit_tasks(tasks)
    with pytest.raises(TaskError) as info:
        await backend.wait(timeout=120)
    assert info.value.task_uid == "test_task"
    assert info.value.exit_code == 1
    assert tasks[0]["state"] == TaskState.FAILED


async def test_failed_executable_reports_stderr_tail(backend):
    await backend.submit_tasks(
        [{"uid": "noisy", "executable": "echo boom-marker >&2; exit 3", "shell": True}]
    )
    with pytest.raises(TaskError) as info:
        await backend.wait(timeout=120)
    assert info.value.exit_code == 3
    assert "boom-marker" in info.value.details["stderr"]
    assert "boom-marker" in str(info.value)


async def test_function_exception_is_kept(backend):
    tasks = [{"uid": "bad", "function": raise_value_error, "args": ["no good"]}]
    await backend.submit_tasks(tasks)
    with pytest.raises(TaskError) as info:
        await backend.wait(timeout=120)
    assert info.value.task_uid == "bad"
    assert isinstance(tasks[0]["exception"], ValueError)
    assert "no good" in str(tasks[0]["exception"])


async def test_callbacks_fire_in_order(backend):
    seen = record_states(backend)
    await backend.submit_tasks(
        [{"uid": "ok", "function": square, "args": [2]}, {"uid": "ko", "executable": "false"}]
    )
    with pytest.raises(TaskError):
        await backend.wait(timeout=120)
    for uid, final in (("ok", "COMPLETED"), ("ko", "FAILED")):
        states = seen[uid]
        assert states[0] == "NEW"
        assert states[-1] == final
        assert states[-2] == "EXECUTING"
        assert states.count("EXECUTING") == 1
        order = ["NEW", "WAITING", "READY", "EXECUTING", final]
        assert [s for s in order if s in states] == [s for s in states if s in order]


async def test_generated_uids_and_duplicates_refused(backend):
    tasks = [{"function": square, "args": [3]} for _ in range(3)]
    await backend.submit_tasks(tasks)
    uids = [t["uid"] for t in tasks]
    assert len(set(uids)) == 3
    with pytest.raises(ConfigurationError) as info:
        await backend.submit_tasks([{"uid": uids[0], "executable": "/bin/true"}])
    assert info.value.config_key == "uid"
    await backend.wait(timeout=120)


async def test_invalid_task_refused_before_anything_runs(backend, tmp_path):
    marker = tmp_path / "ran"
    seen = record_states(backend)
    tasks = [
        {"uid": "would-run", "executable": "touch", "arguments": [str(marker)]},
        {"uid": "bad", "executable": "/bin/true", "ranks": 0},
    ]
    with pytest.raises(ConfigurationError) as info:
        await backend.submit_tasks(tasks)
    assert info.value.config_key == "ranks"
    assert "ranks" in str(info.value) and "0" in str(info.value)
    await asyncio.sleep(0.5)
    assert not marker.exists()
    assert seen == {}


async def test_cancel_running_task(backend):
    seen = record_states(backend)
    await backend.submit_tasks([{"uid": "long", "executable": "sleep", "arguments": ["60"]}])
    for _ in range(600):
        if backend.get_task_state("long") == TaskState.EXECUTING:
            break
        await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await backend.cancel_task("long") is True
    assert time.monotonic() - started < 30
    await backend.wait(timeout=30)
    assert backend.get_task_state("long") == TaskState.CANCELED
    assert seen["long"][-1] == "CANCELED"


async def test_wait_timeout_lists_unfinished(backend):
    await backend.submit_tasks([{"uid": "slow", "executable": "sleep", "arguments": ["60"]}])
    with pytest.raises(WaitTimeoutError) as info:
        await backend.wait(timeout=1)
    assert info.value.unfinished == ["slow"]
    assert isinstance(info.value, TimeoutError)
    assert "slow" in str(info.value)


async def test_task_timeout_fails_task(backend):
    tasks = [{"uid": "late", "executable": "sleep", "arguments": ["60"], "timeout": 2}]
    await backend.submit_tasks(tasks)
    with pytest.raises(TaskError) as info:
        await backend.wait(timeout=90)
    assert info.value.task_uid == "late"
    assert isinstance(tasks[0]["exception"], TimeoutError)


async def test_backend_retries(backend, tmp_path):
    seen = record_states(backend)
    counter = str(tmp_path / "calls")
    tasks = [
        {
            "uid": "flaky",
            "function": count_and_fail_first,
            "args": [counter, 2],
            "retries": 2,
            "retry_delay": 0.1,
        }
    ]
    await backend.submit_tasks(tasks)
    await backend.wait(timeout=120)
    assert tasks[0]["return_value"] == "ok after 3 calls"
    assert seen["flaky"].count("RETRYING") == 2
    assert seen["flaky"][-1] == "COMPLETED"


async def test_environment_and_cwd(backend, tmp_path: pathlib.Path):
    tasks = [
        {
            "uid": "env",
            "executable": "/bin/sh",
            "arguments": ["-c", "echo $RHAPSODY_TEST_VAR; pwd"],
            "environment": {"RHAPSODY_TEST_VAR": "marker-42"},
            "cwd": str(tmp_path),
        }
    ]
    await backend.submit_tasks(tasks)
    await backend.wait(timeout=120)
    lines = tasks[0]["stdout"].split()
    assert lines == ["marker-42", str(tmp_path)]


async def test_terminate_cancels_everything_left(backend):
    tasks = [{"executable": "sleep", "arguments": ["60"]} for _ in range(4)]
    await backend.submit_tasks(tasks)
    await asyncio.sleep(1)
    await asyncio.wait_for(backend.terminate(), 60)
    assert {t["state"] for t in tasks} == {TaskState.CANCELED}
