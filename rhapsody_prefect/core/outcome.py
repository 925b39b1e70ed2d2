"""The end of one attempt of a task, and the TaskError of a failed task.

    outcome = Outcome(TaskState.FAILED, exit_code=2, stderr="no such file")
    error = task_error({"uid": "t1", **outcome.results()})   # TaskError, exit code 2

A backend reports an outcome with `ExecutionBackend._report(uid, state, **results)`;
the engine writes its fields into the task dict.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .constants import TaskState
from .exceptions import TaskError
from .tasks import TaskDict

#: Characters of stderr/stdout kept in a TaskError's details.
OUTPUT_TAIL_CHARS = 2000


def tail(text: str | bytes | None, limit: int = OUTPUT_TAIL_CHARS) -> str:
    """The last `limit` characters of a command's output, decoded."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-limit:]


@dataclasses.dataclass
class Outcome:
    """The end of one attempt, as a backend reports it."""

    state: TaskState
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    return_value: Any = None
    exception: BaseException | None = None

    def results(self) -> dict[str, Any]:
        """The result fields, as written into the task dict."""
        return {field: getattr(self, field) for field in RESULT_FIELDS}


RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(Outcome) if f.name != "state")


def task_error(task: TaskDict, also_failed: list[str] | None = None) -> TaskError:
    """The TaskError describing a FAILED task dict."""
    uid = task["uid"]
    exit_code = task.get("exit_code")
    exception = task.get("exception")
    stderr = tail(task.get("stderr"))
    if exception is not None:
        reason = f"{type(exception).__name__}: {exception}"
    elif exit_code is not None:
        reason = f"exit code {exit_code}"
    else:
        reason = "unknown reason"
    message = f"Task '{uid}' failed: {reason}"
    if stderr.strip():
        message += f"\n--- stderr (tail) ---\n{stderr.rstrip()}"
    details: dict[str, Any] = {
        "stderr": stderr,
        "stdout": tail(task.get("stdout")),
        "exception": exception,
        "failed": also_failed or [uid],
    }
    return TaskError(message, task_uid=uid, exit_code=exit_code, details=details)


__all__ = ["OUTPUT_TAIL_CHARS", "RESULT_FIELDS", "Outcome", "tail", "task_error"]
