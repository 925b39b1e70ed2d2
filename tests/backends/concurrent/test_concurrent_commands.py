"""Commands on the `concurrent` backend: waited for on the event loop, not in a thread each.

Real processes throughout. The behaviour tests run twice (fixture `waiting`): with
commands waited for on the loop, and with the thread-per-command fallback that a
machine without pidfds uses (`body/command_wait.py`).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
import threading

import psutil
import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect import TaskError, TaskState
from rhapsody_prefect.body import command_wait
from tests.helpers import pid_alive

MANY = 300
#: Threads the flow process may hold while MANY commands run (spawners, pools, the loop).
THREAD_BOUND = 30


def _threads_in_proc_status() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line in /proc/self/status")


def _live_children(name: str) -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == name and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _commands_left(backend, before: set[int]) -> set[int]:
    """Live processes started since `before`, but for the backend's watchdog."""
    return {pid for pid in _descendants() - before - {backend._guard.pid} if pid_alive(pid)}


async def _dies(pid: int) -> bool:
    """Whether `pid` is gone (or a zombie) within 30 s: a SIGKILLed process exits
    asynchronously, so this waits for it rather than sampling once."""
    for _ in range(300):
        if not pid_alive(pid):
            return True
        await asyncio.sleep(0.1)
    return not pid_alive(pid)


@pytest.fixture(params=["loop", "fallback"])
def waiting(request, monkeypatch) -> str:
    """Run the test with pidfd waiting on the loop, and with the thread fallback."""
    if request.param == "loop" and not command_wait.WAIT_ON_LOOP:
        pytest.skip("no pidfd_open here: commands are waited for in threads")
    monkeypatch.setattr(command_wait, "WAIT_ON_LOOP", request.param == "loop")
    return request.param


@pytest.mark.skipif(not command_wait.WAIT_ON_LOOP, reason="needs pidfd_open (Linux >= 5.3)")
async def test_running_commands_hold_no_thread_each(tmp_path):
    # Every command blocks on a shared lock the test holds, so all MANY run at once
    # for as long as the test needs, however slowly this machine spawns them.
    lock_path = tmp_path / "gate"
    lock_path.touch()
    gate = os.open(lock_path, os.O_RDONLY)
    fcntl.flock(gate, fcntl.LOCK_EX)
    released = False
    # Threads left by earlier tests of the session (a Dask cluster's, Prefect's) are not
    # this backend's: count what the backend adds.
    before = (threading.active_count(), _threads_in_proc_status())
    try:
        async with rhapsody.get_backend("concurrent", max_workers=MANY) as backend:
            tasks = [{"executable": "flock", "arguments": ["-s", str(lock_path), "true"]}
                     for _ in range(MANY)]
            await backend.submit_tasks(tasks)
            running: list[psutil.Process] = []
            for _ in range(1200):
                running = _live_children("flock")
                if len(running) == MANY:
                    break
                await asyncio.sleep(0.1)
            assert len(running) == MANY
            threads = (threading.active_count(), _threads_in_proc_status())
            added = max(now - then for now, then in zip(threads, before, strict=True))
            print(f"{MANY} commands running; threads (threading, /proc): {threads}, "
                  f"before: {before}")
            assert added < THREAD_BOUND
            fcntl.flock(gate, fcntl.LOCK_UN)
            released = True
            await backend.wait(timeout=300)
    finally:
        if not released:
            fcntl.flock(gate, fcntl.LOCK_UN)
        os.close(gate)
    assert [t["state"] for t in tasks] == [TaskState.COMPLETED] * MANY
    assert {t["exit_code"] for t in tasks} == {0}


BIG = 5 * 1024 * 1024
_WRITE_BOTH = f"""
import sys
chunk = 65536
for start in range(0, {BIG}, chunk):
    sys.stdout.write(("%09d\\n" % start) * (chunk // 10))
    sys.stderr.write(("E%08d\\n" % start) * (chunk // 10))
"""


