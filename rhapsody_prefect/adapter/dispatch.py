"""One Prefect task body as a backend task: built, submitted, watched, turned into a result.

    dispatcher = BodyDispatcher(backend, TransitionLines("dask", logging.INFO), 1.0)
    proxy = dispatcher.proxy(task)        # a copy of the Prefect task whose fn sends the body
    state = await run_task_async(task=proxy, ...)      # Prefect's engine, unchanged
    await dispatcher.cancel_all()         # cancel every body still on the backend
    await dispatcher.close()              # the flow's progress artifacts, finished

The engine calls the proxy inside the task run's context; the proxy builds the
backend task (a command, or the function with its log `capture` context), submits
it, waits for its notable states and returns `states.prefect_result(...)`.

Two hooks for work that is not one body per task run (`adapter/ensemble.py`): a
task whose fn is marked `runs_in_flow` is not proxied (its body runs in the flow
process, on the runner's loop), and a `Group` registered in `groups` under a
name gets the state changes of the backend tasks of that `name` and is cancelled
by `cancel_all`. The dispatcher also tallies the plain task runs' bodies as a
whole: a progress artifact when that work lasts longer than a progress interval,
and a summary table when the flow run ends (`artifacts=False`: none).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.states import Cancelled
from prefect.tasks import Task
from prefect.utilities.collections import visit_collection

from ..body.capture import BodyContext
from ..core.constants import TaskState
from ..core.contract import BaseExecutionBackend
from ..core.exceptions import ConfigurationError
from ..core.tasks import TaskDict
from . import progress
from .executable import command_builder_of, command_spec, resources_of
from .progress import Reporter, Tally
from .states import prefect_result
from .timeline import TransitionLines, Watch, replay

logger = logging.getLogger("rhapsody_prefect.runner")

#: Marks a task fn that runs in the flow process, on the runner's loop (not proxied).
FLOW_SIDE_ATTRIBUTE = "__rhapsody_flow_side__"


def runs_in_flow(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an async task fn to run in the flow process, on the runner's loop."""
    setattr(fn, FLOW_SIDE_ATTRIBUTE, True)
    return fn


class Group(Protocol):
    """Backend tasks sent together under one `name` (an ensemble's members)."""

    def on_state(self, task: TaskDict, state: TaskState) -> None: ...

    async def cancel(self) -> None: ...


