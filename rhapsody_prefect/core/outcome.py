"""How a body ended: the one result every backend reports, and the TaskError of a failed task.

An `Outcome` is built where the body ran (a thread, a worker process, a Dask worker,
a raptor worker, or the backend itself when the body never ran), travels back as
data, and is reported once, with the attempt it ends:

    >>> from rhapsody_prefect.core.outcome import Outcome
    >>> Outcome.command(2, "", "no such file").state
    <TaskState.FAILED: 'FAILED'>
    >>> Outcome.completed(42).results()["return_value"]
    42

    backend._report(attempt, Outcome.completed(42))    # ExecutionBackend, any thread

The engine writes `results()` into the task dict: `return_value`, `exception`,
`exit_code`, `stdout`, `stderr`, `stdout_file` / `stderr_file` (a stream longer than
the task's `output_limit`, kept whole in a file: `body/output.py`), and `logs` (the
run-logger records and prints a function body captured, `LogLine`s, for the
submitting side to replay).
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


@dataclasses.dataclass(frozen=True, slots=True)
class LogLine:
    """One log record or printed line a body produced, reduced to what is replayed."""

    created: float
    levelno: int
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt: a terminal state and what the body left."""

    state: TaskState
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    return_value: Any = None
    exception: BaseException | None = None
    logs: tuple[LogLine, ...] = ()
    #: Where a stream longer than the task's `output_limit` is kept whole (else None).
    stdout_file: str | None = None
    stderr_file: str | None = None
    #: Where the command's `output_files` were copied (`body/staging.py`).
    staged_outputs: tuple[str, ...] = ()

    @classmethod
    def completed(cls, value: Any, logs: tuple[LogLine, ...] = ()) -> Outcome:
        """A function that returned `value`."""
        return cls(TaskState.COMPLETED, return_value=value, logs=logs)

    @classmethod
    def failed(cls, error: BaseException, logs: tuple[LogLine, ...] = ()) -> Outcome:
        """A body that raised `error` (made portable where it ran), or never ran."""
        return cls(TaskState.FAILED, exception=error, logs=logs)

    @classmethod
    def command(
        cls, exit_code: int, stdout: str, stderr: str,
        stdout_file: str | None = None, stderr_file: str | None = None,
    ) -> Outcome:
        """A command that exited: COMPLETED with exit code 0, else FAILED."""
        state = TaskState.COMPLETED if exit_code == 0 else TaskState.FAILED
        return cls(state, exit_code=exit_code, stdout=stdout, stderr=stderr,
                   stdout_file=stdout_file, stderr_file=stderr_file)

    @classmethod
    def canceled(cls) -> Outcome:
        """The body was stopped before it ended."""
        return cls(TaskState.CANCELED)

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


__all__ = ["OUTPUT_TAIL_CHARS", "RESULT_FIELDS", "LogLine", "Outcome", "tail", "task_error"]
