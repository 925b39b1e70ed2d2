"""What a Dask worker runs for a RHAPSODY task: the function or the command, to an Outcome.

    payloads = [cloudpickle.dumps(payload_of(task)) for task in tasks]
    futures = client.map(run_on_worker, payloads, [topic] * len(keys), keys,
                         key=keys, pure=False)   # a batch: one graph update
    outcome = futures[0].result()      # core.outcome.Outcome: COMPLETED / FAILED / CANCELED

A command polls, while it runs, whether Dask cancelled its key or the worker is
closing, and then kills its process group (`commands.run_command(stop=...)`).
If the worker process dies (SIGKILL, OOM, its nanny or the flow process gone),
the worker's watchdog (`core/guard.py`, one per worker process) ends the command's
process group.
The worker announces the start on the client's event topic.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any

import cloudpickle
import distributed
from distributed.core import Status

from ..core.guard import Guard
from ..core.outcome import Outcome
from ..core.tasks import is_function_task
from .calls import portable_exception, run_call
from .commands import CommandStopped, run_command

#: Command keys shipped to the worker for an executable task.
COMMAND_KEYS = ("uid", "executable", "arguments", "shell", "ranks", "pre_exec", "environment",
                "cwd", "output_limit", "output_dir", "input_files", "output_files",
                "allow_missing_outputs", "output_exists")

_guard: Guard | None = None
_guard_lock = threading.Lock()


def worker_guard() -> Guard:
    """This worker process's guard (started with its first command, never closed)."""
    global _guard
    with _guard_lock:
        if _guard is None:
            _guard = Guard("dask worker")
        return _guard


def payload_of(task: Mapping[str, Any]) -> tuple[str, Any]:
    """What travels to the worker: the call, or the command keys."""
    if is_function_task(task):
        return "function", (task["function"], task["args"], task["kwargs"], task.get("capture"))
    return "command", {key: task.get(key) for key in COMMAND_KEYS}


def run_on_worker(payload: bytes, topic: str | None, key: str) -> Outcome:
    """Runs in a Dask worker thread; never raises (the outcome travels as data)."""
    worker = _current_worker()
    if worker is not None and topic:
        with contextlib.suppress(Exception):
            worker.log_event(topic, key)
    try:
        kind, body = cloudpickle.loads(payload)
        if kind == "function":
            return run_call(*body)
        return run_command(body, stop=lambda: _stop_requested(worker, key), guard=worker_guard())
    except CommandStopped:
        return Outcome.canceled()
    except BaseException as error:  # never let a BaseException escape a worker
        return Outcome.failed(portable_exception(error))


def _current_worker() -> distributed.Worker | None:
    try:
        return distributed.get_worker()
    except ValueError:
        return None


def _stop_requested(worker: distributed.Worker | None, key: str) -> bool:
    """True once the task was cancelled, or the worker is shutting down."""
    if worker is None:
        return False
    if worker.status in (Status.closing, Status.closed, Status.failed):
        return True
    task = worker.state.tasks.get(key)
    return task is None or task.state in ("cancelled", "released", "forgotten")


__all__ = ["COMMAND_KEYS", "payload_of", "run_on_worker"]
