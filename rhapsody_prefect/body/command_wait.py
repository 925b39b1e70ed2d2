"""Awaiting a task's command on an event loop, without a thread per running command.

    from concurrent.futures import ThreadPoolExecutor
    from rhapsody_prefect.body.command_wait import run_command_async, spawner_threads

    spawners = ThreadPoolExecutor(spawner_threads(max_workers=1000))
    result = await run_command_async({"executable": "sleep", "arguments": ["30"]}, spawners)

The command is spawned (fork/exec, `commands.start_command`) in a thread of
`spawners`, which is free again as soon as the process exists. The loop then reads
stdout and stderr from non-blocking pipes (`loop.add_reader`); once both are at
EOF and the process has exited (`waitpid(pid, WNOHANG)`; for a command that closed
its pipes and runs on, the loop waits on its pidfd, `os.pidfd_open`, Linux >= 5.3),
the process is reaped, the rest of its group killed, and the same `Outcome`
as `commands.run_command`'s returned. A running command costs two file descriptors
and no thread.

Where pidfds are missing or refused (macOS, old kernels, a sandbox), `WAIT_ON_LOOP`
is False (decided once, at import) and each command is waited for in the thread
that spawned it, as `commands.run_command` does; `spawner_threads` then sizes the
pool to the commands that may run at once.

Not `asyncio.create_subprocess_exec`: on Python 3.11 its child watcher starts a
thread per child. Never `os.waitpid(-1, ...)`: it would steal the exit statuses
that asyncio's watcher waits for (the concurrent backend's worker processes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..core.guard import Guard
from ..core.outcome import Outcome
from .commands import (
    READ_SIZE,
    RunningCommand,
    finish_command,
    kill_process_group,
    start_command,
)

#: Spawner threads when commands are waited for on the loop (fork/exec takes milliseconds).
SPAWNER_THREADS = 4
#: Seconds between exit checks of a command that closed its pipes but has no pidfd.
POLL_SECONDS = 0.05


def _pidfds_work() -> bool:
    try:
        pidfd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):  # not Linux, kernel < 5.3, or refused (EPERM, ENOSYS)
        return False
    os.close(pidfd)
    return True


#: Whether commands are waited for on the event loop (pidfds), else in a thread each.
WAIT_ON_LOOP = _pidfds_work()


def spawner_threads(max_workers: int) -> int:
    """Threads a pool for `run_command_async` needs, for up to `max_workers` commands."""
    return min(max_workers, SPAWNER_THREADS) if WAIT_ON_LOOP else max_workers


async def run_command_async(
    task: Mapping[str, Any],
    spawners: concurrent.futures.Executor,
    guard: Guard | None = None,
) -> Outcome:
    """Run the task's command, spawned from a thread of `spawners`, awaited on this loop.

    Cancelling the awaiting coroutine kills the command's whole process group and
    returns once the process is reaped; a command cancelled before its spawn
    started never starts. `guard` ends the group if this process dies meanwhile.
    """
    loop = asyncio.get_running_loop()
    launch = _Launch(guard, WAIT_ON_LOOP)
    outcome: asyncio.Future[Outcome | None] = loop.create_future()
    spawning = spawners.submit(launch.run, task)
    spawning.add_done_callback(
        lambda done: loop.call_soon_threadsafe(_await_spawned, done, outcome, loop)
    )
    try:
        result = await asyncio.shield(outcome)
    except asyncio.CancelledError:
        if not outcome.done():  # else the process is reaped already: nothing to kill
            launch.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(outcome)
        raise
    assert result is not None  # None only for a launch cancelled before its spawn
    return result


class _Launch:
    """One command's start in a spawner thread, which the loop can cancel at any time.

    The lock makes "cancelled before the process exists" and "kill the running
    process" one decision: a cancelled launch never starts its process.
    """

    def __init__(self, guard: Guard | None, wait_on_loop: bool) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._pid: int | None = None
        self._guard = guard
        self._wait_on_loop = wait_on_loop

    def run(self, task: Mapping[str, Any]) -> Outcome | RunningCommand | None:
        """The started command, for the loop to wait for; its result when it cannot
        start or without pidfds (waited for here); None if cancelled first."""
        with self._lock:
            if self._cancelled:
                return None
            running = start_command(task, self._guard)
            if isinstance(running, Outcome):
                return running
            self._pid = running.pid
        if not self._wait_on_loop:
            return finish_command(running)  # a thread per running command
        for pipe in (running.process.stdout, running.process.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
        return running

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            pid = self._pid
        if pid is not None:
            kill_process_group(pid)


def _await_spawned(
    spawning: concurrent.futures.Future[Outcome | RunningCommand | None],
    outcome: asyncio.Future[Outcome | None],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """On the loop, once the spawner thread is done: wait for the process, or pass on."""
    if spawning.cancelled():  # the pool shut down before the spawn started
        outcome.cancel()
        return
    error = spawning.exception()
    if error is not None:
        outcome.set_exception(error)
        return
    started = spawning.result()
    if isinstance(started, RunningCommand):
        _OutputAndExit(started, loop, outcome)
    else:
        outcome.set_result(started)


class _OutputAndExit:
    """Reads a command's pipes on the loop to EOF, then reaps it once it has exited.

    A process has almost always exited when its pipes reach EOF (exit closes them);
    one that closed them and runs on is watched through a pidfd, opened only then
    (our unreaped child keeps its pid), or, if that fails, polled.
    """

    def __init__(
        self,
        running: RunningCommand,
        loop: asyncio.AbstractEventLoop,
        outcome: asyncio.Future[Outcome | None],
    ) -> None:
        self._running = running
        self._loop = loop
        self._outcome = outcome
        process = running.process
        assert process.stdout is not None
        assert process.stderr is not None
        self._pipes = {pipe.fileno(): pipe for pipe in (process.stdout, process.stderr)}
        self._sinks = {fd: running.sink_of(fd) for fd in self._pipes}
        self._open_pipes = len(self._pipes)
        self._pidfd: int | None = None
        for fd in self._pipes:
            loop.add_reader(fd, self._read, fd)

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._sinks[fd].write(data)
            return
        self._loop.remove_reader(fd)
        self._pipes[fd].close()
        self._open_pipes -= 1
        if not self._open_pipes:
            self._reap_when_exited()

    def _reap_when_exited(self) -> None:
        if self._running.process.poll() is not None:  # waitpid(pid, WNOHANG): only ours
            self._finish()
        elif self._pidfd is None:
            try:
                pidfd = os.pidfd_open(self._running.pid)
            except OSError:  # no pidfd for this one (e.g. out of descriptors): poll it
                self._loop.call_later(POLL_SECONDS, self._reap_when_exited)
                return
            self._pidfd = pidfd
            self._loop.add_reader(pidfd, self._reap_when_exited)

    def _finish(self) -> None:
        try:
            if self._pidfd is not None:
                self._loop.remove_reader(self._pidfd)
                os.close(self._pidfd)
            self._running.release()
            result = self._running.result()
        except Exception as error:
            self._fail(error)
            return
        if not self._outcome.done():
            self._outcome.set_result(result)

    def _fail(self, error: Exception) -> None:
        if not self._outcome.done():
            self._outcome.set_exception(error)


__all__ = ["SPAWNER_THREADS", "WAIT_ON_LOOP", "run_command_async", "spawner_threads"]
