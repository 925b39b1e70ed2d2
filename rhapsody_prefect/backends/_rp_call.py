"""What a RADICAL-Pilot raptor worker runs for a RHAPSODY function task.

The client cloudpickles `(function, args, kwargs, cwd)` into a payload; the raptor
worker calls `run_payload(payload)`, which returns the outcome as a base64 string
(raptor moves results as JSON-safe values, so Python objects travel pickled):

    >>> import cloudpickle
    >>> from rhapsody_prefect.backends._rp_call import decode_result, run_payload
    >>> decode_result(run_payload(cloudpickle.dumps((max, (1, 2), {}, None))))
    (True, 2)

Kept free of heavy imports: a worker imports it once per task process.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from typing import Any

import cloudpickle

from ..calls import RemoteError, call_function, portable_exception


def encode_payload(function: Any, args: Any, kwargs: Any, cwd: str | None) -> bytes:
    """The payload `run_payload` expects (raises if something cannot be pickled)."""
    return cloudpickle.dumps((function, tuple(args), dict(kwargs), cwd))


def run_payload(payload: bytes) -> str:
    """Run a payload on the worker: `(True, value)` or `(False, exception)`, encoded."""
    try:
        function, args, kwargs, cwd = cloudpickle.loads(payload)
        if cwd:
            os.chdir(cwd)
        outcome: tuple[bool, Any] = (True, _call(function, args, kwargs))
    except BaseException as error:  # report everything, SystemExit included
        outcome = (False, portable_exception(error))
    try:
        data = cloudpickle.dumps(outcome)
    except Exception as error:
        failure = RemoteError(f"The task's return value could not be pickled: {error!r}")
        data = cloudpickle.dumps((False, failure))
    return base64.b64encode(data).decode("ascii")


def _call(function: Any, args: Any, kwargs: Any) -> Any:
    """`call_function`, off the raptor worker's own event loop when one is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call_function(function, args, kwargs)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call_function(function, args, kwargs)
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=target, name="rhapsody-call")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def decode_result(text: str) -> tuple[bool, Any]:
    """Client side: `(ok, value_or_exception)` from what `run_payload` returned."""
    ok, value = cloudpickle.loads(base64.b64decode(text))
    return bool(ok), value


__all__ = ["decode_result", "encode_payload", "run_payload"]
