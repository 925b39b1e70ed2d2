"""RhapsodyRunner: every RHAPSODY backend as a Prefect task runner.

    from prefect import flow, task
    from rhapsody_prefect import RhapsodyRunner

    @task
    def square(x: int) -> int:
        return x * x

    @flow(task_runner=RhapsodyRunner("dask", address="tcp://scheduler:8786"))
    def ensemble() -> list[int]:
        return square.map(range(10)).result()

The first argument names a backend in the registry (`concurrent`, `dask`,
`radical_pilot`, or one registered at run time); the rest go to that backend's
constructor. Prefect's task engine (states, retries, caching, timeouts, result
persistence, events) runs in the flow process, all task runs as coroutines on
one event-loop thread; only each task *body* is sent to the backend. The
backend is created and started on the first submit and terminated when the
flow run ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import functools
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from prefect._internal.uuid7 import uuid7
from prefect.context import AsyncClientContext, TaskRunContext
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Crashed, State
from prefect.task_engine import run_task_async
from prefect.task_runners import TaskRunner
from prefect.tasks import Task
from prefect.utilities.collections import visit_collection

from .backends.base import BaseExecutionBackend, task_error
from .backends.discovery import get_backend
from .constants import TaskState
from .exceptions import BackendError, ConfigurationError
from .executable import (
    ExecutableResult,
    check_result,
    command_builder_of,
    command_spec,
    resources_of,
)
from .remote import BodyContext, BodyError, BodyOutcome, LogLine, run_body
from .states import to_prefect
from .tasks import TaskDict, validate_task

logger = logging.getLogger("rhapsody_prefect.runner")


class _LoopThread:
    """One daemon thread running the event loop every task run of a flow run shares."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run `coro` on the loop and wait for its result from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(
        self, coro: Coroutine[Any, Any, Any], context: contextvars.Context
    ) -> concurrent.futures.Future[Any]:
        """Start `coro` as a task on the loop, in `context`; a thread-safe future of it."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            task = self.loop.create_task(coro, context=context)

            def transfer(done: asyncio.Task[Any]) -> None:
                if done.cancelled():
                    result.cancel()
                elif done.exception() is not None:
                    result.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    result.set_result(done.result())

            task.add_done_callback(transfer)

        self.loop.call_soon_threadsafe(start)
        return result

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self.loop.close()


#: The states the runner acts on and shows in a timeline; the waiting engine coroutine is
#: woken only for these (one wake-up costs a resume of Prefect's whole engine call chain).
_NOTABLE = frozenset(
    {TaskState.EXECUTING, TaskState.RETRYING} | {s for s in TaskState if s.is_terminal}
)


class _Watch:
    """The flow side of one backend task: its state changes, as they arrive."""

    def __init__(self) -> None:
        self.states: asyncio.Queue[TaskState] = asyncio.Queue()
        self.times: list[tuple[TaskState, float]] = []

    def push(self, state: TaskState) -> None:
        self.times.append((state, time.time()))
        if state in _NOTABLE:  # NEW, WAITING, READY are only timestamped
            self.states.put_nowait(state)

    def timeline(self) -> str:
        """'queued 12:00:01.250, executing +0.004s, completed +0.120s'."""
        if not self.times:
            return ""
        start = self.times[0][1]
        clock = time.strftime("%H:%M:%S", time.localtime(start)) + f".{int(start % 1 * 1000):03d}"
        parts = [f"queued {clock}"]
        for state, moment in self.times[1:]:
            if state in _NOTABLE:
                parts.append(f"{state.value.lower()} +{moment - start:.3f}s")
        return ", ".join(parts)


class RhapsodyRunner(TaskRunner[PrefectConcurrentFuture[Any]]):
    """A Prefect task runner that runs task bodies on a RHAPSODY backend.

    Args:
        backend: registry name of the backend (`concurrent`, `dask`, `radical_pilot`, ...).
        *backend_args: positional arguments for the backend's constructor.
        transition_log_level: level of the per-task log lines that record where and
            when the body ran (queued, executing, retrying, finished); None: no lines.
        executing_log_after: seconds a body must have been executing before its
            "executing" line is logged (stamped with the time it started); bodies that
            finish sooner get only the "finished" line, which carries the whole
            timeline. 0: always log it.
        **backend_kwargs: keyword arguments for the backend's constructor.
    """

    def __init__(
        self,
        backend: str = "concurrent",
        *backend_args: Any,
        transition_log_level: int | None = logging.INFO,
        executing_log_after: float = 1.0,
        **backend_kwargs: Any,
    ) -> None:
        if not isinstance(backend, str):
            raise ConfigurationError(
                f"RhapsodyRunner needs a backend name (str), got {backend!r}", "backend"
            )
        self.backend_name = backend
        super().__init__()
        self.backend_args = backend_args
        self.backend_kwargs = backend_kwargs
        self.transition_log_level = transition_log_level
        if (isinstance(executing_log_after, bool)
                or not isinstance(executing_log_after, (int, float)) or executing_log_after < 0):
            raise ConfigurationError(
                f"executing_log_after must be a number of seconds >= 0, got "
                f"{executing_log_after!r}", "executing_log_after",
            )
        self.executing_log_after = executing_log_after
        self._reset_runtime()
        self._children: weakref.WeakSet[RhapsodyRunner] = weakref.WeakSet()

    def _reset_runtime(self) -> None:
        self._loop_thread: _LoopThread | None = None
        self._backend: BaseExecutionBackend | None = None
        self._client_context: AsyncClientContext | None = None
        self._backend_lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._cancelling = False

    # --------------------------------------------------------------- TaskRunner
    @property
    def name(self) -> str:
        return f"rhapsody-{self.backend_name}"

    def duplicate(self) -> RhapsodyRunner:
        twin = type(self)(
            self.backend_name,
            *self.backend_args,
            transition_log_level=self.transition_log_level,
            executing_log_after=self.executing_log_after,
            **self.backend_kwargs,
        )
        self._children.add(twin)
        return twin

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RhapsodyRunner)
            and (self.backend_name, self.backend_args, self.backend_kwargs)
            == (other.backend_name, other.backend_args, other.backend_kwargs)
        )

    __hash__ = object.__hash__

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_loop_thread", "_backend", "_client_context", "_backend_lock", "_watches",
                    "_inflight", "_children"):
            state.pop(key, None)
        state["_started"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()
        self._children = weakref.WeakSet()

    def __enter__(self) -> RhapsodyRunner:
        super().__enter__()
        self._cancelling = False
        self._loop_thread = _LoopThread(name=f"rhapsody-{self.backend_name}-runner")
        return self

    async def _open_client(self) -> AsyncClientContext:
        # Opened and closed by hand: the context model's own __aexit__ resets a
        # contextvar token, which only works in the context that entered it.
        client_context = AsyncClientContext()
        await client_context.client.__aenter__()
        return client_context

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        loop_thread = self._loop_thread
        try:
            if exc_type is not None:
                self.cancel_all()
            concurrent.futures.wait(list(self._inflight))
            if loop_thread is not None and self._backend is not None:
                loop_thread.call(self._backend.terminate())
            if loop_thread is not None and self._client_context is not None:
                loop_thread.call(self._client_context.client.__aexit__(None, None, None))
        finally:
            self._backend = None
            self._client_context = None
            if loop_thread is not None:
                loop_thread.stop()
            self._loop_thread = None
            super().__exit__(exc_type, exc_value, traceback)

    def submit(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> PrefectConcurrentFuture[Any]:
        if not self._started or self._loop_thread is None:
            raise RuntimeError("Task runner is not started")
        if inspect.isgeneratorfunction(task.fn) or inspect.isasyncgenfunction(task.fn):
            raise ConfigurationError(
                f"Task {task.name!r} is a generator; RhapsodyRunner runs task bodies on a "
                "backend and cannot stream their results. Return a list instead.",
                config_key="task",
            )
        backend = self._ensure_backend()
        task_run_id = uuid7()
        engine_run = self._run_task(
            backend, task, task_run_id, parameters, list(wait_for or []), dependencies
        )
        context = contextvars.copy_context()
        # One API client for every task run on the loop, instead of one each.
        context.run(AsyncClientContext.__var__.set, self._client_context)
        future = self._loop_thread.spawn(engine_run, context)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return PrefectConcurrentFuture(task_run_id=task_run_id, wrapped_future=future)

    def cancel_all(self) -> None:
        """Cancel every task of this runner (and of its running duplicates)."""
        for child in list(self._children):
            child.cancel_all()
        self._cancelling = True
        loop_thread, backend = self._loop_thread, self._backend
        if loop_thread is None or backend is None or loop_thread.loop.is_closed():
            return
        uids = [uid for uid in self._watches]
        if uids:
            loop_thread.call(_cancel_many(backend, uids))

    # ---------------------------------------------------------------- internals
    def _ensure_backend(self) -> BaseExecutionBackend:
        """Create and start the backend on first use; a start failure fails submit."""
        with self._backend_lock:
            if self._backend is None:
                assert self._loop_thread is not None
                backend = get_backend(self.backend_name, *self.backend_args, **self.backend_kwargs)
                backend.register_callback(self._on_backend_state)
                self._backend = backend
                self._client_context = self._loop_thread.call(self._open_client())
                try:
                    self._loop_thread.call(backend.start())
                except BackendError:
                    raise
                except Exception as error:
                    raise BackendError(
                        f"Backend {self.backend_name!r} could not start: {error!r}",
                        self.backend_name,
                    ) from error
            return self._backend

    def _on_backend_state(self, task: TaskDict, state: str) -> None:
        watch = self._watches.get(task["uid"])
        if watch is not None:
            watch.push(TaskState(state))

    async def _run_task(
        self,
        backend: BaseExecutionBackend,
        task: Task[Any, Any],
        task_run_id: Any,
        parameters: dict[str, Any],
        wait_for: list[PrefectFuture[Any]],
        dependencies: dict[str, set[Any]] | None,
    ) -> State[Any]:
        # Prefect's engine resolves upstream futures with blocking calls: wait for
        # them here, without blocking the loop, so the engine finds them done.
        try:
            await _wait_for_futures(parameters, wait_for)
        except Exception as error:  # a foreign future that cannot be waited on
            logger.warning("Waiting for upstream futures failed: %r", error)
        try:
            return await run_task_async(
                task=self._body_task(backend, task),
                task_run_id=task_run_id,
                parameters=parameters,
                wait_for=wait_for or None,
                return_type="state",
                dependencies=dependencies,
            )
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # the engine recorded a crash; the loop lives on
            return Crashed(message=f"Task run crashed: {type(error).__name__}: {error}")

    def _body_task(self, backend: BaseExecutionBackend, task: Task[Any, Any]) -> Task[Any, Any]:
        """A copy of `task` whose fn sends the body to the backend (engine unchanged)."""
        original = task.fn

        @functools.wraps(original)
        async def send_to_backend(*args: Any, **kwargs: Any) -> Any:
            return await self._run_body(backend, original, args, kwargs)

        proxy = copy.copy(task)
        proxy.fn = send_to_backend
        proxy.isasync = True
        return proxy

    async def _run_body(
        self,
        backend: BaseExecutionBackend,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        run_context = TaskRunContext.get()
        assert run_context is not None
        assert run_context.task_run is not None
        task_run = run_context.task_run
        run_logger = get_run_logger()
        if self._cancelling:
            return Cancelled(message="The task runner was cancelled before this task ran")

        builder = command_builder_of(fn)
        resources = resources_of(fn)
        if builder is not None:
            spec = command_spec(builder(*args, **kwargs), resources)
        else:
            spec = validate_task({
                **resources,
                "function": run_body,
                "args": (fn, args, kwargs, BodyContext(
                    task_run=task_run.model_dump(
                        mode="json", include={"id", "name", "flow_run_id", "task_key"}
                    ),
                    task_name=run_context.task.name,
                    log_prints=bool(run_context.log_prints),
                    log_level=run_logger.logger.getEffectiveLevel(),
                )),
            })
        uid = f"{task_run.name}.{task_run.id.hex[-8:]}.{task_run.run_count}"
        spec.update(uid=uid, name=task_run.name)

        watch = self._watches[uid] = _Watch()
        executing_line: asyncio.TimerHandle | None = None
        try:
            await backend.submit_tasks([spec])
            while True:
                state = await watch.states.get()
                if state.is_terminal:
                    break
                if (state is TaskState.EXECUTING and executing_line is None
                        and self.transition_log_level is not None):
                    executing_line = asyncio.get_running_loop().call_later(
                        self.executing_log_after, self._log_transition,
                        run_logger, uid, "executing", state, "", time.time(),
                    )
                elif state is TaskState.RETRYING:
                    self._log_transition(run_logger, uid, "retrying", state)
        except asyncio.CancelledError:  # Prefect's timeout, or the flow being torn down
            asyncio.get_running_loop().create_task(_cancel_many(backend, [uid]))
            raise
        finally:
            self._watches.pop(uid, None)
            if executing_line is not None:
                executing_line.cancel()
        _replay(run_logger, _captured_logs(spec))
        self._log_transition(run_logger, uid, "finished", state, watch.timeline())
        return _result_of(spec, state)

    def _log_transition(
        self,
        run_logger: Any,
        uid: str,
        event: str,
        state: TaskState,
        timeline: str = "",
        at: float | None = None,
    ) -> None:
        """A line when a long body is executing (or retrying), one when it ends.

        The final line carries the whole timeline, so a short task costs one log line.
        """
        if self.transition_log_level is None:
            return
        _prefect_type, prefect_name = to_prefect(state)
        message = (
            f"Backend {self.backend_name!r} task {uid} {event}: RHAPSODY {state.value} "
            f"(Prefect {prefect_name}){f'; {timeline}' if timeline else ''}"
        )
        _emit(run_logger, self.transition_log_level, message, at, extra={
            "rhapsody_backend": self.backend_name, "rhapsody_uid": uid,
            "rhapsody_state": state.value,
        })


def _captured_logs(spec: TaskDict) -> list[LogLine]:
    for carrier in (spec.get("return_value"), spec.get("exception")):
        if isinstance(carrier, (BodyOutcome, BodyError)):
            return carrier.logs
    return []


def _result_of(spec: TaskDict, state: TaskState) -> Any:
    """The body's return value, or the exception/state Prefect should record."""
    if state is TaskState.CANCELED:
        return Cancelled(message=f"Backend task {spec['uid']} was cancelled")
    if spec.get("executable") is not None and spec.get("exit_code") is not None:
        result = ExecutableResult(
            spec["exit_code"], spec.get("stdout") or "", spec.get("stderr") or ""
        )
        return check_result(spec, result)
    if state is TaskState.COMPLETED:
        outcome = spec.get("return_value")
        if isinstance(outcome, BodyOutcome):
            return outcome.value
        return outcome
    error = spec.get("exception")
    if isinstance(error, BodyError):
        error = error.error
    if isinstance(error, BaseException) and not isinstance(error, Exception):
        # KeyboardInterrupt, SystemExit in the body: the body crashed, the loop must not.
        return Crashed(message=f"Task body raised {type(error).__name__}: {error}")
    if error is not None:
        raise error
    raise task_error(spec)


