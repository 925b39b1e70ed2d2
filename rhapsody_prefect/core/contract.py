"""The RHAPSODY backend contract: what every backend offers its callers.

`BaseExecutionBackend` is the contract: `submit_tasks`, `wait`, `terminate`,
`cancel_task`, `register_callback`, per-task state queries, async context
manager, awaitable. A user backend that defines only `submit_tasks`, `wait` and
`terminate` is a complete backend:

    class MyBackend(BaseExecutionBackend):
        async def submit_tasks(self, tasks): ...
        async def wait(self, timeout=None): ...
        async def terminate(self): ...

Built-in backends subclass `ExecutionBackend` (core/engine.py), which
implements the contract once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Generator
from typing import Any, ClassVar

from .constants import TaskState
from .exceptions import ConfigurationError
from .tasks import CallbackFunction, TaskDict

logger = logging.getLogger("rhapsody_prefect.backends")


class BaseExecutionBackend(ABC):
    """The RHAPSODY backend contract.

    Subclasses must implement `submit_tasks`, `wait` and `terminate`. Callbacks
    registered with `register_callback` are called as `fn(task_dict, state)`.
    """

    backend_type: ClassVar[str] = "custom"

    def __init__(self, **kwargs: Any) -> None:
        self._callbacks: list[CallbackFunction] = []
        self._task_dicts: dict[str, TaskDict] = {}

    @abstractmethod
    async def submit_tasks(self, tasks: list[TaskDict]) -> None:
        """Submit task dicts for execution; returns once they are accepted."""

    @abstractmethod
    async def wait(self, timeout: float | None = None) -> None:
        """Wait until every submitted task reached a terminal state."""

    @abstractmethod
    async def terminate(self) -> None:
        """Cancel what is left and release every resource the backend holds."""

    async def start(self) -> BaseExecutionBackend:
        """Start the backend (no-op unless a subclass needs it); returns self."""
        return self

    async def cancel_task(self, uid: str) -> bool:
        """Cancel one task; True if it was cancelled. Unsupported here: False."""
        return False

    def capacity_cores(self) -> int | None:
        """Cores the backend offers tasks now, for utilisation reports; None: not known.

        Default: the shared engine's `slots`. May ask a scheduler: call it off the loop.
        """
        slots = getattr(self, "slots", None)
        return slots if isinstance(slots, int) else None

    def placement(self) -> list[str]:
        """Where tasks run (hosts, workers, a pilot), for reports; default: the backend type.

        May ask a scheduler: call it off the loop.
        """
        return [str(self.backend_type)]

    def register_callback(self, fn: CallbackFunction) -> None:
        """Call `fn(task_dict, state)` on every task state change."""
        if not callable(fn):
            raise ConfigurationError(f"callback must be callable, got {fn!r}", "callback")
        self._callbacks.append(fn)

    def get_task(self, uid: str) -> TaskDict | None:
        return self._task_dicts.get(uid)

    def get_task_state(self, uid: str) -> TaskState | None:
        """The task's current state, or None for a uid this backend never saw."""
        task = self._task_dicts.get(uid)
        return None if task is None or "state" not in task else TaskState(task["state"])

    @property
    def tasks(self) -> dict[str, TaskDict]:
        """Every task dict submitted so far, by uid."""
        return dict(self._task_dicts)

    def _notify(self, task: TaskDict, state: TaskState) -> None:
        task["state"] = state
        for callback in self._callbacks:
            try:
                callback(task, state)
            except Exception:
                logger.exception("State callback %r failed for task %s", callback, task.get("uid"))

    async def __aenter__(self) -> BaseExecutionBackend:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.terminate()

    def __await__(self) -> Generator[Any, None, BaseExecutionBackend]:
        return self.start().__await__()


#: Alias used by the reference's examples.
BaseBackend = BaseExecutionBackend

__all__ = ["BaseBackend", "BaseExecutionBackend"]
