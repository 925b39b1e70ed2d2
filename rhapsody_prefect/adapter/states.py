"""RHAPSODY TaskState -> Prefect state, as data, and the Prefect result of a finished task.

| RHAPSODY `TaskState` | Prefect state (type / name)   |
|----------------------|-------------------------------|
| NEW                  | PENDING / Pending             |
| WAITING              | PENDING / Pending             |
| READY                | PENDING / Pending             |
| EXECUTING            | RUNNING / Running             |
| COMPLETED            | COMPLETED / Completed         |
| FAILED               | FAILED / Failed               |
| RETRYING             | SCHEDULED / AwaitingRetry     |
| CANCELED             | CANCELLED / Cancelled         |

    >>> from rhapsody_prefect.adapter.states import to_prefect
    >>> to_prefect("RETRYING")
    (StateType.SCHEDULED, 'AwaitingRetry')

`await prefect_result(task_dict)` is the one place that turns a finished backend
task into what the Prefect engine records: the body's return value, an
`ExecutableResult`, the exception to raise, or a Cancelled / Crashed state.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import StateType
from prefect.states import State, exception_to_crashed_state

from ..core.constants import TaskState
from ..core.outcome import task_error
from ..core.tasks import TaskDict
from .executable import ExecutableResult, check_result

TASK_STATE_TO_PREFECT: dict[TaskState, tuple[StateType, str]] = {
    TaskState.NEW: (StateType.PENDING, "Pending"),
    TaskState.WAITING: (StateType.PENDING, "Pending"),
    TaskState.READY: (StateType.PENDING, "Pending"),
    TaskState.EXECUTING: (StateType.RUNNING, "Running"),
    TaskState.COMPLETED: (StateType.COMPLETED, "Completed"),
    TaskState.FAILED: (StateType.FAILED, "Failed"),
    TaskState.RETRYING: (StateType.SCHEDULED, "AwaitingRetry"),
    TaskState.CANCELED: (StateType.CANCELLED, "Cancelled"),
}


def to_prefect(state: TaskState | str) -> tuple[StateType, str]:
    """Prefect (state type, state name) for a RHAPSODY state."""
    return TASK_STATE_TO_PREFECT[TaskState(state)]


def prefect_state(state: TaskState | str, message: str) -> State[Any]:
    """The Prefect state the table gives for `state`, with `message`."""
    state_type, name = to_prefect(state)
    return State(type=state_type, name=name, message=message)


async def prefect_result(task: TaskDict) -> Any:
    """What the engine records for a finished backend task (raises the task's error)."""
    state = TaskState(task["state"])
    if state is TaskState.CANCELED:
        return prefect_state(state, f"Backend task {task['uid']} was cancelled")
    if task.get("executable") is not None and task.get("exit_code") is not None:
        result = ExecutableResult.of(task)
        return check_result(task, result)
    if state is TaskState.COMPLETED:
        return task.get("return_value")
    error = task.get("exception")
    if isinstance(error, BaseException) and not isinstance(error, Exception):
        # KeyboardInterrupt, SystemExit in the body: the body crashed, the loop must not.
        return await exception_to_crashed_state(error)
    if error is not None:
        raise error
    raise task_error(task)


__all__ = ["TASK_STATE_TO_PREFECT", "prefect_result", "prefect_state", "to_prefect"]