def _expected(prefix: str) -> str:
    chunk = 65536
    fmt = "%09d\n" if prefix == "" else "E%08d\n"
    return "".join((fmt % start) * (chunk // 10) for start in range(0, BIG, chunk))


async def test_output_larger_than_a_pipe_buffer_arrives_intact(waiting):
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        # output_limit=None: held whole, however large (the default keeps 1 MiB per
        # stream in the result and the whole in a file: tests/contract/test_files_and_output)
        tasks = [{"executable": sys.executable, "arguments": ["-c", _WRITE_BOTH],
                  "output_limit": None}]
        await backend.submit_tasks(tasks)
        await backend.wait(timeout=120)
    assert tasks[0]["exit_code"] == 0
    assert len(tasks[0]["stdout"]) > 5_000_000
    assert tasks[0]["stdout"] == _expected("")
    assert tasks[0]["stderr"] == _expected("E")
    assert tasks[0]["stdout_file"] is None


async def test_cancel_kills_the_group_and_returns_once_reaped(tmp_path, waiting):
    pid_file = tmp_path / "pids"
    script = f"sleep 300 & echo $! >> {pid_file}; echo $$ >> {pid_file}; wait"
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        tasks = [{"uid": "tree", "executable": script, "shell": True}]
        await backend.submit_tasks(tasks)
        for _ in range(600):
            if pid_file.exists() and len(pid_file.read_text().split()) == 2:
                break
            await asyncio.sleep(0.1)
        child, shell = (int(p) for p in pid_file.read_text().split())
        assert pid_alive(child) and pid_alive(shell)
        assert await backend.cancel_task("tree") is True
        assert tasks[0]["state"] == TaskState.CANCELED
        assert not psutil.pid_exists(shell)   # the command was reaped, not left a zombie
        # The rest of its group was killed: it may still be exiting (its pipes closed).
        assert await _dies(child)


async def test_timeout_fails_the_task_and_leaves_no_process(waiting):
    before = _descendants()
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        tasks = [{"uid": "slow", "executable": "sleep", "arguments": ["30"], "timeout": 1}]
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError):
            await backend.wait(timeout=60)
        assert tasks[0]["state"] == TaskState.FAILED
        assert isinstance(tasks[0]["exception"], TimeoutError)
        assert "exceeded its timeout of 1" in str(tasks[0]["exception"])
        assert _commands_left(backend, before) == set()


async def test_what_a_command_leaves_in_its_group_is_killed_when_it_ends(waiting):
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        tasks = [{"executable": "sleep 300 >/dev/null 2>&1 & echo $!", "shell": True}]
        await backend.submit_tasks(tasks)
        await backend.wait(timeout=60)
    assert tasks[0]["exit_code"] == 0
    assert await _dies(int(tasks[0]["stdout"]))  # SIGKILLed as the command ended


async def test_commands_that_cannot_start_end_as_a_shell_says(tmp_path, waiting):
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        tasks = [
            {"executable": "no-such-command-here"},
            {"executable": "/bin/true", "cwd": str(tmp_path / "missing")},
            {"executable": str(tmp_path)},
            {"executable": "sh", "arguments": ["-c", "echo out; echo err >&2; exit 3"]},
        ]
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError):
            await backend.wait(timeout=60)
    assert [t["exit_code"] for t in tasks] == [127, 127, 126, 3]
    assert "command not found" in tasks[0]["stderr"]
    assert "working directory" in tasks[1]["stderr"]
    assert (tasks[3]["stdout"], tasks[3]["stderr"]) == ("out\n", "err\n")


async def test_commands_cancelled_at_once_never_survive(waiting):
    before = _descendants()
    async with rhapsody.get_backend("concurrent", max_workers=8) as backend:
        tasks = [{"executable": "sleep", "arguments": ["120"]} for _ in range(24)]
        await backend.submit_tasks(tasks)
        for index, task in enumerate(tasks):
            if index % 4 == 1:
                await asyncio.sleep(0.005)
            assert await backend.cancel_task(task["uid"]) is True
        await backend.wait(timeout=60)
        assert [t["state"] for t in tasks] == [TaskState.CANCELED] * 24
        assert _commands_left(backend, before) == set()


async def test_a_command_that_closes_its_pipes_is_still_waited_for(waiting):
    # Its pipes reach EOF long before it exits: the exit comes through its pidfd.
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        tasks = [{"executable": "exec >/dev/null 2>&1; sleep 1; exit 7", "shell": True}]
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError):
            await backend.wait(timeout=60)
    assert tasks[0]["exit_code"] == 7


async def test_cancel_of_a_command_without_open_pipes_reaps_it(waiting):
    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        tasks = [{"uid": "quiet", "executable": "exec >/dev/null 2>&1; exec sleep 300",
                  "shell": True}]
        await backend.submit_tasks(tasks)
        for _ in range(600):
            if _live_children("sleep"):
                break
            await asyncio.sleep(0.1)
        (sleeper,) = _live_children("sleep")
        assert await backend.cancel_task("quiet") is True
        assert tasks[0]["state"] == TaskState.CANCELED
        assert not psutil.pid_exists(sleeper.pid)


@pytest.mark.skipif(not command_wait.WAIT_ON_LOOP, reason="needs pidfd_open (Linux >= 5.3)")
async def test_without_a_pidfd_for_one_command_its_exit_is_polled(monkeypatch):
    def refuse(pid: int, flags: int = 0) -> int:
        raise OSError(24, "Too many open files")

    async with rhapsody.get_backend("concurrent", max_workers=2) as backend:
        monkeypatch.setattr(os, "pidfd_open", refuse)
        tasks = [{"executable": "exec >/dev/null 2>&1; sleep 0.5; exit 5", "shell": True},
                 {"executable": "echo", "arguments": ["fine"]}]
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError):
            await backend.wait(timeout=60)
    assert [t["exit_code"] for t in tasks] == [5, 0]
    assert tasks[1]["stdout"] == "fine\n"
