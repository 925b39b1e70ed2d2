"""What a RADICAL-Pilot raptor worker runs for a RHAPSODY function task.

The client cloudpickles `(function, args, kwargs, cwd, cancel_marker, capture)`
into a payload; the raptor worker calls `run_payload(payload)` in a process it
forks for the task, which returns its `Outcome` as a base64 string (raptor moves
results as JSON-safe values, so Python objects travel pickled):

    >>> from rhapsody_prefect.body.raptor_call import decode_result, encode_payload, run_payload
    >>> decode_result(run_payload(encode_payload(max, (1, 2), {}, None))).return_value
    2

Raptor cannot cancel a function task, so the client cancels it itself: it creates
the task's `cancel_marker` file (a task that has not started yet then returns at
once) and sends SIGTERM to the pid the task wrote to `<marker>.pid` (the call is
interrupted, and the worker gets a result and frees the task's cores).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import threading
from typing import Any

import cloudpickle

from ..core.outcome import Outcome
from .calls import RemoteError, portable_exception, run_call


class TaskCancelled(BaseException):
    """Raised inside a function task's process when the client cancels it."""


def encode_payload(
    function: Any, args: Any, kwargs: Any, cwd: str | None, cancel_marker: str | None = None,
    capture: Any = None,
) -> bytes:
    """The payload `run_payload` expects (raises if something cannot be pickled)."""
    return cloudpickle.dumps((function, tuple(args), dict(kwargs), cwd, cancel_marker, capture))


def _on_sigterm(signum: int, frame: Any) -> None:
    raise TaskCancelled("cancelled by the client")


def run_payload(payload: bytes) -> str:
    """Run a payload on the worker; its `Outcome`, pickled and base64-encoded.

    With a cancel marker, SIGTERM interrupts the call: the handler is installed
    (and announced in `<marker>.pid`) before the marker is checked, and replaced by
    SIG_IGN before the result is encoded, so a cancel never kills the process
    without a result (raptor would then never free the task's cores).
    """
    installed = False
    try:
        try:
            function, args, kwargs, cwd, cancel_marker, capture = cloudpickle.loads(payload)
            if cancel_marker and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _on_sigterm)
                installed = True
                with contextlib.suppress(OSError), open(f"{cancel_marker}.pid", "w") as pid:
                    pid.write(str(os.getpid()))
            if cancel_marker and os.path.exists(cancel_marker):
                raise TaskCancelled("cancelled before it started")
            if cwd:
                os.chdir(cwd)
            outcome = _call(function, args, kwargs, capture)
        finally:
            if installed:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except BaseException as error:  # report everything, SystemExit included
        outcome = Outcome.failed(portable_exception(error))
    try:
        data = cloudpickle.dumps(outcome)
    except Exception as error:
        failure = RemoteError(f"The task's return value could not be pickled: {error!r}")
        data = cloudpickle.dumps(Outcome.failed(failure, outcome.logs))
    return base64.b64encode(data).decode("ascii")


def _call(function: Any, args: Any, kwargs: Any, capture: Any) -> Outcome:
    """`run_call`, off the raptor worker's own event loop when one is running.

    The call then runs in a daemon thread: the task's process can return (and
    exit) when SIGTERM interrupts the wait, even if the call does not stop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_call(function, args, kwargs, capture)
    box: list[Outcome] = []
    done = threading.Event()

    def target() -> None:
        try:
            box.append(run_call(function, args, kwargs, capture))
        finally:
            done.set()

    threading.Thread(target=target, name="rhapsody-call", daemon=True).start()
    while not done.wait(0.5):  # short waits: a signal handler gets to run
        pass
    return box[0]


def decode_result(text: str) -> Outcome:
    """Client side: the `Outcome` `run_payload` returned."""
    outcome = cloudpickle.loads(base64.b64decode(text))
    if not isinstance(outcome, Outcome):
        raise TypeError(f"expected an Outcome, got {type(outcome).__name__}")
    return outcome


__all__ = ["TaskCancelled", "decode_result", "encode_payload", "run_payload"]
