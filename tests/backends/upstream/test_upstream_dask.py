"""Upstream RHAPSODY's dask_parallel backend against a real Dask LocalCluster.

`upstream.dask` connects its own asynchronous Client to the module's cluster
(`dask_cluster`, 2 worker processes); bodies run in the workers.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect import TaskError, TaskState
from tests.helpers import count_and_fail_first, record_states, wait_for_state

pytest.importorskip("rhapsody")
pytestmark = pytest.mark.dask


def _pid_plus(x: int) -> tuple[int, int]:
    return os.getpid(), x + 1


async def _async_square(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * x


def _boom() -> None:
    raise KeyError("missing-in-worker")


@pytest.fixture
def backend(dask_cluster):
    return rhapsody.get_backend("upstream.dask",
                                resources={"address": dask_cluster.scheduler_address})


async def test_bodies_run_in_the_workers(backend, tmp_path):
    tasks = [{"uid": "f", "function": _pid_plus, "args": (1,)},
             {"uid": "a", "function": _async_square, "args": (7,)},
             {"uid": "c", "executable": "/bin/sh", "arguments": ["-c", 'echo "$Y"; pwd'],
              "environment": {"Y": "from-env"}, "cwd": str(tmp_path)},
             {"uid": "bad", "function": _boom},
             {"uid": "exit", "executable": "/bin/sh", "arguments": ["-c", "exit 4"]}]
    async with backend:
        states = record_states(backend)
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError) as caught:
            await backend.wait(timeout=60)
    f, a, c, bad, exit_ = tasks
    worker_pid, value = f["return_value"]
    assert value == 2 and worker_pid != os.getpid()
    assert a["return_value"] == 49
    assert c["stdout"] == f"from-env\n{tmp_path}\n"
    assert isinstance(bad["exception"], KeyError) and "missing-in-worker" in str(bad["exception"])
    assert (exit_["state"], exit_["exit_code"]) == ("FAILED", 4)
    assert caught.value.details["failed"] == ["bad", "exit"]
    assert states["f"] == ["NEW", "WAITING", "READY", "EXECUTING", "COMPLETED"]


async def test_retries_are_fresh_dask_keys_and_cancel_ends_canceled(backend, tmp_path):
    counter = str(tmp_path / "calls")
    flaky = {"uid": "flaky", "function": count_and_fail_first, "args": (counter, 1),
             "retries": 1, "retry_delay": 0}
    # keeps its worker thread busy for 3 s after the cancel: Dask cannot stop a thread
    blocked = {"uid": "blocked", "executable": "/bin/sleep", "arguments": ["3"]}
    async with backend:
        await backend.submit_tasks([flaky, blocked])
        await wait_for_state(backend, "blocked", TaskState.EXECUTING, timeout=30)
        assert await backend.cancel_task("blocked") is True
        await backend.wait(timeout=60)
    assert flaky["return_value"] == "ok after 2 calls" and backend.attempt_of("flaky") == 2
    assert blocked["state"] == "CANCELED"


async def test_timeout_and_a_dask_option_through_backend_kwargs(backend):
    slow = {"uid": "slow", "executable": "/bin/sleep", "arguments": ["3"], "timeout": 0.5}
    gpu = {"uid": "gpu", "function": _pid_plus, "args": (0,),
           "backend_kwargs": {"resources": {"GPU": 1}}}  # upstream's Dask submit option
    async with backend:
        await backend.submit_tasks([slow, gpu])
        with pytest.raises(TaskError):
            await backend.wait(timeout=60)
    assert slow["state"] == "FAILED" and isinstance(slow["exception"], TimeoutError)
    assert gpu["state"] == "FAILED" and "No worker can satisfy" in str(gpu["exception"])


async def test_a_scheduler_that_is_not_there_fails_the_start():
    backend = rhapsody.get_backend("upstream.dask",
                                   resources={"address": "tcp://127.0.0.1:9", "timeout": 2})
    with pytest.raises(rhapsody.BackendError, match="could not start"):
        await backend.start()
    await backend.terminate()
