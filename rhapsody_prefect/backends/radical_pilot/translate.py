"""Translation between RHAPSODY tasks and RADICAL-Pilot: states, descriptions, results.

    description = executable_description(task, rp_uid="rh.000001")
    state = RP_TO_TASK_STATE[rp_task.state]                  # AGENT_EXECUTING -> EXECUTING
    outcome = task_outcome(rp_task, TaskState.COMPLETED, function=False, local=True,
                           lost=lambda: error)          # core.outcome.Outcome

RADICAL-Pilot's task states map onto TaskState here, once; the backend reports
only EXECUTING and the terminal states (the engine announces NEW, WAITING, READY).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import pickle
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...body import raptor_call
from ...core.constants import TaskState
from ...core.exceptions import BackendError
from ...core.outcome import Outcome
from ...core.tasks import TaskDict
from .rp_import import rp, ru

BACKEND_TYPE = "radical_pilot"

#: RADICAL-Pilot task states -> RHAPSODY TaskState (the one place they are mapped).
#: The backend reports only EXECUTING and the terminal states; the base class
#: announces NEW, WAITING and READY itself.
RP_TO_TASK_STATE: dict[str, TaskState] = {
    rp.NEW: TaskState.READY,
    rp.TMGR_SCHEDULING_PENDING: TaskState.READY,
    rp.TMGR_SCHEDULING: TaskState.READY,
    rp.TMGR_STAGING_INPUT_PENDING: TaskState.READY,
    rp.TMGR_STAGING_INPUT: TaskState.READY,
    rp.AGENT_STAGING_INPUT_PENDING: TaskState.READY,
    rp.AGENT_STAGING_INPUT: TaskState.READY,
    rp.AGENT_SCHEDULING_PENDING: TaskState.READY,
    rp.AGENT_SCHEDULING: TaskState.READY,
    rp.AGENT_EXECUTING_PENDING: TaskState.READY,
    rp.AGENT_EXECUTING: TaskState.EXECUTING,
    rp.AGENT_STAGING_OUTPUT_PENDING: TaskState.EXECUTING,
    rp.AGENT_STAGING_OUTPUT: TaskState.EXECUTING,
    rp.TMGR_STAGING_OUTPUT_PENDING: TaskState.EXECUTING,
    rp.TMGR_STAGING_OUTPUT: TaskState.EXECUTING,
    rp.DONE: TaskState.COMPLETED,
    rp.FAILED: TaskState.FAILED,
    rp.CANCELED: TaskState.CANCELED,
}

#: TaskDescription keys `backend_kwargs` may not override (the backend owns them).
MANAGED_TASK_KEYS = frozenset({
    "uid", "name", "mode", "executable", "arguments", "function", "args", "kwargs",
    "method", "code", "command", "raptor_id", "scheduler", "raptor_class", "raptor_file",
    "worker_class", "worker_file", "ranks", "cores_per_rank", "gpus_per_rank",
    "cpu_processes", "cpu_threads", "gpu_processes", "environment", "pre_exec", "pilot",
})


def executable_description(task: TaskDict, rp_uid: str) -> Any:
    """The RP TaskDescription of an executable task."""
    executable, arguments = task["executable"], list(task["arguments"])
    if task["shell"]:
        command = " ".join([executable, *map(shlex.quote, arguments)])
        executable, arguments = "/bin/sh", ["-c", command]
    pre_exec = list(task["pre_exec"])
    if task.get("cwd"):
        pre_exec.insert(0, f"cd {shlex.quote(task['cwd'])}")
    values: dict[str, Any] = {
        "uid": rp_uid,
        "name": task["uid"],
        "mode": rp.TASK_EXECUTABLE,
        # RP puts arguments in double quotes, so its shell would expand `$X` and
        # `$(...)` in them; the quoted command line keeps argv literal instead.
        "executable": shlex.join([executable, *arguments]),
        "arguments": [],
        "ranks": task["ranks"],
        "cores_per_rank": task["cores_per_rank"],
        "gpus_per_rank": task["gpus_per_rank"],
        "environment": dict(task["environment"]),
        "pre_exec": pre_exec,
    }
    values.update(task.get("backend_kwargs") or {})
    return rp.TaskDescription(values)


def function_description(task: TaskDict, rp_uid: str, cancel_marker: str | None) -> Any:
    """The RP TaskDescription of a function task (runs `raptor_call.run_payload`)."""
    payload = raptor_call.encode_payload(
        task["function"], task["args"], task["kwargs"], task.get("cwd"), cancel_marker,
        task.get("capture"),
    )
    # The serialized form raptor's PythonTask uses: the call runs `run_payload`.
    wrapped = {"func": pickle.dumps(raptor_call.run_payload), "args": (payload,), "kwargs": {}}
    values: dict[str, Any] = {
        "uid": rp_uid,
        "name": task["uid"],
        "mode": rp.TASK_FUNCTION,
        "function": base64.b64encode(pickle.dumps(wrapped)).decode("ascii"),
        "ranks": 1,
        "cores_per_rank": task["cores_per_rank"],
        "gpus_per_rank": task["gpus_per_rank"],
        "environment": dict(task["environment"]),
    }
    values.update(task.get("backend_kwargs") or {})
    return rp.TaskDescription(values)


def task_outcome(
    rp_task: Any, state: TaskState, function: bool, local: bool,
    lost: Callable[[], BackendError],
) -> Outcome:
    """The outcome of a finished RP task; `lost()` says why RP lost it."""
    if state is TaskState.CANCELED:
        return Outcome.canceled()
    output = {"stdout": full_output(rp_task, "out", rp_task.stdout, local),
              "stderr": full_output(rp_task, "err", rp_task.stderr, local)}
    if not function:
        if state is TaskState.COMPLETED:
            return Outcome(state, exit_code=rp_task.exit_code, **output)
        if rp_task.exit_code not in (None, 0):  # the exit code says enough
            return Outcome(TaskState.FAILED, exit_code=rp_task.exit_code, **output)
        output["exit_code"] = rp_task.exit_code
    elif state is TaskState.COMPLETED and isinstance(rp_task.return_value, str):
        try:
            outcome = raptor_call.decode_result(rp_task.return_value)
        except Exception as error:
            outcome = Outcome.failed(BackendError(
                f"Could not unpickle the result of {rp_task.uid}: {error!r}", BACKEND_TYPE))
        return dataclasses.replace(outcome, **output)
    # FAILED (or a function without a result): RP lost the task (pilot, worker).
    return Outcome(TaskState.FAILED, exception=lost(), **output)


def full_output(rp_task: Any, suffix: str, fallback: str | None, local: bool) -> str:
    """RP keeps the last 1024 chars; read the whole file from a local sandbox."""
    if local and rp_task.mode == rp.TASK_EXECUTABLE:
        with contextlib.suppress(Exception):
            sandbox = ru.Url(rp_task.sandbox).path
            path = Path(sandbox) / f"{rp_task.uid}.{suffix}"
            if path.is_file():
                return path.read_text(errors="replace")
    return fallback or ""


def rp_task_error(rp_task: Any) -> BackendError:
    """RP failed this task for a reason of its own (not the pilot's)."""
    return BackendError(
        f"RADICAL-Pilot failed task {rp_task.uid} ({rp_task.name}): "
        f"{rp_task.exception or 'no reason given'}",
        BACKEND_TYPE,
        details={"rp_uid": rp_task.uid, "exception_detail": rp_task.exception_detail},
    )


__all__ = [
    "BACKEND_TYPE",
    "MANAGED_TASK_KEYS",
    "RP_TO_TASK_STATE",
    "executable_description",
    "full_output",
    "function_description",
    "rp_task_error",
    "task_outcome",
]
