"""Running a task's command as a subprocess, sync or async, and killing it cleanly.

Every command runs in a new session (process group), so a cancel or timeout
kills the command and everything it started.

    >>> from rhapsody_prefect.body.commands import run_command
    >>> result = run_command({"executable": "/bin/echo", "arguments": ["hi"]})
    >>> result.exit_code, result.stdout
    (0, 'hi\\n')

`ranks > 1` runs the command under the MPI launcher found on PATH (`mpiexec`,
`mpirun`); `pre_exec` commands run in a shell first; `shell=True` runs
`executable` through `/bin/sh -c`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..core.guard import Guard
from ..core.launchers import require_mpi_launcher


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What a finished command left: exit code and decoded output."""

    exit_code: int
    stdout: str
    stderr: str


def command_argv(task: Mapping[str, Any]) -> list[str]:
    """The argv that runs `task` (shell, pre_exec and MPI launcher applied)."""
    executable = str(task["executable"])
    arguments = [str(a) for a in task.get("arguments") or []]
    if task.get("shell"):
        argv = ["/bin/sh", "-c", " ".join([executable, *map(shlex.quote, arguments)])]
    else:
        argv = [executable, *arguments]
    ranks = int(task.get("ranks") or 1)
    if ranks > 1:
        argv = [require_mpi_launcher(ranks), "-n", str(ranks), *argv]
    pre_exec = list(task.get("pre_exec") or [])
    if pre_exec:
        script = " && ".join([*pre_exec, 'exec "$@"'])
        argv = ["/bin/sh", "-c", script, "rhapsody-pre-exec", *argv]
    return argv


def command_env(task: Mapping[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(task.get("environment") or {})
    return env


def kill_process_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (the command and all it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _decode(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")


def run_command(
    task: Mapping[str, Any],
    timeout: float | None = None,
    *,
    stop: Callable[[], bool] | None = None,
    poll_interval: float = 0.1,
    guard: Guard | None = None,
) -> CommandResult:
    """Run the task's command to completion in this thread.

    `stop`, if given, is polled every `poll_interval` seconds; when it returns
    True the command's process group is killed and CommandStopped is raised
    (used by remote workers that learn of a cancel while the command runs).
    `guard`, if given, ends the command's process group if this process dies.

    Raises:
        subprocess.TimeoutExpired: after `timeout` seconds (the process group is killed).
        CommandStopped: `stop()` returned True (the process group is killed).
    """
    process = _popen(task)
    if isinstance(process, CommandResult):
        return process
    return _finish(process, timeout, stop, poll_interval, guard)


#: Exit codes a shell reports for a command it cannot find or cannot execute.
NOT_FOUND_EXIT_CODE = 127
NOT_EXECUTABLE_EXIT_CODE = 126


def _popen(task: Mapping[str, Any]) -> subprocess.Popen[bytes] | CommandResult:
    """The started command; or, when it cannot start, the result a shell would give."""
    argv = command_argv(task)
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=command_env(task),
            cwd=task.get("cwd"),
            start_new_session=True,
        )
    except FileNotFoundError as error:
        cwd = task.get("cwd")
        if cwd and error.filename == cwd:
            reason = f"working directory {cwd!r} not found"
        else:
            reason = f"{argv[0]}: command not found"
        return CommandResult(NOT_FOUND_EXIT_CODE, "", f"{reason}\n")
    except PermissionError:
        return CommandResult(NOT_EXECUTABLE_EXIT_CODE, "", f"{argv[0]}: permission denied\n")


def _finish(
    process: subprocess.Popen[bytes],
    timeout: float | None = None,
    stop: Callable[[], bool] | None = None,
    poll_interval: float = 0.1,
    guard: Guard | None = None,
) -> CommandResult:
    """Collect the output and exit code; the process group is killed on the way out."""
    key = guard.kill_group(process.pid) if guard is not None else None
    try:
        if stop is None:
            stdout, stderr = process.communicate(timeout=timeout)
        else:
            stdout, stderr = _communicate_until_stopped(process, timeout, stop, poll_interval)
    except BaseException:
        kill_process_group(process.pid)
        process.communicate()
        raise
    finally:
        kill_process_group(process.pid)  # whatever the command left running in its group
        if guard is not None:
            guard.forget(key)
    return CommandResult(process.returncode, _decode(stdout), _decode(stderr))


class CommandStopped(Exception):
    """`run_command(..., stop=...)` killed the command because `stop()` returned True."""


def _communicate_until_stopped(
    process: subprocess.Popen[bytes],
    timeout: float | None,
    stop: Callable[[], bool],
    poll_interval: float,
) -> tuple[bytes, bytes]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = poll_interval if deadline is None else min(
            poll_interval, max(deadline - time.monotonic(), 0.0)
        )
        try:
            return process.communicate(timeout=wait)  # retrying loses no output
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(process.args, timeout) from None
            if stop():
                raise CommandStopped(f"Command {process.args!r} was stopped") from None


class _Launch:
    """A command started in a worker thread, which the event loop can stop at any time.

    The lock makes "cancelled before the process exists" and "kill the running
    process" one decision: a cancelled launch never starts its process.
    """

    def __init__(self, guard: Guard | None = None) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._pid: int | None = None
        self._guard = guard

    def run(self, task: Mapping[str, Any]) -> CommandResult | None:
        with self._lock:
            if self._cancelled:
                return None
            process = _popen(task)
            if isinstance(process, CommandResult):
                return process
            self._pid = process.pid
        return _finish(process, guard=self._guard)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            pid = self._pid
        if pid is not None:
            kill_process_group(pid)


async def run_command_async(
    task: Mapping[str, Any],
    executor: concurrent.futures.Executor | None = None,
    guard: Guard | None = None,
) -> CommandResult:
    """Run the task's command from a thread of `executor`, awaiting it on the loop.

    Spawning (fork/exec) and reading the output happen in that thread, not on the
    event loop; the thread count is the executor's, so size it to the number of
    commands that may run at once. Cancelling the awaiting coroutine kills the
    command's whole process group and returns once the thread is done with it;
    `guard` ends that group if this process dies while the command runs.
    """
    launch = _Launch(guard)
    running = asyncio.get_running_loop().run_in_executor(executor, launch.run, task)
    try:
        result = await asyncio.shield(running)
    except asyncio.CancelledError:
        launch.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.shield(running)
        raise
    assert result is not None
    return result


__all__ = [
    "CommandResult",
    "CommandStopped",
    "command_argv",
    "command_env",
    "kill_process_group",
    "run_command",
    "run_command_async",
]
