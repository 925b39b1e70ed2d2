"""Upstream RHAPSODY's concurrent and noop backends through the RHAPSODY API of this project.

Real `rhapsody-py` backends (no fakes), run by the engine through the adapter
(`rhapsody_prefect/backends/upstream/`): results, failures, retries as fresh upstream
tasks, timeouts, cancel, terminal states, and what the adapter refuses.
"""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ProcessPoolExecutor

import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect import ConfigurationError, TaskError, TaskState
from tests.helpers import count_and_fail_first, pid_alive, record_states, wait_for_state

pytest.importorskip("rhapsody")

TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}


def _boom(x: int) -> None:
    raise ValueError(f"boom {x}")


async def _double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@pytest.fixture(params=["thread", "process"])
def concurrent(request):
    """upstream.concurrent with upstream's default thread pool, or a process pool."""
    if request.param == "thread":
        return rhapsody.get_backend("upstream.concurrent")
    return rhapsody.get_backend("upstream.concurrent", executor=ProcessPoolExecutor(2))


async def test_results_of_functions_and_commands(concurrent, tmp_path):
    tasks = [
        {"uid": "f", "function": _double, "args": (21,)},
        {"uid": "lambda", "function": lambda a, b=0: a + b, "args": (1,), "kwargs": {"b": 2}},
        # argv stays literal ($X is not expanded); environment adds to the worker's
        {"uid": "cmd", "executable": "/bin/sh",
         "arguments": ["-c", 'echo "$X" "$HOME"; pwd; echo "$1"', "sh", "$X"],
         "environment": {"X": "it's x"}, "cwd": str(tmp_path)},
        {"uid": "shell", "executable": "echo a | tr a b", "shell": True,
         "pre_exec": [f"echo pre > {tmp_path / 'pre'}"]},
    ]
    async with concurrent as backend:
        states = record_states(backend)
        await backend.submit_tasks(tasks)
        await backend.wait()
    by_uid = {t["uid"]: t for t in tasks}
    assert by_uid["f"]["return_value"] == 42
    assert by_uid["lambda"]["return_value"] == 3
    assert by_uid["cmd"]["stdout"] == f"it's x {os.environ['HOME']}\n{tmp_path}\n$X\n"
    assert (by_uid["cmd"]["exit_code"], by_uid["shell"]["stdout"]) == (0, "b\n")
    assert (tmp_path / "pre").read_text() == "pre\n"
    for uid in by_uid:
        assert states[uid] == ["NEW", "WAITING", "READY", "EXECUTING", "COMPLETED"]
    assert await backend.upstream.state() == "SHUTDOWN"


async def test_failures_keep_their_exception_and_output(concurrent):
    tasks = [{"uid": "raises", "function": _boom, "args": (7,)},
             {"uid": "exits", "executable": "/bin/sh", "arguments": ["-c", "echo no >&2; exit 3"]},
             {"uid": "missing", "executable": "/no/such/program"}]
    async with concurrent as backend:
        await backend.submit_tasks(tasks)
        with pytest.raises(TaskError) as caught:
            await backend.wait()
    raises, exits, missing = tasks
    assert caught.value.details["failed"] == ["raises", "exits", "missing"]
    assert isinstance(raises["exception"], ValueError) and "boom 7" in str(raises["exception"])
    assert any("Remote traceback" in note for note in raises["exception"].__notes__)
    assert (exits["state"], exits["exit_code"], exits["stderr"]) == ("FAILED", 3, "no\n")
    assert missing["state"] == "FAILED" and isinstance(missing["exception"], FileNotFoundError)


async def test_each_retry_is_a_fresh_upstream_task(tmp_path):
    counter = str(tmp_path / "calls")
    task = {"uid": "flaky", "function": count_and_fail_first, "args": (counter, 2),
            "retries": 2, "retry_delay": 0}
    async with rhapsody.get_backend("upstream.concurrent") as backend:
        states = record_states(backend)
        await backend.submit_tasks([task])
        await backend.wait()
        upstream_uids = sorted(backend.upstream.tasks)
    assert task["return_value"] == "ok after 3 calls"
    assert states["flaky"].count("RETRYING") == 2 and states["flaky"][-1] == "COMPLETED"
    assert upstream_uids == ["flaky.attempt1", "flaky.attempt2", "flaky.attempt3"]
    assert backend.attempt_of("flaky") == 3