def _replay(run_logger: Any, lines: list[LogLine]) -> None:
    """Emit the body's captured log lines as the task run's own, with their times."""
    for line in lines:
        _emit(run_logger, line.levelno, line.message, line.created)


def _emit(
    run_logger: Any,
    level: int,
    message: str,
    created: float | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Log `message` on the task run's logger, stamped `created` (default: now)."""
    target = run_logger.logger
    if not target.isEnabledFor(level):
        return
    record = target.makeRecord(
        target.name, level, "(backend)", 0, message, None, None,
        extra={**run_logger.extra, **(extra or {})},
    )
    if created is not None:
        record.created = created
        record.msecs = (created % 1) * 1000
    target.handle(record)


async def _cancel_many(backend: BaseExecutionBackend, uids: list[str]) -> None:
    results = await asyncio.gather(
        *(backend.cancel_task(uid) for uid in uids), return_exceptions=True
    )
    for uid, outcome in zip(uids, results, strict=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, ConfigurationError):
            logger.warning("Cancelling backend task %s failed: %r", uid, outcome)


_PLAIN_TYPES = (int, float, str, bytes, bool, type(None))


async def _wait_for_futures(
    parameters: dict[str, Any], wait_for: list[PrefectFuture[Any]]
) -> None:
    if not wait_for and all(type(value) in _PLAIN_TYPES for value in parameters.values()):
        return  # nothing to wait for; skips a full visit of the parameters per task
    futures: list[PrefectFuture[Any]] = []

    def collect(value: Any) -> Any:
        if isinstance(value, PrefectFuture):
            futures.append(value)
        return value

    visit_collection([parameters, wait_for], visit_fn=collect, return_data=False, max_depth=-1)
    for future in futures:
        wrapped = getattr(future, "wrapped_future", None)
        if isinstance(wrapped, concurrent.futures.Future):
            await asyncio.wait([asyncio.wrap_future(wrapped)])
        else:
            await asyncio.to_thread(future.wait)


__all__ = ["RhapsodyRunner"]
