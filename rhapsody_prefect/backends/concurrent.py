"""The `concurrent` backend: local threads or processes, and local subprocesses.

    import rhapsody_prefect as rhapsody

    async with rhapsody.get_backend("concurrent", max_workers=4, executor="process") as backend:
        await backend.submit_tasks([
            {"function": sum, "args": ([1, 2, 3],)},
            {"executable": "/bin/echo", "arguments": ["hello"]},
        ])
        await backend.wait()

`max_workers` is the number of slots (cores): a task occupies
`ranks * cores_per_rank` of them. Functions run in a thread pool
(`executor="thread"`, the default) or in worker processes
(`executor="process"`, functions shipped with cloudpickle); executables always
run as subprocesses in their own process group: spawned from a few threads
(fork/exec stays off the event loop), then waited for on the event loop itself
(non-blocking pipes, and pidfds), so 1,000 running commands hold no thread each
(`body/command_wait.py`; without pidfds, a thread per running command).

Cancelling a running executable or process-mode function kills its process
group (a replacement worker is started on demand). A function running in a
thread cannot be stopped: its attempt ends CANCELED for the task at once (a
timeout fails it, or its retry starts), the task's `still_running` lists the
attempt, and the function goes on in its thread, holding its slots, until it
returns; its result is then dropped (docs/api.md, "Timeouts").
If this process dies, even by SIGKILL, the backend's watchdog ends the running
commands and the worker processes (`core/guard.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import cloudpickle

from ..body.calls import run_call
from ..body.command_wait import run_command_async, spawner_threads
from ..body.commands import kill_process_group
from ..body.process_worker import HEADER
from ..core.attempt import Attempt
from ..core.constants import BackendType, Defaults, TaskState
from ..core.engine import ExecutionBackend
from ..core.exceptions import BackendError, ConfigurationError, refuse_unknown_options
from ..core.guard import Guard
from ..core.outcome import Outcome
from ..core.tasks import TaskDict, is_function_task

ExecutorKind = Literal["thread", "process"]
EXECUTORS = ("thread", "process")


class WorkerDied(BackendError):
    """A process-mode worker exited while running a task."""


class _WorkerProcess:
    """One `_process_worker` subprocess, talking length-prefixed cloudpickle frames."""

    def __init__(self, process: asyncio.subprocess.Process, guard: Guard | None = None) -> None:
        self.process = process
        self._guard = guard
        # Its process group ends with this process, even by SIGKILL (core/guard.py).
        self._key = guard.kill_group(process.pid) if guard is not None else None

    @classmethod
    async def spawn(cls, guard: Guard | None = None) -> _WorkerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rhapsody_prefect.body.process_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        return cls(process, guard)

    async def call(self, uid: str, task: TaskDict) -> Outcome:
        payload = cloudpickle.dumps(
            (uid, task["function"], task["args"], task["kwargs"], task.get("capture")))
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(HEADER.pack(len(payload)) + payload)
        await self.process.stdin.drain()
        header = await self.process.stdout.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        _, outcome = cloudpickle.loads(await self.process.stdout.readexactly(size))
        return outcome

    async def kill(self) -> int | None:
        # The worker leads its own process group: killpg reaches it and its children.
        # No Popen.kill(): on a worker that already died it polls (waitpid) and so
        # steals the exit status from asyncio's child watcher, which then reports 255.
        kill_process_group(self.process.pid)
        code = await self.process.wait()
        if self._guard is not None:
            self._guard.forget(self._key)
        return code


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


class ConcurrentBackend(ExecutionBackend):
    """Local execution with bounded concurrency, counted in cores."""

    backend_type = BackendType.CONCURRENT

    def __init__(
        self,
        max_workers: int = Defaults.MAX_WORKERS,
        executor: ExecutorKind = "thread",
        **kwargs: Any,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(
                f"max_workers must be an int >= 1, got {max_workers!r}", config_key="max_workers"
            )
        if executor not in EXECUTORS:
            raise ConfigurationError(
                f"executor must be one of {list(EXECUTORS)}, got {executor!r}",
                config_key="executor",
            )
        refuse_unknown_options("the concurrent backend", kwargs, ["max_workers", "executor"])
        super().__init__()
        self.max_workers = max_workers
        self.executor = executor
        self.slots = max_workers
        self._threads: ThreadPoolExecutor | None = None
        # Executables are spawned from threads of their own, so fork/exec stays off
        # the event loop; their exit and output are awaited on the loop.
        self._command_threads: ThreadPoolExecutor | None = None
        self._idle_workers: list[_WorkerProcess] = []
        self._busy_workers: dict[Attempt, _WorkerProcess] = {}
        self._running: dict[Attempt, asyncio.Task[None] | Future[None]] = {}

    async def _start(self) -> None:
        if self.executor == "thread":
            self._threads = ThreadPoolExecutor(self.max_workers, thread_name_prefix="rhapsody")
        self._command_threads = ThreadPoolExecutor(
            spawner_threads(self.max_workers), thread_name_prefix="rhapsody-command"
        )

    async def _launch(self, attempts: list[Attempt]) -> None:
        for attempt in attempts:
            runner: asyncio.Task[None] | Future[None]
            if self._threads is not None and is_function_task(attempt.task):
                # Straight to a pool thread, which reports the attempt's states itself:
                # no loop task, executor future and wake-up per function.
                runner = self._threads.submit(self._call_in_thread, attempt)
            else:
                runner = asyncio.ensure_future(self._execute(attempt))
            self._running[attempt] = runner
            runner.add_done_callback(functools.partial(self._forget_runner, attempt))

    def _forget_runner(self, attempt: Attempt, _runner: object) -> None:
        self._running.pop(attempt, None)

    async def _cancel(self, attempts: list[Attempt]) -> None:
        for attempt in attempts:
            runner = self._running.get(attempt)
            if runner is None:
                continue
            if not isinstance(runner, Future):
                runner.cancel()
            elif runner.cancel():  # a pool thread had not started it
                self._report(attempt, TaskState.CANCELED)
            elif not runner.done():  # running in a pool thread, which cannot be stopped
                self._report_unstoppable(attempt)
            # (done: its outcome is already on its way to the engine)

    async def _shutdown(self) -> None:
        workers = [*self._idle_workers, *self._busy_workers.values()]
        self._idle_workers.clear()
        await asyncio.gather(*(worker.kill() for worker in workers))
        for pool in (self._threads, self._command_threads):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def placement(self) -> list[str]:
        return [f"host {socket.gethostname()}: {self.max_workers} slots "
                f"({self.executor}s; commands as subprocesses)"]

    async def _execute(self, attempt: Attempt) -> None:
        """A command, or a function in process mode (thread mode: `_call_in_thread`)."""
        self._report(attempt, TaskState.EXECUTING)
        try:
            if is_function_task(attempt.task):
                outcome = await self._run_in_process(attempt)
            else:
                outcome = await run_command_async(
                    attempt.task, self._command_threads, self._guard)
        except asyncio.CancelledError:
            outcome = Outcome.canceled()
        except Exception as error:
            outcome = Outcome.failed(error)
        self._report(attempt, outcome)

    def _call_in_thread(self, attempt: Attempt) -> None:
        """A function task in a pool thread, from start to reported end."""
        task = attempt.task
        self._report(attempt, TaskState.EXECUTING)
        self._report(attempt, run_call(
            task["function"], task["args"], task["kwargs"], task.get("capture")))

    async def _run_in_process(self, attempt: Attempt) -> Outcome:
        uid = attempt.uid
        worker = (self._idle_workers.pop() if self._idle_workers
                  else await _WorkerProcess.spawn(self._guard))
        self._busy_workers[attempt] = worker
        try:
            outcome = await worker.call(uid, attempt.task)
        except asyncio.CancelledError:
            await worker.kill()
            raise
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
            code = await worker.kill()
            raise WorkerDied(
                f"The worker process (pid {worker.process.pid}) running task '{uid}' died "
                f"with {_describe_exit(code)}",
                self.backend_type,
                details={"exit_code": code},
            ) from None
        finally:
            self._busy_workers.pop(attempt, None)
        self._idle_workers.append(worker)
        return outcome


__all__ = ["EXECUTORS", "ConcurrentBackend", "WorkerDied"]
