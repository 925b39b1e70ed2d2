"""One Prefect task body as a backend task: built, submitted, watched, turned into a result.

    dispatcher = BodyDispatcher(TransitionLines("dask", logging.INFO), 1.0)
    dispatcher.attach(backend)            # once the backend is created (on first use)
    state = await dispatcher.send(spec)   # inside the task run: submit, watch, result
    state = await dispatcher.run_body(fn, args, kwargs)   # build the spec here, then send
    await dispatcher.cancel_all()         # cancel every body still on the backend
    await dispatcher.close()              # the flow's progress artifacts, finished

There is one dispatcher per backend of a flow run (`routing.Backends` owns them and
routes each body to one); a task run's proxy (`routing.Backends.proxy`) builds the
backend task (`body_spec.BodySpec`: a command, or the function with its log
`capture` context) inside the task run's context, and the dispatcher submits it,
waits for its notable states and returns `states.prefect_result(...)`.

Two hooks for work that is not one body per task run (`adapter/ensemble.py`): a
task whose fn is marked `runs_in_flow` is not proxied (its body runs in the flow
process, on the runner's loop), and a `Group` that `join`s under a key gets the
state changes of the backend tasks whose `group` is that key, and is cancelled by
`cancel_all`. The dispatcher is the one owner of cancelling its backend's tasks:
once `cancel_all` ran, `cancelled` is true and no body is sent any more (an
ensemble asks it before each chunk). It also tallies the plain task runs' bodies
as a whole: a progress artifact when that work lasts longer than a progress
interval, and a summary table when the flow run ends (`artifacts=False`: none).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.states import Cancelled
from prefect.utilities.collections import visit_collection

from ..core.constants import TaskState
from ..core.contract import BaseExecutionBackend
from ..core.exceptions import ConfigurationError
from ..core.tasks import TaskDict
from . import progress
from .body_spec import BodySpec
from .progress import Reporter, Tally
from .states import prefect_result
from .timeline import BodyStates, TransitionLines, replay

logger = logging.getLogger("rhapsody_prefect.runner")

#: Marks a task fn that runs in the flow process, on the runner's loop (not proxied).
FLOW_SIDE_ATTRIBUTE = "__rhapsody_flow_side__"


def runs_in_flow(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an async task fn to run in the flow process, on the runner's loop."""
    setattr(fn, FLOW_SIDE_ATTRIBUTE, True)
    return fn


class Group(Protocol):
    """Backend tasks sent together under one `group` key (an ensemble's members)."""

    def on_state(self, task: TaskDict, state: TaskState) -> None: ...

    async def cancel(self) -> None: ...


class BodyDispatcher:
    """Sends the bodies of one flow run's task runs to one backend.

    `lines.backend_name` is the backend's name in the runner; `named`: it is one of
    several, and its artifacts say which.
    """

    def __init__(
        self,
        lines: TransitionLines,
        executing_log_after: float,
        artifacts: bool = True,
        named: bool = False,
    ) -> None:
        self.lines = lines
        self.name = lines.backend_name
        self.named = named
        self.executing_log_after = executing_log_after
        self.artifacts = artifacts
        self.bodies: dict[str, BodyStates] = {}
        self.work = Tally()  # every plain task run's body, as a whole
        self._backend: BaseExecutionBackend | None = None
        self._groups: dict[str, Group] = {}
        self._cancelled = False
        self._reporter: Reporter | None = None

    def attach(self, backend: BaseExecutionBackend) -> None:
        """Send the bodies to `backend` (created on first submit, so after a cancel maybe)."""
        assert self._backend is None, "a dispatcher sends to one backend"
        backend.register_callback(self._on_state)
        self._backend = backend

    @property
    def attached(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> BaseExecutionBackend:
        if self._backend is None:
            raise RuntimeError("No backend attached to this dispatcher yet")
        return self._backend

    @property
    def cancelled(self) -> bool:
        """`cancel_all` ran: no body is sent any more."""
        return self._cancelled

    @contextlib.contextmanager
    def join(self, key: str, group: Group) -> Iterator[None]:
        """While inside: `group` gets the states of the backend tasks whose `group` is
        `key` (after `attach`), and `cancel_all` cancels it."""
        if key in self._groups:
            raise ValueError(f"Group key {key!r} is already in use")
        self._groups[key] = group
        try:
            yield
        finally:
            del self._groups[key]

    def _on_state(self, task: TaskDict, state: str) -> None:
        # Called for every state of every backend task: the shared engine passes a
        # TaskState (no Enum lookup then); another backend may pass its value.
        if type(state) is not TaskState:
            state = TaskState(state)
        body = self.bodies.get(task["uid"])
        if body is not None:
            body.push(state)
            self.work.on_state(task, state)
            return
        group = self._groups.get(task.get("group"))  # type: ignore[arg-type]
        if group is not None:
            group.on_state(task, state)

    def backend_task(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TaskDict:
        """The backend task for a body, inside its task run's context (not validated yet).

        Prefect retries a plain task run itself (a new attempt, a new backend task): the
        backend task keeps the engine's default of no retries.
        """
        run_context = TaskRunContext.get()
        assert run_context is not None and run_context.task_run is not None
        bodies = BodySpec.here(run_context.task, fn)
        spec = bodies.build(run_context.task_run.run_count, args, kwargs)
        spec.pop("backend", None)  # a route: this dispatcher has one backend
        return spec

    async def run_body(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Build the body's backend task (inside its task run) and `send` it."""
        if self._cancelled:
            return Cancelled(message="The task runner was cancelled before this task ran")
        return await self.send(self.backend_task(fn, args, kwargs))

    async def send(self, spec: TaskDict) -> Any:
        """Inside the task run: submit its backend task, watch it, return its result."""
        if self._cancelled:  # e.g. while the backend was starting
            return Cancelled(message="The task runner was cancelled before this task ran")
        run_logger = get_run_logger()
        if self._reporter is None and self.artifacts:
            self._start_reporter()
        uid = spec["uid"]
        body = self.bodies[uid] = BodyStates()
        executing_line: asyncio.TimerHandle | None = None
        try:
            await self.backend.submit_tasks([spec])
            self.lines.waiting(run_logger, uid, self.backend)  # e.g. the pilot is queued
            while True:
                state = await body.states.get()
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
            self.bodies.pop(uid, None)
            if executing_line is not None:
                executing_line.cancel()
        replay(run_logger, spec.get("logs"), uid)
        self.lines.log(run_logger, uid, "finished", state, body.timeline())
        return await prefect_result(spec)

    def _start_reporter(self) -> None:
        run_context = TaskRunContext.get()
        assert run_context is not None and run_context.task_run is not None
        label = "Backend tasks of this flow run's task runs"
        self._reporter = Reporter(
            self.work, self.backend, f"{label} on {self.name!r}" if self.named else label,
            run_context.task_run.flow_run_id, interval=progress.PROGRESS_INTERVAL,
            noun="backend tasks", name=self.name if self.named else None,
        )
        self._reporter.start(create_now=False)  # only once the work outlasts an interval

    async def cancel_all(self) -> None:
        """Cancel every body still on the backend and every group; send nothing after."""
        self._cancelled = True
        if self._backend is None:
            return  # nothing was sent
        groups = list(self._groups.values())
        await asyncio.gather(cancel_many(self._backend, list(self.bodies)),
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
