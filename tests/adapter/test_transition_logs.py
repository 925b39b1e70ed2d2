"""The runner's per-task transition log lines, read back from a real Prefect API.

A body that finishes within `executing_log_after` seconds gets one "finished"
line (its timeline says when it queued, executed and ended); a longer body also
gets an "executing" line, stamped with the moment it started executing.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from prefect import flow, task

from rhapsody_prefect import ConfigurationError, RhapsodyRunner
from tests.helpers import task_run_logs


def test_short_body_gets_one_line_long_body_also_gets_its_executing_line():
    @task
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @flow(task_runner=RhapsodyRunner("concurrent", executing_log_after=0.3))
    def two_bodies():
        short, long = nap.submit(0.0), nap.submit(1.5)
        return short.result(), long.result(), short.task_run_id, long.task_run_id

    _, _, short_id, long_id = two_bodies()

    short_logs = task_run_logs(short_id, " finished: RHAPSODY COMPLETED")
    messages = [log.message for log in short_logs]
    assert not any(" executing: " in m for m in messages), messages
    (finished,) = [m for m in messages if " finished: " in m]
    assert ", executing +" in finished and ", completed +" in finished, finished

    long_logs = task_run_logs(long_id, " finished: RHAPSODY COMPLETED")
    executing = [log for log in long_logs if " executing: RHAPSODY EXECUTING" in log.message]
    finished_logs = [log for log in long_logs if " finished: RHAPSODY COMPLETED" in log.message]
    assert len(executing) == 1 and len(finished_logs) == 1, [log.message for log in long_logs]
    # stamped when the body started, not when the 0.3 s delay ran out
    gap = finished_logs[0].timestamp - executing[0].timestamp
    assert gap >= timedelta(seconds=1.3), gap


@pytest.mark.parametrize("bad", [-1, "1", True, None])
def test_executing_log_after_must_be_seconds(bad):
    with pytest.raises(ConfigurationError, match="executing_log_after") as caught:
        RhapsodyRunner("concurrent", executing_log_after=bad)
    assert repr(bad) in str(caught.value)


def test_executing_log_after_survives_duplicate():
    runner = RhapsodyRunner("concurrent", executing_log_after=0)
    assert runner.duplicate().executing_log_after == 0
