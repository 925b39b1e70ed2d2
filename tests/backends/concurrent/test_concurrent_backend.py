"""The `concurrent` backend's own behaviour: slots, processes, cancel, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import threading
import time

import psutil
import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect import ConfigurationError, TaskError, TaskState
from rhapsody_prefect.backends.concurrent import WorkerDied
from tests.helpers import pid_alive, record_states, wait_for_state


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"max_workers": 0}, "max_workers"), ({"executor": "fork"}, "executor"),
     ({"workers": 2}, "workers")],
)
def test_bad_options_raise_configuration_error(kwargs, key):
    with pytest.raises(ConfigurationError) as info:
        rhapsody.get_backend("concurrent", **kwargs)
    assert info.value.config_key == key


_active = 0
_peak = 0
_lock = threading.Lock()


def _track_concurrency(duration: float) -> int:
    global _active, _peak
    with _lock:
        _active += 1
        _peak = max(_peak, _active)
    time.sleep(duration)
    with _lock:
        _active -= 1
    return _peak


async def test_concurrency_is_bounded_in_slots():
    global _peak
    _peak = 0
    async with rhapsody.get_backend("concurrent", max_workers=3) as backend:
        tasks = [{"function": _track_concurrency, "args": (0.2,)} for _ in range(9)]
        tasks.append({"function": _track_concurrency, "args": (0.2,), "cores_per_rank": 3})
        await backend.submit_tasks(tasks)
        await backend.wait(timeout=60)
    assert _peak == 3


async def test_task_larger_than_backend_is_refused():
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        with pytest.raises(ConfigurationError) as info:
            await backend.submit_tasks([{"executable": "true", "ranks": 2, "cores_per_rank": 2}])
        assert info.value.config_key == "cores_per_rank"
        assert "needs 4 cores" in str(info.value)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _pid() -> int:
    return os.getpid()


async def test_dead_worker_process_fails_only_its_task():
    async with rhapsody.get_backend("concurrent", max_workers=2, executor="process") as backend:
        tasks = [
            {"uid": "dies", "function": _die},
            {"uid": "fine", "function": _pid},
            {"uid": "later", "function": _pid},
        ]
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError) as info:
            await backend.wait(timeout=120)
        assert info.value.task_uid == "dies"
        assert info.value.details["failed"] == ["dies"]
        assert isinstance(tasks[0]["exception"], WorkerDied)
        assert "SIGKILL" in str(tasks[0]["exception"])
        assert tasks[1]["state"] == tasks[2]["state"] == TaskState.COMPLETED
        assert tasks[1]["return_value"] != os.getpid()  # really another process


def _closure_factory(offset):
    return lambda x: x + offset


async def test_process_mode_ships_closures_and_async_functions():
    async def async_double(x):
        await asyncio.sleep(0)
        return 2 * x

    async with rhapsody.get_backend("concurrent", max_workers=2, executor="process") as backend:
        tasks = [
            {"function": _closure_factory(10), "args": (5,)},
            {"function": async_double, "args": (4,)},
        ]
        await backend.submit_tasks(tasks)
        await backend.wait(timeout=120)
    assert [t["return_value"] for t in tasks] == [15, 8]


async def test_cancel_kills_whole_process_group(tmp_path):
    pid_file = tmp_path / "pids"
    script = f"sleep 300 & echo $! >> {pid_file}; echo $$ >> {pid_file}; wait"
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        await backend.submit_tasks([{"uid": "tree", "executable": script, "shell": True}])
        for _ in range(100):
            if pid_file.exists() and len(pid_file.read_text().split()) == 2:
                break
            await asyncio.sleep(0.1)
        pids = [int(p) for p in pid_file.read_text().split()]
        assert all(pid_alive(p) for p in pids)
        assert await backend.cancel_task("tree") is True
    await asyncio.sleep(0.5)
    assert not any(pid_alive(p) for p in pids)


async def test_cancel_queued_task_never_runs(tmp_path):
    marker = tmp_path / "ran"
    async with rhapsody.get_backend("concurrent", max_workers=1) as backend:
        seen = record_states(backend)
        await backend.submit_tasks([
            {"uid": "blocker", "executable": "sleep", "arguments": ["2"]},
            {"uid": "queued", "executable": "touch", "arguments": [str(marker)]},
        ])
        assert await backend.cancel_task("queued") is True
        await backend.wait(timeout=60)
    assert not marker.exists()
    assert seen["queued"][0] == "NEW"
    assert seen["queued"][-1] == "CANCELED"
    assert "EXECUTING" not in seen["queued"]
    assert seen["blocker"][-1] == "COMPLETED"


def _nap_reporting_pid(pid_file: str, seconds: float) -> None:
    pathlib.Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)


async def test_cancel_running_process_function(tmp_path):
    pid_file = tmp_path / "nap.pid"
    async with rhapsody.get_backend("concurrent", max_workers=1, executor="process") as backend:
        seen = record_states(backend)
        await backend.submit_tasks([
            {"uid": "nap", "function": _nap_reporting_pid, "args": (str(pid_file), 60)}
        ])
        while not (pid_file.exists() and pid_file.read_text()):
            await asyncio.sleep(0.05)
        nap_worker = int(pid_file.read_text())
        assert backend.get_task_state("nap") == TaskState.EXECUTING
        assert await backend.cancel_task("nap") is True
        # the pool recovers: a new worker runs the next task
        tasks = [{"function": _pid}]
        await backend.submit_tasks(tasks)
        await backend.wait(timeout=60)
        assert tasks[0]["state"] == TaskState.COMPLETED
        # The cancel ended the worker in the middle of its 60 s sleep (a cancel that waited
        # for the body would leave the pool's worker alive), and another worker ran the next.
        assert not pid_alive(nap_worker)
        assert tasks[0]["return_value"] != nap_worker
    assert seen["nap"][-1] == "CANCELED" and "COMPLETED" not in seen["nap"]


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_terminate_leaves_no_child_process(executor):
    before = _children()
    backend = rhapsody.get_backend("concurrent", max_workers=2, executor=executor)
    tasks = [
        {"executable": "sleep", "arguments": ["120"]},
        {"function": _pid},
        {"executable": "/bin/sh", "arguments": ["-c", "sleep 120 & wait"]},
    ]
    await backend.submit_tasks(tasks)
    await asyncio.sleep(1.0)
    await asyncio.wait_for(backend.terminate(), 60)
    await asyncio.sleep(0.3)
    leftover = {pid for pid in _children() - before if pid_alive(pid)}
    assert leftover == set()
    assert all(t["state"] in ("COMPLETED", "CANCELED") for t in tasks)


async def test_mpi_ranks_without_launcher_is_configuration_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    async with rhapsody.get_backend("concurrent", max_workers=4) as backend:
        tasks = [{"uid": "mpi", "executable": "/bin/hostname", "ranks": 2}]
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError):
            await backend.wait(timeout=30)
        assert isinstance(tasks[0]["exception"], ConfigurationError)
        assert tasks[0]["exception"].config_key == "ranks"


def _exit_interpreter() -> None:
    raise SystemExit(3)


async def test_system_exit_in_a_thread_function_fails_only_its_task():
    """A function that raises SystemExit (a BaseException) in a pool thread ends FAILED
    with it; the backend, its loop and the other tasks go on."""
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        tasks = [{"uid": "exits", "function": _exit_interpreter},
                 {"uid": "sums", "function": sum, "args": ([1, 2, 3],)}]
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError):
            await backend.wait()
        assert tasks[0]["state"] == TaskState.FAILED
        assert isinstance(tasks[0]["exception"], SystemExit)
        assert tasks[1]["state"] == TaskState.COMPLETED and tasks[1]["return_value"] == 6
        again = [{"uid": "after", "function": sum, "args": ([4],)}]
        await backend.submit_tasks(again)
        await backend.wait()
        assert again[0]["return_value"] == 4


async def test_cancel_running_thread_function_reports_canceled_at_once():
    release = threading.Event()
    async with rhapsody.get_backend("concurrent", max_workers=1) as backend:
        states = record_states(backend)
        tasks = [{"uid": "blocks", "function": release.wait, "args": (30,)},
                 {"uid": "queued", "function": sum, "args": ([1],)}]
        await backend.submit_tasks(tasks)
        while backend.get_task_state("blocks") is not TaskState.EXECUTING:
            await asyncio.sleep(0.01)
        assert await backend.cancel_task("blocks") is True
        assert await backend.cancel_task("queued") is True
        release.set()
        await backend.wait()
        assert [t["state"] for t in tasks] == [TaskState.CANCELED, TaskState.CANCELED]
        assert "return_value" not in tasks[0] or tasks[0]["return_value"] is None
        assert states["queued"][-1] == TaskState.CANCELED
        assert TaskState.EXECUTING not in states["queued"]


def _sleep_and_stamp(path: str, seconds: float) -> str:
    time.sleep(seconds)
    pathlib.Path(path).write_text(repr(time.monotonic()))
    return "late"


def _stamp_start(path: str) -> str:
    pathlib.Path(path).write_text(repr(time.monotonic()))
    return "ran"


async def test_a_timed_out_thread_function_keeps_its_slot_until_it_returns(tmp_path):
    """Thread mode cannot stop a function: its task fails at the timeout, says so, and the
    function's slot stays taken until it returns, so the next task waits for it."""
    backend = rhapsody.get_backend("concurrent", max_workers=1, executor="thread")
    ended, started = tmp_path / "slow-ended", tmp_path / "next-started"
    slow = {"uid": "slow", "function": _sleep_and_stamp, "args": (str(ended), 2.0),
            "timeout": 0.3}
    # Its timeout would run out while it waited for a pool thread, were it launched at
    # once: it is launched only when the slot is free.
    following = {"uid": "next", "function": _stamp_start, "args": (str(started),),
                 "timeout": 1.0}
    try:
        await backend.submit_tasks([slow])
        await wait_for_state(backend, "slow", TaskState.FAILED)
        assert slow["still_running"] == [1]  # the record says the body still runs
        assert "could not be stopped" in str(slow["exception"])
        await backend.submit_tasks([following])
        await wait_for_state(backend, "next", TaskState.COMPLETED)
        # The next task started only once the abandoned function had returned:
        assert float(started.read_text()) >= float(ended.read_text())
        assert slow["still_running"] == []
        assert slow["state"] == TaskState.FAILED and slow["return_value"] is None
        assert backend.superseded_reports == 1  # its late result was dropped
    finally:
        await backend.terminate()
