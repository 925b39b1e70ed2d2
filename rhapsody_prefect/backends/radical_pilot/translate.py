"""Translation between RHAPSODY tasks and RADICAL-Pilot: states, descriptions, results.

    description = executable_description(task, rp_uid="rh.000001")
    state = RP_TO_TASK_STATE[rp_task.state]                  # AGENT_EXECUTING -> EXECUTING
    outcome = task_outcome(rp_task, TaskState.COMPLETED, task, output_copy=None,
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
from ...body.output import policy_of, read_file_output
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


def client_path(url: Any) -> Path | None:
    """The local path of an RP sandbox URL this side can read (file:// on this host)."""
    with contextlib.suppress(Exception):
        parsed = ru.Url(str(url))
        if parsed.schema in ("file", "local") and parsed.host in (None, "", "localhost"):
            return Path(parsed.path)
    return None


def staging_directives(
    task: TaskDict, rp_uid: str, output_copy: Path | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """RP input and output staging for the task's files (client <-> task sandbox, done by
    RP's task manager: no shared file system needed), and for its stdout/stderr when
    this side cannot read the sandbox (`output_copy`: where they are staged back)."""
    inputs = [{"source": f"file://localhost{source}", "target": f"task:///{name}",
               "action": rp.TRANSFER} for source, name in task.get("input_files") or ()]
    outputs = [{"source": f"task:///{name}", "target": f"file://localhost{target}",
                "action": rp.TRANSFER} for name, target in task.get("output_files") or ()]
    if output_copy is not None:
        outputs += [{"source": f"task:///{rp_uid}.{suffix}",
                     "target": f"file://localhost{output_copy / f'{rp_uid}.{suffix}'}",
                     "action": rp.TRANSFER} for suffix in ("out", "err")]
    return inputs, outputs


def executable_description(task: TaskDict, rp_uid: str, output_copy: Path | None = None) -> Any:
    """The RP TaskDescription of an executable task (`output_copy`: see staging_directives)."""
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
    inputs, outputs = staging_directives(task, rp_uid, output_copy)
    if inputs:
        values["input_staging"] = inputs
    if outputs:
        values["output_staging"] = outputs
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
    rp_task: Any, state: TaskState, task: TaskDict, output_copy: Path | None,
    lost: Callable[[], BackendError],
) -> Outcome:
    """The outcome of a finished RP task; `lost()` says why RP lost it."""
    if state is TaskState.CANCELED:
        return Outcome.canceled()
    function = rp_task.mode == rp.TASK_FUNCTION
    output: dict[str, Any] = {}
    for suffix, stream in (("out", "stdout"), ("err", "stderr")):
        output[stream], output[f"{stream}_file"] = full_output(
            rp_task, suffix, getattr(rp_task, stream), task, output_copy)
    if not function:
        if state is TaskState.COMPLETED:
            # RP's staging skips an output the command did not write: checked here
            outputs = task.get("output_files") or ()
            staged = tuple(target for _, target in outputs if Path(target).exists())
            missing = [name for name, target in outputs if not Path(target).exists()]
            if missing and not task.get("allow_missing_outputs"):
                return Outcome(TaskState.FAILED, exit_code=rp_task.exit_code,
                               staged_outputs=staged, exception=FileNotFoundError(
                                   f"Task '{task['uid']}': output file(s) {missing} not "
                                   "written in its sandbox (allow_missing_outputs=True "
                                   "accepts that)"), **output)
            return Outcome(state, exit_code=rp_task.exit_code, staged_outputs=staged, **output)
        if rp_task.exit_code == 0 and task.get("output_files"):
            # exit 0, yet FAILED: RP's output staging (an output the command did not write)
            return Outcome(TaskState.FAILED, exit_code=0, exception=FileNotFoundError(
                f"Task '{task['uid']}': copying its output_files "
                f"{[name for name, _ in task['output_files']]} back failed: "
                f"{rp_task.exception or 'RADICAL-Pilot gave no reason'}"), **output)
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


def full_output(
    rp_task: Any, suffix: str, fallback: str | None, task: TaskDict, output_copy: Path | None
) -> tuple[str, str | None]:
    """A stream of an executable task under the output policy (`body/output.py`): read
    from the task sandbox when this side sees it, else from the copy RP staged back;
    RP's own attribute (its last 1,024 characters) only when neither exists."""
    if rp_task.mode == rp.TASK_EXECUTABLE:
        sandbox = client_path(rp_task.sandbox)
        places = [sandbox] if sandbox is not None else []
        if output_copy is not None:
            places.append(output_copy)
        limit, keep_dir = policy_of(task)
        for place in places:
            path = place / f"{rp_task.uid}.{suffix}"
            with contextlib.suppress(OSError):
                if path.is_file():
                    stream = "stdout" if suffix == "out" else "stderr"
                    return read_file_output(path, limit, keep_dir, f"{task['uid']}.{stream}")
    return fallback or "", None


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
