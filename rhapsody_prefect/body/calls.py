"""Calling a task's Python function wherever it runs: thread, process or remote worker.

    >>> from rhapsody_prefect.body.calls import call_function, run_call
    >>> async def double(x):
    ...     return 2 * x
    >>> call_function(double, (21,), {})
    42
    >>> run_call(max, (1, 2), {}).return_value
    2
    >>> run_call(int, ("x",), {}).state
    <TaskState.FAILED: 'FAILED'>

`run_call` is what every place that runs a function body calls: it never
raises, captures the body's logs when the task carries a `capture` context,
and returns the attempt's `Outcome`. Async functions (and functions returning
an awaitable) run to completion on a fresh event loop. Exceptions keep their
traceback as a note ("Remote traceback"), and are replaced by a `RemoteError`
when they cannot be pickled, so the outcome can cross a process boundary.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle

from ..core.outcome import Outcome
from .capture import BodyContext, capturing


class RemoteError(Exception):
    """Stands in for an exception that could not be pickled back from a worker."""


def call_function(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """Call `fn(*args, **kwargs)`; run it on a new event loop if it is async."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_call(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    capture: BodyContext | None = None,
) -> Outcome:
    """Call `fn` (capturing its logs with a `capture` context); never raises: a
    BaseException, SystemExit included, becomes a FAILED outcome."""
    if capture is None:
        try:
            return Outcome.completed(call_function(fn, args, kwargs))
        except BaseException as error:
            return Outcome.failed(portable_exception(error))
    logs: list[Any] = []
    try:
        with capturing(capture) as logs:
            value = call_function(fn, args, kwargs)
    except BaseException as error:
        return Outcome.failed(portable_exception(error), tuple(logs))
    return Outcome.completed(value, tuple(logs))


def portable_exception(error: BaseException) -> BaseException:
    """`error` with its traceback as a note, made safe to pickle."""
    formatted = "".join(traceback.format_exception(error)).rstrip()
    note = f"Remote traceback:\n{formatted}"
    if note not in getattr(error, "__notes__", ()):
        error.add_note(note)
    try:
        cloudpickle.loads(cloudpickle.dumps(error))
    except Exception:
        replacement = RemoteError(f"{type(error).__name__}: {error}")
        replacement.add_note(note)
        return replacement
    return error


__all__ = ["RemoteError", "call_function", "portable_exception", "run_call"]
