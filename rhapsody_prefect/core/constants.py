"""Task states, backend names and defaults of the RHAPSODY API.

States are `str` enums, so they compare equal to their plain names:

    >>> from rhapsody_prefect.core.constants import TaskState
    >>> TaskState.COMPLETED == "COMPLETED"
    True
    >>> TaskState.COMPLETED.is_terminal
    True
"""

from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    NEW = "NEW"
    WAITING = "WAITING"
    READY = "READY"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED})


class BackendType:
    CONCURRENT = "concurrent"
    DASK = "dask"
    RADICAL_PILOT = "radical_pilot"


class Defaults:
    BACKEND_TYPE = BackendType.CONCURRENT
    MAX_WORKERS = 4
    RETRY_ATTEMPTS = 0
    RETRY_DELAY = 1.0
    TIMEOUT = None
    #: Bytes of a command's stdout (and of its stderr) kept whole in its result.
    OUTPUT_LIMIT = 1 << 20


__all__ = ["TERMINAL_STATES", "BackendType", "Defaults", "TaskState"]
