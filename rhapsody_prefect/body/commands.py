"""Running a task's command as a subprocess, and killing it cleanly.

Every command runs in a new session (process group), so a cancel or timeout
kills the command and everything it started.

    >>> from rhapsody_prefect.body.commands import run_command
    >>> outcome = run_command({"executable": "/bin/echo", "arguments": ["hi"]})
    >>> outcome.state.value, outcome.exit_code, outcome.stdout
    ('COMPLETED', 0, 'hi\\n')

`ranks > 1` runs the command under the MPI launcher found on PATH (`mpiexec`,
`mpirun`); `pre_exec` commands run in a shell first; `shell=True` runs
`executable` through `/bin/sh -c`. `start_command` + `finish_command` are the
two halves of `run_command`; `body/command_wait.py` awaits a started command on
an event loop instead. Output goes through `body/output.py`'s policy (whole up to
the task's `output_limit`, beyond it head, tail and a file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..core.guard import Guard
from ..core.launchers import require_mpi_launcher
from ..core.outcome import Outcome
from .output import OutputSink, policy_of
from .staging import Staging, prepare

#: Bytes read from a command's pipe at a time (a Linux pipe's default capacity).
READ_SIZE = 65536


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


def run_command(
    task: Mapping[str, Any],
    timeout: float | None = None,
    *,
    stop: Callable[[], bool] | None = None,
    poll_interval: float = 0.1,
    guard: Guard | None = None,
) -> Outcome:
    """Run the task's command to completion in this thread.

    `stop`, if given, is polled every `poll_interval` seconds; when it returns
    True the command's process group is killed and CommandStopped is raised
    (used by remote workers that learn of a cancel while the command runs).
    `guard`, if given, ends the command's process group if this process dies.

    Raises:
        subprocess.TimeoutExpired: after `timeout` seconds (the process group is killed).
        CommandStopped: `stop()` returned True (the process group is killed).
    """
    running = start_command(task, guard)
    if isinstance(running, Outcome):
        return running
    return finish_command(running, timeout, stop, poll_interval)


#: Exit codes a shell reports for a command it cannot find or cannot execute.
NOT_FOUND_EXIT_CODE = 127
NOT_EXECUTABLE_EXIT_CODE = 126


@dataclasses.dataclass
class RunningCommand:
    """A started command: its process (leading its own session), its guard entry and
    where its output goes."""

    process: subprocess.Popen[bytes]
    stdout: OutputSink
    stderr: OutputSink
    staging: Staging
    guard: Guard | None = None
    guard_key: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """Kill whatever the command left running in its group; unregister it."""
        self.end_group()
        self.unregister()

    def end_group(self) -> None:
        """Kill whatever the command left running in its group."""
        kill_process_group(self.process.pid)

    def unregister(self) -> None:
        """Tell the guard the command ended (a write to its watchdog's pipe)."""
        if self.guard is not None:
            self.guard.forget(self.guard_key)
            self.guard = None

    def sink_of(self, fd: int) -> OutputSink:
        """The sink of one of the command's open pipes, by its file descriptor."""
        assert self.process.stdout is not None
        return self.stdout if fd == self.process.stdout.fileno() else self.stderr

    def result(self) -> Outcome:
        """The outcome, once the pipes are drained and the process has exited (reaps it:
        does not block then)."""
        stdout, stdout_file = self.stdout.finish()
        stderr, stderr_file = self.stderr.finish()
        return self.staging.collect(Outcome.command(
            self.process.wait(), stdout, stderr, stdout_file, stderr_file))

    def discard(self) -> None:
        """The command was stopped: no outputs, no spill files, no working directory."""
        self.stdout.discard()
        self.stderr.discard()
        self.staging.cleanup()


def start_command(
    task: Mapping[str, Any], guard: Guard | None = None
) -> RunningCommand | Outcome:
    """Start the task's command (fork/exec: blocks for a moment; keep it off event loops).

    Returns the running command, registered with `guard` (which then ends its
    process group if this process dies); or, when it cannot start, the result a
    shell would give (exit code 127 or 126).
    """
    staging = prepare(task)
    if isinstance(staging, Outcome):  # a missing input, an existing target: nothing runs
        return staging
    process = _popen(task, staging.workdir)
    if isinstance(process, Outcome):
        staging.cleanup()
        return process
    key = guard.kill_group(process.pid) if guard is not None else None
    limit, keep_dir = policy_of(task)
    name = str(task.get("uid") or f"command.{process.pid}")
    return RunningCommand(process, OutputSink(limit, keep_dir, f"{name}.stdout"),
                          OutputSink(limit, keep_dir, f"{name}.stderr"), staging, guard, key)


def _popen(task: Mapping[str, Any], cwd: str | None) -> subprocess.Popen[bytes] | Outcome:
    """The started command; or, when it cannot start, the result a shell would give."""
    argv = command_argv(task)
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=command_env(task),
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as error:
        if cwd and error.filename == cwd:
            reason = f"working directory {cwd!r} not found"
        else:
            reason = f"{argv[0]}: command not found"
        return Outcome.command(NOT_FOUND_EXIT_CODE, "", f"{reason}\n")
    except PermissionError:
        return Outcome.command(NOT_EXECUTABLE_EXIT_CODE, "", f"{argv[0]}: permission denied\n")


def finish_command(
    running: RunningCommand,
    timeout: float | None = None,
    stop: Callable[[], bool] | None = None,
    poll_interval: float = 0.1,
) -> Outcome:
    """Wait in this thread for the output and exit code; the group is killed on the way out.

    Raises as `run_command` does (TimeoutExpired, CommandStopped).
    """
    process = running.process
    deadline = None if timeout is None else time.monotonic() + timeout

    def wait_for() -> float | None:
        """Seconds to block before checking `stop` and the deadline again."""
        wait = poll_interval if stop is not None else None
        if deadline is not None:
            left = max(deadline - time.monotonic(), 0.0)
            wait = left if wait is None else min(wait, left)
        return wait

    def check() -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise subprocess.TimeoutExpired(process.args, timeout or 0.0)
        if stop is not None and stop():
            raise CommandStopped(f"Command {process.args!r} was stopped")

    try:
        with selectors.DefaultSelector() as selector:
            sinks = {}
            for pipe in (process.stdout, process.stderr):
                assert pipe is not None
                sinks[pipe.fileno()] = running.sink_of(pipe.fileno())
                selector.register(pipe, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select(wait_for()):
                    data = os.read(key.fd, READ_SIZE)
                    if data:
                        sinks[key.fd].write(data)
                    else:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                check()
        while True:  # pipes closed; a command may run on
            try:
                process.wait(timeout=wait_for())
                break
            except subprocess.TimeoutExpired:
                check()
    except BaseException:
        kill_process_group(process.pid)
        process.wait()
        running.discard()
        raise
    finally:
        running.release()
    return running.result()


class CommandStopped(Exception):
    """`run_command(..., stop=...)` killed the command because `stop()` returned True."""


__all__ = [
    "CommandStopped",
    "RunningCommand",
    "command_argv",
    "command_env",
    "finish_command",
    "kill_process_group",
    "run_command",
    "start_command",
]
