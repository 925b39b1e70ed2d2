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
group (a replacement worker is started on demand). A running thread cannot be
killed: its task is reported CANCELED at once and its result is discarded.
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

from ..body.calls import call_function
from ..body.command_wait import run_command_async, spawner_threads
from ..body.commands import kill_process_group
from ..body.envelope import Envelope
from ..body.process_worker import HEADER
from ..core.constants import BackendType, Defaults, TaskState
from ..core.engine import ExecutionBackend
from ..core.exceptions import BackendError, ConfigurationError, refuse_unknown_options
from ..core.guard import Guard
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

    async def call(self, uid: str, task: TaskDict) -> Envelope:
        payload = cloudpickle.dumps((uid, task["function"], task["args"], task["kwargs"]))
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(HEADER.pack(len(payload)) + payload)
        await self.process.stdin.drain()
        header = await self.process.stdout.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        _, envelope = cloudpickle.loads(await self.process.stdout.readexactly(size))
        return envelope

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
        self._busy_workers: dict[str, _WorkerProcess] = {}
        self._running: dict[str, asyncio.Task[None] | Future[None]] = {}

    async def _start(self) -> None:
        if self.executor == "thread":
            self._threads = ThreadPoolExecutor(self.max_workers, thread_name_prefix="rhapsody")
        self._command_threads = ThreadPoolExecutor(
            spawner_threads(self.max_workers), thread_name_prefix="rhapsody-command"
        )

    async def _launch(self, tasks: list[TaskDict]) -> None:
        for task in tasks:
            uid = task["uid"]
            runner: asyncio.Task[None] | Future[None]
            if self._threads is not None and is_function_task(task):
                # Straight to a pool thread, which reports the task's states itself:
                # no loop task, executor future and wake-up per function.
                runner = self._threads.submit(self._call_in_thread, task)
            else:
                runner = asyncio.ensure_future(self._execute(task))
            self._running[uid] = runner
            runner.add_done_callback(functools.partial(self._forget_runner, uid))

    def _forget_runner(self, uid: str, runner: asyncio.Task[None] | Future[None]) -> None:
        # A pool thread's callback may come after the engine launched the task's next
        # attempt: forget only this attempt's runner, never the retry's.
        if self._running.get(uid) is runner:
            del self._running[uid]

    async def _cancel(self, uids: list[str]) -> None:
        for uid in uids:
            runner = self._running.get(uid)
            if runner is None:
                continue
            runner.cancel()
            if isinstance(runner, Future):  # a running thread cannot be stopped:
                self._report(uid, TaskState.CANCELED)  # its result will be discarded

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

    async def _execute(self, task: TaskDict) -> None:
        """A command, or a function in process mode (thread mode: `_call_in_thread`)."""
        uid = task["uid"]
        self._report(uid, TaskState.EXECUTING)
        try:
            if is_function_task(task):
                await self._run_in_process(task)
            else:
                await self._run_executable(task)
        except asyncio.CancelledError:
            self._report(uid, TaskState.CANCELED)
        except Exception as error:
            self._report(uid, TaskState.FAILED, exception=error)

    async def _run_executable(self, task: TaskDict) -> None:
        result = await run_command_async(task, self._command_threads, self._guard)
        self._report_result(task["uid"], Envelope.command(result).outcome())

    def _call_in_thread(self, task: TaskDict) -> None:
        """A function task in a pool thread, from start to reported end."""
        uid = task["uid"]
        self._report(uid, TaskState.EXECUTING)
        try:
            value = call_function(task["function"], task["args"], task["kwargs"])
        except BaseException as error:  # reported, never raised in a pool thread
            self._report(uid, TaskState.FAILED, exception=error)
        else:
            self._report(uid, TaskState.COMPLETED, return_value=value)

    async def _run_in_process(self, task: TaskDict) -> None:
        uid = task["uid"]
        worker = (self._idle_workers.pop() if self._idle_workers
                  else await _WorkerProcess.spawn(self._guard))
        self._busy_workers[uid] = worker
        try:
            envelope = await worker.call(uid, task)
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
            self._busy_workers.pop(uid, None)
        self._idle_workers.append(worker)
        self._report_result(uid, envelope.outcome())


__all__ = ["EXECUTORS", "ConcurrentBackend", "WorkerDied"]
