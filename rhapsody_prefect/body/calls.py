"""Calling a task's Python function wherever it runs: thread, process or remote worker.

    >>> from rhapsody_prefect.calls import call_function
    >>> async def double(x):
    ...     return 2 * x
    >>> call_function(double, (21,), {})
    42

Async functions (and functions returning an awaitable) run to completion on a
fresh event loop. Exceptions that cross a process boundary keep their remote
traceback as a note, and are replaced by a `RemoteError` when they cannot be
pickled.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle


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


__all__ = ["RemoteError", "call_function", "portable_exception"]
