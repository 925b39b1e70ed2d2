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

Several backends in one flow: `backends=` names them, each a registry name or a
dict `{"backend": registry_name, **constructor_kwargs}`, and each body is routed
to one (adapter/routing.py: the task's own `"backend"` key or `ensemble_map(...,
backend=)`, else `task_resources(backend=)`, else a tag `rhapsody:NAME`, else
`default`). Each backend starts when the first body is routed to it:

    RhapsodyRunner(backends={"pilot": {"backend": "radical_pilot", "cores": 4},
                             "local": "concurrent"}, default="local")

Cancellation has one owner per backend, the flow run's `dispatch.BodyDispatcher`
(all created on `__enter__`, before any backend, and held by `routing.Backends`):
`cancel_all` asks every one to cancel. Prefect calls `cancel_all` on the flow's
own runner, not on the `duplicate()` that runs the flow run, so that one passes
it on to its running duplicates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import copy
import inspect
import logging
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from prefect._internal.uuid7 import uuid7
from prefect.context import AsyncClientContext
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.states import Crashed, State
from prefect.task_engine import run_task_async
from prefect.task_runners import TaskRunner
from prefect.tasks import Task

from ..core.exceptions import ConfigurationError
from .dispatch import BodyDispatcher, wait_for_futures
from .loop_thread import LoopThread
from .pacing import StartPacer
from .routing import Backends, Routing

logger = logging.getLogger("rhapsody_prefect.runner")


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
        artifacts: Prefect artifacts for the flow run: a progress bar of its task runs'
            backend work (once that work outlasts a few seconds) and a summary table at
            the end, and the same per `ensemble_map` (with several backends: per backend);
            False: none.
        backends: several backends instead of `backend` and its options: name -> a
            registry name or `{"backend": registry_name, **constructor_kwargs}`.
        default: with `backends`, the name of the backend a body goes to when nothing
            routes it elsewhere (default: the first name).
        **backend_kwargs: keyword arguments for the backend's constructor.

    Raises:
        ConfigurationError: an unknown backend, a bad option, a bad spec or `default`
            (naming it).
    """

    #: Attributes that live only while the runner runs (never pickled or duplicated).
    _RUNTIME = ("_stack", "_loop_thread", "_backends", "_client_context", "_backend_lock",
                "_inflight", "_children", "_pacer")

    def __init__(
        self,
        backend: str = "concurrent",
        *backend_args: Any,
        transition_log_level: int | None = logging.INFO,
        executing_log_after: float = 1.0,
        artifacts: bool = True,
        backends: dict[str, str | dict[str, Any]] | None = None,
        default: str | None = None,
        **backend_kwargs: Any,
    ) -> None:
        if not isinstance(backend, str):
            raise ConfigurationError(
                f"RhapsodyRunner needs a backend name (str), got {backend!r}", "backend"
            )
        if backends is None:
            if default is not None:
                raise ConfigurationError("default= goes with backends=", "default")
            self.routing = Routing.single(backend, backend_args, backend_kwargs)
        elif backend_args or backend_kwargs:
            raise ConfigurationError(
                "Give either one backend with its options or backends=, not both; got "
                f"options {sorted(backend_kwargs) or list(backend_args)} beside backends=",
                "backends")
        else:
            self.routing = Routing.several(backends, default)
        #: The default backend's name (the one backend's, in the single form).
        self.backend_name = self.routing.default
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
        if not isinstance(artifacts, bool):
            raise ConfigurationError(f"artifacts must be a bool, got {artifacts!r}", "artifacts")
        self.artifacts = artifacts
        self.routing.check()  # every backend, constructed and dropped: nothing starts
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._stack: contextlib.ExitStack | None = None
        self._loop_thread: LoopThread | None = None
        self._backends: Backends | None = None
        self._client_context: AsyncClientContext | None = None
        self._backend_lock = threading.Lock()
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._children: weakref.WeakSet[RhapsodyRunner] = weakref.WeakSet()
        self._pacer = StartPacer()

    # --------------------------------------------------------------- TaskRunner
    @property
    def name(self) -> str:
        return f"rhapsody-{'+'.join(self.routing.names)}"

    def duplicate(self) -> RhapsodyRunner:
        twin = copy.copy(self)  # __getstate__/__setstate__: options only, checked already
        self._children.add(twin)
        return twin

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RhapsodyRunner)
            and self.routing == other.routing
        )

    __hash__ = object.__hash__

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}
        state["_started"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    def __enter__(self) -> RhapsodyRunner:
        super().__enter__()
        self._stack = contextlib.ExitStack()
        loop_thread = LoopThread(name=f"{self.name}-runner")
        self._pacer = StartPacer()  # a fresh one per loop: no turn left over from the last
        # Before any backend: a cancel_all that comes first still stops every submit.
        backends = Backends(self.routing, self.transition_log_level,
                            self.executing_log_after, self.artifacts)
        # Closed in reverse: the backends terminated, the API client closed, the loop stopped.
        self._stack.callback(loop_thread.stop)
        self._stack.callback(self._close_client)
        self._stack.callback(lambda: loop_thread.call(backends.terminate()))
        self._loop_thread = loop_thread
        self._backends = backends
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            if exc_type is not None:
                self.cancel_all()
            concurrent.futures.wait(list(self._inflight))
            self._close_dispatcher()
            if self._stack is not None:
                self._stack.close()  # backend terminated, client closed, loop stopped
        finally:
            self._stack = None
            self._backends = None
            self._client_context = None
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
        if len(self.routing.specs) == 1:
            self.dispatcher()  # the single form starts its backend here, as it always did
        else:
            self._open_client()  # each backend starts when a body is routed to it
        task_run_id = uuid7()
        engine_run = self._run_task(
            task, task_run_id, parameters, list(wait_for or []), dependencies
        )
        context = contextvars.copy_context()
        # One API client for every task run on the loop, instead of one each.
        context.run(AsyncClientContext.__var__.set, self._client_context)
        future = self._loop_thread.spawn(engine_run, context)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return PrefectConcurrentFuture(task_run_id=task_run_id, wrapped_future=future)

    def cancel_all(self) -> None:
        """Cancel every task of this runner, on every backend (and of its running
        duplicates)."""
        for child in list(self._children):
            child.cancel_all()
        loop_thread, backends = self._loop_thread, self._backends
        if loop_thread is None or backends is None or loop_thread.loop.is_closed():
            return
        loop_thread.call(backends.cancel_all())

    def dispatcher(self, name: str | None = None) -> BodyDispatcher:
        """The flow run's dispatcher of backend `name` (default: the default backend),
        the backend created and started on first use.

        For `submit` and for work that sends its own backend tasks (`ensemble_map`);
        call it from the flow's thread. A backend that cannot start fails the call;
        a name that is not one of the runner's raises ConfigurationError.
        """
        backends, loop_thread = self._backends, self._loop_thread
        if backends is None or loop_thread is None:
            raise RuntimeError("Task runner is not started")
        name = self.routing.default if name is None else name
        if name in backends.dispatchers:
            ready = backends.ready(name)
            if ready is not None:
                return ready
        self._open_client()
        # In this thread's context: the backend's notices go to this flow run's log.
        started = loop_thread.spawn(backends.started(name), contextvars.copy_context())
        return started.result()

    @property
    def _dispatcher(self) -> BodyDispatcher | None:
        """The default backend's dispatcher while the runner runs (bench/ reads it)."""
        backends = self._backends
        return None if backends is None else backends.dispatchers[self.routing.default]

    def _open_client(self) -> None:
        """One API client for every task run on the loop, opened on first use."""
        if self._client_context is not None:
            return
        with self._backend_lock:
            if self._client_context is None and self._loop_thread is not None:
                self._client_context = self._loop_thread.call(_open_client())

    def _close_client(self) -> None:
        client_context, loop_thread = self._client_context, self._loop_thread
        if client_context is not None and loop_thread is not None:
            loop_thread.call(client_context.client.__aexit__(None, None, None))

    def _close_dispatcher(self) -> None:
        """The flow run's last progress artifact updates and summaries (never raises)."""
        loop_thread, backends = self._loop_thread, self._backends
        if loop_thread is None or backends is None or loop_thread.loop.is_closed():
            return
        try:
            loop_thread.call(backends.close(), timeout=60)
        except Exception as error:
            logger.warning("Could not finish the flow run's progress artifacts: %r", error)

    async def _run_task(
        self,
        task: Task[Any, Any],
        task_run_id: Any,
        parameters: dict[str, Any],
        wait_for: list[PrefectFuture[Any]],
        dependencies: dict[str, set[Any]] | None,
    ) -> State[Any]:
        try:
            await wait_for_futures(parameters, wait_for)
        except Exception as error:  # a foreign future that cannot be waited on
            logger.warning("Waiting for upstream futures failed: %r", error)
        await self._pacer.turn()  # a few engine starts per loop iteration (adapter/pacing.py)
        assert self._backends is not None
        try:
            return await run_task_async(
                task=self._backends.proxy(task),
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


async def _open_client() -> AsyncClientContext:
    # Opened and closed by hand: the context model's own __aexit__ resets a
    # contextvar token, which only works in the context that entered it.
    client_context = AsyncClientContext()
    await client_context.client.__aenter__()
    return client_context


__all__ = ["RhapsodyRunner"]
