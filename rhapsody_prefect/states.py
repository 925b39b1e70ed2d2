"""RHAPSODY TaskState <-> Prefect state, in both directions, as data.

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

    >>> from rhapsody_prefect.states import to_prefect, from_prefect
    >>> to_prefect("RETRYING")
    (<StateType.SCHEDULED: 'SCHEDULED'>, 'AwaitingRetry')
    >>> from_prefect("SCHEDULED", "AwaitingRetry")
    <TaskState.RETRYING: 'RETRYING'>

Prefect states with no RHAPSODY twin map to the nearest one: Scheduled ->
WAITING, Retrying (a RUNNING state) -> EXECUTING, Crashed -> FAILED,
Cancelling -> EXECUTING, Paused -> WAITING.
"""

from __future__ import annotations

from prefect.client.schemas.objects import StateType

from .constants import TaskState

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

#: Prefect state names that need more than their type to map back.
PREFECT_NAME_TO_TASK_STATE: dict[str, TaskState] = {
    "AwaitingRetry": TaskState.RETRYING,
    "Retrying": TaskState.EXECUTING,
}

PREFECT_TYPE_TO_TASK_STATE: dict[StateType, TaskState] = {
    StateType.SCHEDULED: TaskState.WAITING,
    StateType.PENDING: TaskState.WAITING,
    StateType.RUNNING: TaskState.EXECUTING,
    StateType.COMPLETED: TaskState.COMPLETED,
    StateType.FAILED: TaskState.FAILED,
    StateType.CANCELLED: TaskState.CANCELED,
    StateType.CRASHED: TaskState.FAILED,
    StateType.PAUSED: TaskState.WAITING,
    StateType.CANCELLING: TaskState.EXECUTING,
}


def to_prefect(state: TaskState | str) -> tuple[StateType, str]:
    """Prefect (state type, state name) for a RHAPSODY state."""
    return TASK_STATE_TO_PREFECT[TaskState(state)]


def from_prefect(state_type: StateType | str, name: str | None = None) -> TaskState:
    """RHAPSODY state for a Prefect state type (and name, for AwaitingRetry)."""
    if name in PREFECT_NAME_TO_TASK_STATE:
        return PREFECT_NAME_TO_TASK_STATE[name]
    return PREFECT_TYPE_TO_TASK_STATE[StateType(state_type)]


__all__ = [
    "PREFECT_NAME_TO_TASK_STATE",
    "PREFECT_TYPE_TO_TASK_STATE",
    "TASK_STATE_TO_PREFECT",
    "from_prefect",
    "to_prefect",
]