class BodyDispatcher:
    """Sends the bodies of one flow run's task runs to one backend."""

    def __init__(
        self,
        backend: BaseExecutionBackend,
        lines: TransitionLines,
        executing_log_after: float,
        artifacts: bool = True,
    ) -> None:
        self.backend = backend
        self.lines = lines
        self.executing_log_after = executing_log_after
        self.artifacts = artifacts
        self.watches: dict[str, Watch] = {}
        self.groups: dict[str, Group] = {}
        self.cancelling = False
        self.work = Tally()  # every plain task run's body, as a whole
        self._reporter: Reporter | None = None
        backend.register_callback(self._on_state)

    def _on_state(self, task: TaskDict, state: str) -> None:
        # Called for every state of every backend task: the shared engine passes a
        # TaskState (no Enum lookup then); another backend may pass its value.
        if type(state) is not TaskState:
            state = TaskState(state)
        watch = self.watches.get(task["uid"])
        if watch is not None:
            watch.push(state)
            self.work.on_state(task, state)
            return
        group = self.groups.get(task.get("name"))  # type: ignore[arg-type]
        if group is not None:
            group.on_state(task, state)

    def proxy(self, task: Task[Any, Any]) -> Task[Any, Any]:
        """A copy of `task` whose fn sends the body to the backend (engine unchanged).

        A fn marked `runs_in_flow` is returned as it is: the engine runs it here.
        """
        if getattr(task.fn, FLOW_SIDE_ATTRIBUTE, False):
            return task
        original = task.fn

        @functools.wraps(original)
        async def send_to_backend(*args: Any, **kwargs: Any) -> Any:
            try:
                return await self.run_body(original, args, kwargs)
            except Exception as error:
                # The user's traceback travels as the error's note ("Remote traceback");
                # the frames of our plumbing between here and the raise say nothing.
                raise error.with_traceback(None) from error.__cause__

        proxy = copy.copy(task)
        proxy.fn = send_to_backend
        proxy.isasync = True
        return proxy

    def backend_task(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TaskDict:
        """The backend task for a body, inside its task run's context (not validated yet)."""
        run_context = TaskRunContext.get()
        assert run_context is not None and run_context.task_run is not None
        task_run = run_context.task_run
        builder = command_builder_of(fn)
        if builder is not None:
            spec = command_spec(builder(*args, **kwargs), resources_of(fn))
        else:
            context = BodyContext(
                task_run=task_run.model_dump(
                    mode="json", include={"id", "name", "flow_run_id", "task_key"}
                ),
                task_name=run_context.task.name,
                log_prints=bool(run_context.log_prints),
                log_level=get_run_logger().logger.getEffectiveLevel(),
            )
            spec = {**resources_of(fn), "function": fn, "args": args, "kwargs": kwargs,
                    "capture": context}
        spec["uid"] = f"{task_run.name}.{task_run.id.hex[-8:]}.{task_run.run_count}"
        spec["name"] = task_run.name
        return spec

    async def run_body(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.cancelling:
            return Cancelled(message="The task runner was cancelled before this task ran")
        run_logger = get_run_logger()
        spec = self.backend_task(fn, args, kwargs)
        if self._reporter is None and self.artifacts:
            self._start_reporter()
        uid = spec["uid"]
        watch = self.watches[uid] = Watch()
        executing_line: asyncio.TimerHandle | None = None
        try:
            await self.backend.submit_tasks([spec])
            self.lines.waiting(run_logger, uid, self.backend)  # e.g. the pilot is queued
            while True:
                state = await watch.states.get()
                if state.is_terminal:
                    break
                if (state is TaskState.EXECUTING and executing_line is None
                        and self.lines.level is not None):
                    executing_line = asyncio.get_running_loop().call_later(
                        self.executing_log_after, self.lines.log,
                        run_logger, uid, "executing", state, "", time.time(),
                    )
                elif state is TaskState.RETRYING:
                    self.lines.log(run_logger, uid, "retrying", state)
        except asyncio.CancelledError:  # Prefect's timeout, or the flow being torn down
            asyncio.get_running_loop().create_task(cancel_many(self.backend, [uid]))
            raise
        finally:
            self.watches.pop(uid, None)
            if executing_line is not None:
                executing_line.cancel()
        replay(run_logger, spec.get("logs"), uid)
        self.lines.log(run_logger, uid, "finished", state, watch.timeline())
        return await prefect_result(spec)

    def _start_reporter(self) -> None:
        run_context = TaskRunContext.get()
        assert run_context is not None and run_context.task_run is not None
        self._reporter = Reporter(
            self.work, self.backend, "Backend tasks of this flow run's task runs",
            run_context.task_run.flow_run_id, interval=progress.PROGRESS_INTERVAL,
            noun="backend tasks",
        )
        self._reporter.start(create_now=False)  # only once the work outlasts an interval

    async def cancel_all(self) -> None:
        self.cancelling = True
        groups = list(self.groups.values())
        await asyncio.gather(cancel_many(self.backend, list(self.watches)),
                             *(group.cancel() for group in groups))

    async def close(self) -> None:
        """The flow run ends: the flow-level progress artifact's last value and summary."""
        if self._reporter is not None:
            await self._reporter.finish()


async def cancel_many(backend: BaseExecutionBackend, uids: list[str]) -> None:
    results = await asyncio.gather(
        *(backend.cancel_task(uid) for uid in uids), return_exceptions=True
    )
    for uid, outcome in zip(uids, results, strict=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, ConfigurationError):
            logger.warning("Cancelling backend task %s failed: %r", uid, outcome)


_PLAIN_TYPES = (int, float, str, bytes, bool, type(None))


async def wait_for_futures(parameters: dict[str, Any], wait_for: list[PrefectFuture[Any]]) -> None:
    """Wait, without blocking the loop, for the upstream futures in parameters and wait_for.

    Prefect's engine resolves upstream futures with blocking calls; awaited here
    first, the engine finds them done.
    """
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


__all__ = ["FLOW_SIDE_ATTRIBUTE", "BodyDispatcher", "Group", "cancel_many", "runs_in_flow",
           "wait_for_futures"]
