"""RHAPSODY exception hierarchy.

Every error the library raises on purpose is a `RhapsodyError`; the subclasses say
which part went wrong and carry the fields a caller needs to react.

Example:
    >>> from rhapsody_prefect.exceptions import ConfigurationError
    >>> try:
    ...     raise ConfigurationError("ranks must be >= 1, got 0", config_key="ranks")
    ... except ConfigurationError as e:
    ...     print(e.config_key)
    ranks
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class RhapsodyError(Exception):
    """Base exception for RHAPSODY errors."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        self.message = message
        self.details = details or {}
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword fields across pickling (process, Dask and RP backends).
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[RhapsodyError], state: dict[str, Any]) -> RhapsodyError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class BackendError(RhapsodyError):
    """Exception for backend execution errors (start-up, lost workers, lost scheduler)."""

    def __init__(
        self, message: str, backend_type: str, details: dict[str, Any] | None = None
    ) -> None:
        self.backend_type = backend_type
        super().__init__(message, details)


class TaskError(RhapsodyError):
    """Exception for task execution errors."""

    def __init__(
        self,
        message: str,
        task_uid: str,
        exit_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.task_uid = task_uid
        self.exit_code = exit_code
        super().__init__(message, details)


class ConfigurationError(RhapsodyError):
    """Exception for configuration errors: a bad backend option or task key."""

    def __init__(
        self,
        message: str,
        config_key: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.config_key = config_key
        super().__init__(message, details)


def refuse_unknown_options(owner: str, unknown: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """ConfigurationError naming the first unknown option of `owner` and what is allowed.

        refuse_unknown_options("the concurrent backend", {"max_worker": 2}, ["max_workers"])
    """
    if unknown:
        names = sorted(unknown)
        raise ConfigurationError(
            f"Unknown option(s) {names} for {owner}; allowed: {', '.join(allowed)}",
            config_key=names[0],
        )


class WaitTimeoutError(RhapsodyError, TimeoutError):
    """`wait(timeout=...)` expired; `unfinished` lists the uids still running."""

    def __init__(self, message: str, unfinished: list[str]) -> None:
        self.unfinished = unfinished
        super().__init__(message, {"unfinished": unfinished})


__all__ = [
    "BackendError",
    "ConfigurationError",
    "RhapsodyError",
    "TaskError",
    "WaitTimeoutError",
    "refuse_unknown_options",
]
