"""Any backend written to upstream RHAPSODY's contract, run by this project's engine.

Upstream's `BaseBackend` (rhapsody-py) is constructed awaitably and offers
`submit_tasks`, `register_callback(func(task, state))`, `cancel_task(uid)`,
`shutdown()` and `get_task_states_map()`. `adapt(cls)` makes an `ExecutionBackend`
of such a class: the engine keeps its guarantees (validation, uids, callbacks in
order, retries, timeouts, cancel with a grace period, terminal states) and the
upstream backend runs each attempt as a task of its own:

    from rhapsody.backends.execution.noop import NoopExecutionBackend
    backend = adapt(NoopExecutionBackend)()             # constructor options go through
    async with backend:
        await backend.submit_tasks([{"executable": "/bin/true"}])
        await backend.wait()

The registry does this for every upstream class it resolves (`upstream.concurrent`,
`register_backend("x", "pkg.module.UpstreamClass")`). Upstream's RUNNING is
EXECUTING, DONE / FAILED / CANCELED end the attempt; any other upstream state
(RADICAL-Pilot's TMGR_SCHEDULING, ...) is not reported.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from ...core.attempt import Attempt
from ...core.constants import TaskState
from ...core.engine import ExecutionBackend
from ...core.exceptions import ConfigurationError
from ...core.tasks import TaskDict, is_function_task
from . import catalogue, translate

logger = logging.getLogger("rhapsody_prefect.backends")

_MAIN_STATES = ("DONE", "FAILED", "CANCELED", "RUNNING")
_adapted: dict[type, type[UpstreamBackend]] = {}


class UpstreamBackend(ExecutionBackend):
    """An upstream RHAPSODY backend under the engine; make one with `adapt(cls)`."""

    #: The upstream backend class this adapter runs.
    upstream_class: ClassVar[type]
    backend_type: ClassVar[str] = "upstream"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        upstream_class = getattr(type(self), "upstream_class", None)
        if upstream_class is None:
            raise ConfigurationError("UpstreamBackend runs an upstream class: use adapt(cls)")
        inspect.signature(upstream_class).bind(*args, **kwargs)  # a bad option: TypeError
        super().__init__()
        self._options = (args, kwargs)
        self._upstream: Any = None
        self._states: dict[str, str] = {}
        #: upstream uid -> the attempt it runs (read and popped from callback threads)
        self._running: dict[str, Attempt] = {}
        self._radical = any(c.__name__ == "RadicalExecutionBackend"
                            for c in upstream_class.__mro__)

    @property
    def upstream(self) -> Any:
        """The upstream backend instance (None until started)."""
        return self._upstream

    async def _start(self) -> None:
        args, kwargs = self._options
        upstream = self.upstream_class(*args, **kwargs)
        try:
            if inspect.isawaitable(upstream):
                upstream = await upstream  # upstream's _async_init: pilot, client, ...
            upstream.register_callback(self._on_state)
            self._states = _state_names(upstream)
        except BaseException:
            with contextlib.suppress(Exception):
                await upstream.shutdown()
            raise
        self._upstream = upstream

    def _check_task(self, task: TaskDict) -> None:
        translate.check(task, self.backend_type, self._radical)

    async def _launch(self, attempts: list[Attempt]) -> None:
        tasks = []
        for attempt in attempts:
            task = translate.upstream_task(attempt, self._radical)
            self._running[task["uid"]] = attempt
            tasks.append(task)
        try:
            await self._upstream.submit_tasks(tasks)
        except BaseException:
            for task in tasks:
                self._running.pop(task["uid"], None)
            raise

    async def _cancel(self, attempts: list[Attempt]) -> None:
        for attempt in attempts:
            uid = translate.upstream_uid(attempt)
            if uid not in self._running:
                continue  # it has just ended
            try:
                # Its CANCELED (or its end) comes by callback; if neither comes, the
                # engine's grace period ends the attempt.
                await self._upstream.cancel_task(uid)
            except Exception as error:  # Dragon: ValueError for a task it just finished
                logger.warning("The %s backend could not cancel %s: %r",
                               self.backend_type, uid, error)

    async def _shutdown(self) -> None:
        await self._upstream.shutdown()

    # ----------------------------------------------------------------- callbacks
    def _on_state(self, task: Any, state: Any) -> None:
        """Upstream's callback, on whichever thread upstream calls it."""
        mapping = isinstance(task, Mapping)
        uid = task.get("uid") if mapping else getattr(task, "uid", None)
        main = self._states.get(state) if isinstance(state, str) else None
        attempt = self._running.get(uid) if isinstance(uid, str) else None
        if attempt is None or main is None:
            return  # not ours (a raptor master), or a state between the main ones
        if main == "RUNNING":
            self._report(attempt, TaskState.EXECUTING)
            return
        if self._running.pop(uid, None) is None:
            return  # a second end (RADICAL-Pilot reports a failed pilot per task)
        result = task if mapping else {
            key: getattr(task, key, None)
            for key in ("return_value", "exit_code", "stdout", "stderr", "exception")}
        self._report(attempt, translate.outcome(main, result, is_function_task(attempt.task),
                                                self.backend_type))


def _state_names(upstream: Any) -> dict[str, str]:
    """Upstream state -> its main name (DONE, FAILED, CANCELED, RUNNING), from the backend's
    states map: a StateMapper, or Dragon's class of constants; upstream's names by default."""
    names = {name: name for name in _MAIN_STATES}
    with contextlib.suppress(Exception):
        states = upstream.get_task_states_map()
        for name in _MAIN_STATES:
            with contextlib.suppress(Exception):
                names[str(getattr(states, name))] = name
    return names


def adapt(upstream_class: type, name: str | None = None) -> type[UpstreamBackend]:
    """The engine backend class running `upstream_class` (one per class).

    Raises:
        ImportError: a module the upstream class needs is missing (says how to get it).
    """
    missing = catalogue.missing_dependency(upstream_class.__name__)
    if missing:
        raise ImportError(missing)
    adapted = _adapted.get(upstream_class)
    if adapted is None:
        path = f"{upstream_class.__module__}:{upstream_class.__qualname__}"
        backend_type = (catalogue.upstream_name(path) or name
                        or catalogue.PREFIX + upstream_class.__name__)
        adapted = type(f"Upstream{upstream_class.__name__}", (UpstreamBackend,), {
            "upstream_class": upstream_class, "backend_type": backend_type,
            "__module__": __name__, "__doc__": f"{path}, run by the engine.",
        })
        _adapted[upstream_class] = adapted
    return adapted


def is_upstream_class(candidate: Any) -> bool:
    """Whether `candidate` is a class written to upstream's contract (its BaseBackend).

    Looks only if upstream is already imported: such a class imported it."""
    base = sys.modules.get("rhapsody.backends.base")
    return (base is not None and inspect.isclass(candidate)
            and issubclass(candidate, base.BaseBackend))


def availability() -> tuple[bool, str]:
    """The registry's detail line for an upstream backend (its dependencies were checked
    when its class was resolved)."""
    version = catalogue.installed_version()
    if version is None:
        return False, f"{catalogue.DISTRIBUTION} is not installed: pip install " \
                      "'rhapsody-prefect[upstream]'"
    return True, f"{catalogue.DISTRIBUTION} {version}, through rhapsody_prefect's engine"


__all__ = ["UpstreamBackend", "adapt", "availability", "is_upstream_class"]