async def test_timeout_fails_the_task_but_upstream_leaves_the_command_running(tmp_path):
    """Upstream's concurrent backend cancels its asyncio task and never kills the
    subprocess (documented in docs/api.md): the engine's timeout still ends the task."""
    pid_file = tmp_path / "pid"
    task = {"uid": "slow", "executable": "/bin/sh",
            "arguments": ["-c", f"echo $$ > {pid_file}; exec sleep 30"], "timeout": 1}
    pid = None
    try:
        async with rhapsody.get_backend("upstream.concurrent") as backend:
            await backend.submit_tasks([task])
            with pytest.raises(TaskError, match="exceeded its timeout of 1"):
                await backend.wait(timeout=15)
            pid = int(pid_file.read_text())
        assert task["state"] == "FAILED" and isinstance(task["exception"], TimeoutError)
        assert pid_alive(pid), "upstream now stops the command: update docs/api.md"
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_cancel_ends_a_running_task_canceled(tmp_path):
    started = tmp_path / "started"

    async def wait_forever() -> None:
        started.write_text("yes")
        await asyncio.sleep(3)  # upstream cannot stop it: shutdown waits for the thread

    task = {"uid": "running", "function": wait_forever}
    queued_later = {"uid": "after", "function": _double, "args": (1,)}
    async with rhapsody.get_backend("upstream.concurrent") as backend:
        states = record_states(backend)
        await backend.submit_tasks([task])
        await wait_for_state(backend, "running", TaskState.EXECUTING, timeout=10)
        while not started.exists():
            await asyncio.sleep(0.05)
        assert await backend.cancel_task("running") is True
        await backend.submit_tasks([queued_later])
        await backend.wait()
    assert states["running"][-1] == "CANCELED" and task["state"] == "CANCELED"
    assert queued_later["return_value"] == 2


@pytest.mark.parametrize(
    ("task", "key"),
    [({"executable": "/bin/true", "ranks": 2}, "ranks"),
     ({"executable": "/bin/true", "cores_per_rank": 2}, "cores_per_rank"),
     ({"function": print, "gpus_per_rank": 1}, "gpus_per_rank"),
     ({"function": print, "cwd": "/tmp"}, "cwd"),
     ({"function": print, "environment": {"A": "1"}}, "environment"),
     ({"executable": "/bin/true", "environment": {"A B": "1"}}, "environment"),
     ({"executable": "/bin/true", "input_files": ["/etc/hostname"]}, "input_files"),
     ({"executable": "/bin/true", "output_limit": 10}, "output_limit")],
)
async def test_what_upstream_cannot_do_is_refused_before_anything_runs(task, key):
    async with rhapsody.get_backend("upstream.concurrent") as backend:
        with pytest.raises(ConfigurationError) as caught:
            await backend.submit_tasks([{"uid": "ok", "executable": "/bin/true"}, task])
        assert caught.value.config_key == key
        assert backend.tasks == {} and backend.upstream.tasks == {}


def test_bad_constructor_options_are_a_type_error_and_start_nothing():
    with pytest.raises(TypeError):
        rhapsody.get_backend("upstream.concurrent", workers=2)
    backend = rhapsody.get_backend("upstream.concurrent")
    assert backend.upstream is None  # constructed on start, on the backend's loop


async def test_noop_marks_everything_done_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    tasks = [{"uid": "f", "function": marker.write_text, "args": ("x",)},
             {"uid": "c", "executable": "/bin/sh", "arguments": ["-c", f"touch {marker}"]},
             {"uid": "bad", "executable": "/bin/false", "retries": 2}]
    async with rhapsody.get_backend("upstream.noop") as backend:
        assert backend.backend_type == "upstream.noop"
        states = record_states(backend)
        await backend.submit_tasks(tasks)
        await backend.wait()
    assert [t["state"] for t in tasks] == ["COMPLETED"] * 3
    assert tasks[0]["return_value"] is True and tasks[1]["exit_code"] == 0
    assert not marker.exists()
    assert all(s[-1] == "COMPLETED" and s.count("COMPLETED") == 1 for s in states.values())


async def test_terminate_cancels_what_is_left_and_shuts_upstream_down():
    backend = await rhapsody.get_backend("upstream.concurrent")
    states = record_states(backend)
    tasks = [{"uid": f"s{i}", "executable": "/bin/sleep", "arguments": ["0.2"]}
             for i in range(3)]
    await backend.submit_tasks(tasks)
    await backend.terminate()
    assert {t["state"] for t in tasks} <= TERMINAL
    assert all(seen[-1] in TERMINAL for seen in states.values())
    assert await backend.upstream.state() == "SHUTDOWN"
