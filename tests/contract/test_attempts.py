"""The engine owns attempts: a timed-out attempt that reports late never decides its task.

The race of issue 21: attempt 1 of a function times out and is retried; its body
returns (or fails) only after the retry started. Whatever the backend, the task
ends with attempt 2's outcome: through the RHAPSODY API and through
`ensemble_map`, on every backend configuration of the contract suite.
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from prefect import flow, task, unmapped

import rhapsody_prefect as rhapsody
from rhapsody_prefect import RhapsodyRunner, TaskError, TaskState, ensemble_map
from tests.conftest import BACKEND_SPECS
from tests.contract import race_bodies
from tests.contract.race_bodies import FIRST, TIMEOUT, racing_body

pytestmark = [pytest.mark.parametrize("backend_spec", BACKEND_SPECS, indirect=True)]

def _scale(backend_spec: tuple[str, dict]) -> float:
    return 6.0 if backend_spec[0] == "radical_pilot" else 1.0  # raptor's start latency


@pytest.mark.parametrize("retry_fails", [False, True], ids=["completed", "failed"])
async def test_a_late_report_of_a_timed_out_attempt_never_decides(
    backend_spec, tmp_path: pathlib.Path, retry_fails: bool
) -> None:
    name, kwargs = backend_spec
    scale = _scale(backend_spec)
    backend = rhapsody.get_backend(name, **kwargs)
    try:
        # Warm: a pilot's raptor workers start with its first function task (~20 s), which
        # would count against attempt 1's timeout.
        await backend.submit_tasks([{"function": len, "args": ([],)}])
        await backend.wait(timeout=600)
        spec = {"function": racing_body, "args": (str(tmp_path), scale, retry_fails),
                "timeout": TIMEOUT * scale, "retries": 1, "retry_delay": 0}
        await backend.submit_tasks([spec])
        if retry_fails:
            with pytest.raises(TaskError, match="attempt 2 failed"):
                await backend.wait(timeout=120 * scale)
        else:
            await backend.wait(timeout=120 * scale)
        # Past the moment attempt 1 would have reported (if it was not stopped):
        await asyncio.sleep(FIRST * scale)
        assert (tmp_path / "attempt-2").exists()
        if retry_fails:
            assert spec["state"] == TaskState.FAILED
            assert "attempt 2 failed" in str(spec["exception"])
            assert spec["return_value"] is None
        else:
            assert spec["state"] == TaskState.COMPLETED
            assert spec["return_value"] == "attempt 2"
        if name == "concurrent" and kwargs.get("executor") == "thread":
            # A thread cannot be stopped: attempt 1 ran to its end, its report was dropped.
            assert (tmp_path / "attempt-1-returned").exists()
            assert backend.superseded_reports >= 1
            assert spec["still_running"] == []
        elif name != "dask":  # process mode and raptor stop the body (Dask cannot)
            assert not (tmp_path / "attempt-1-returned").exists()
    finally:
        await backend.terminate()


racing_member = task(race_bodies.racing_member, timeout_seconds=TIMEOUT, retries=1,
                     retry_delay_seconds=0)


@pytest.mark.slow
def test_ensemble_members_take_the_current_attempts_outcome(
    backend_spec, tmp_path: pathlib.Path
) -> None:
    name, kwargs = backend_spec
    scale = _scale(backend_spec)
    for index in range(2):
        (tmp_path / str(index)).mkdir()
    member = racing_member.with_options(timeout_seconds=TIMEOUT * scale)
    if name == "dask":
        # Dask cannot stop a cancelled function either: each timed-out attempt 1 keeps
        # its worker thread until it returns. Threads for both members' retries too (the
        # shared cluster has 2): a retry queued behind them would time out waiting.
        kwargs = {"resources": {"threads": 4}}

    @flow(task_runner=RhapsodyRunner(name, **kwargs))
    def race() -> list:
        return ensemble_map(member, range(2), directory=unmapped(str(tmp_path)),
                            scale=unmapped(scale), retry_fails=unmapped(True),
                            allow_failures=True).result()

    first, second = race()
    assert first == "attempt 2"  # not attempt 1's late value
    assert isinstance(second, Exception) and "attempt 2 failed" in str(second)
