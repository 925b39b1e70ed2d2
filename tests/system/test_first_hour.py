"""What a new user meets first: early option errors, missing programs, readable logs.

Real Prefect (the ephemeral API), real backends; no mocks.
"""

from __future__ import annotations

import logging
import traceback

import pytest
from prefect import flow, get_run_logger, task

import rhapsody_prefect as rhapsody
from rhapsody_prefect import (
    ConfigurationError,
    ExecutableFailed,
    RhapsodyRunner,
    executable_task,
)
from tests.helpers import task_run_logs


# ------------------------------------------------------- options checked at creation
@pytest.mark.parametrize(
    ("args", "kwargs", "key", "named"),
    [
        (("concurent",), {}, "backend", "concurrent"),
        (("concurrent",), {"max_worker": 2}, "max_worker", "max_workers"),
        (("concurrent",), {"max_workers": 0}, "max_workers", "max_workers"),
        (("dask",), {"adress": "tcp://x:1"}, "adress", "address"),
        (("dask",), {"log_level": "LOUD"}, "log_level", "logging level"),
        (("radical_pilot",), {"resources": {"cors": 2}}, "cors", "cores"),
    ],
)
def test_runner_checks_backend_and_options_where_the_flow_is_defined(args, kwargs, key, named):
    with pytest.raises(ConfigurationError) as info:
        RhapsodyRunner(*args, **kwargs)
    assert info.value.config_key == key
    assert named in str(info.value)


def test_duplicate_does_not_reconstruct_the_backend():
    runner = RhapsodyRunner("concurrent", max_workers=3)
    twin = runner.duplicate()
    assert twin == runner and twin is not runner
    assert twin.backend_kwargs == {"max_workers": 3}


# ------------------------------------------------------------------ missing programs
@executable_task
def missing_program():
    return ["no-such-program-xyz", "--flag"]


def test_missing_program_fails_like_a_shell_exit_127():
    @flow(task_runner=RhapsodyRunner("concurrent", max_workers=2))
    def uses_it():
        return missing_program.submit().result(raise_on_failure=False)

    error = uses_it()
    assert isinstance(error, ExecutableFailed)
    assert error.exit_code == 127
    assert "no-such-program-xyz" in str(error) and "not found" in str(error)
    # Our plumbing is not in the traceback the user reads: at most the proxy's frame.
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "rhapsody_prefect" in f.filename]
    assert [f.name for f in ours] == ["send_to_backend"], [(f.filename, f.name) for f in ours]


def test_missing_program_outside_a_rhapsody_runner_too():
    @flow
    def local():
        return missing_program.submit().result(raise_on_failure=False)

    error = local()
    assert isinstance(error, ExecutableFailed) and error.exit_code == 127


async def test_missing_program_through_the_api_is_exit_127():
    async with rhapsody.get_backend("concurrent", max_workers=1) as backend:
        tasks = [{"executable": "no-such-program-xyz"}, {"executable": "/bin/true", "cwd": "/nope"}]
        await backend.submit_tasks(tasks)
        with pytest.raises(rhapsody.TaskError):
            await backend.wait(timeout=30)
    assert tasks[0]["exit_code"] == 127 and "command not found" in tasks[0]["stderr"]
    assert tasks[1]["exit_code"] == 127 and "/nope" in tasks[1]["stderr"]


# --------------------------------------------------------------------- replayed lines
def test_replayed_body_lines_come_as_one_announced_block():
    @task
    def chatty():
        get_run_logger().info("first-body-line")
        get_run_logger().info("second-body-line")
        return 1

    @flow(task_runner=RhapsodyRunner("concurrent", max_workers=1, executor="process"))
    def run_it():
        future = chatty.submit()
        return future.result(), future.task_run_id

    _, task_run_id = run_it()
    logs = task_run_logs(task_run_id, "second-body-line")
    messages = [log.message for log in logs]
    (header,) = [m for m in messages if "replayed with their original times" in m]
    assert "2 line(s)" in header
    order = [messages.index(header), messages.index("first-body-line"),
             messages.index("second-body-line")]
    header_log = logs[order[0]]
    assert header_log.timestamp >= logs[order[2]].timestamp  # lines keep their own times
    assert "first-body-line" in messages and "second-body-line" in messages


# ----------------------------------------------------------------------- quiet Dask
@pytest.mark.dask
async def test_a_cluster_the_backend_starts_logs_at_warning_unless_asked():
    dask_logger = logging.getLogger("distributed")
    before = dask_logger.level
    backend = rhapsody.get_backend("dask", resources={"threads": 1})
    async with backend:
        assert dask_logger.getEffectiveLevel() == logging.WARNING
    assert dask_logger.level == before
    loud = rhapsody.get_backend("dask", resources={"threads": 1}, log_level="INFO")
    async with loud:
        assert dask_logger.getEffectiveLevel() == logging.INFO
    assert dask_logger.level == before
