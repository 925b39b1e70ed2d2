"""Pilots that end: lost, out of runtime, shared by several backends (local.localhost).

Each test starts a small pilot of its own (one core). They live apart from
tests/backends/radical_pilot/test_radical_pilot.py so that module's pilot is closed before
these start.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

rp_processes = pytest.importorskip("rhapsody_prefect.backends.radical_pilot.processes")

from rhapsody_prefect import TaskState  # noqa: E402
from rhapsody_prefect.backends.radical_pilot import (  # noqa: E402
    RadicalPilotBackend,
    close_shared_pilots,
)
from rhapsody_prefect.exceptions import BackendError, TaskError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.radical_pilot]


def marked_processes(run_id: str) -> list[int]:
    return [p.pid for p, _ in rp_processes.marked_processes(run_id)]


async def test_lost_pilot_fails_outstanding_tasks(tmp_path: Path) -> None:
    backend = RadicalPilotBackend({"cores": 1}, work_dir=tmp_path, raptor=False)
    try:
        await backend.wait_active(timeout=180)
        await backend.submit_tasks([{"uid": "l.sleep", "executable": "/bin/sleep",
                                     "arguments": ["300"]}])
        await asyncio.sleep(3)
        agents = [p for p, _ in rp_processes.marked_processes(backend.run_id)
                  if p.name().startswith("rp.agent.0")]
        assert agents, "no agent_0 process found"
        for process in agents:
            process.kill()
        t0 = time.monotonic()
        with pytest.raises(TaskError) as info:
            await backend.wait(timeout=120)
        print(f"\npilot loss noticed after {time.monotonic() - t0:.1f}s")
        error = backend.get_task("l.sleep")["exception"]
        assert isinstance(error, BackendError)
        assert "pilot" in str(error)
        assert "pilot" in str(info.value)
        await backend.submit_tasks([{"uid": "l.after", "executable": "/bin/true"}])
        with pytest.raises(TaskError):
            await backend.wait(timeout=30)
        assert isinstance(backend.get_task("l.after")["exception"], BackendError)
    finally:
        await backend.terminate()
    assert marked_processes(backend.run_id) == []
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240


async def test_pilot_runtime_expiry_fails_tasks(tmp_path: Path) -> None:
    backend = RadicalPilotBackend({"cores": 1, "runtime": 1}, work_dir=tmp_path,
                                  keep_sandbox=True)
    try:
        await backend.submit_tasks([
            {"uid": "r.sleep", "executable": "/bin/sleep", "arguments": ["600"]},
            {"uid": "r.fn", "function": time.sleep, "args": (600,)},
        ])
        with pytest.raises(TaskError):
            await backend.wait(timeout=240)
        for uid in ("r.sleep", "r.fn"):
            task = backend.get_task(uid)
            assert task["state"] == TaskState.FAILED, uid
            assert isinstance(task["exception"], BackendError), uid
        assert "runtime" in str(backend.get_task("r.sleep")["exception"])
    finally:
        await backend.terminate()
    assert marked_processes(backend.run_id) == []
    assert backend.run_dir.is_dir()  # keep_sandbox


async def test_shared_backends_reuse_one_pilot(tmp_path: Path) -> None:
    options = {"resources": {"cores": 1}, "work_dir": tmp_path, "raptor": False,
               "shared": True}
    first = RadicalPilotBackend(**options)
    await first.submit_tasks([{"uid": "s.1", "executable": "/bin/echo", "arguments": ["1"]}])
    await first.wait(timeout=180)
    await first.terminate()
    run_dir = first.run_dir
    assert run_dir is not None
    assert run_dir.is_dir()  # the shared pilot outlives the backend
    second = RadicalPilotBackend(**options)
    await second.submit_tasks([{"uid": "s.1", "executable": "/bin/echo", "arguments": ["2"]}])
    await second.wait(timeout=60)
    assert second.run_id == first.run_id  # the same session and pilot: no second start
    assert second.get_task("s.1")["stdout"] == "2\n"
    await second.terminate()
    other = RadicalPilotBackend(resources={"cores": 1}, work_dir=tmp_path, shared=True)
    assert other._share_key() != second._share_key()  # other raptor config: other pilot
    await asyncio.to_thread(close_shared_pilots)
    assert marked_processes(first.run_id) == []
    assert not run_dir.exists()
