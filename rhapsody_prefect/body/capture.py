"""Log capture around a Prefect task body, wherever it runs.

The Prefect engine stays in the flow process; only the body travels. So that
`get_run_logger()` and `print` (with `log_prints=True`) inside the body still
reach the task run's logs, a function task carries a `BodyContext` (its
`capture` key), and `capturing` gives the body a minimal task-run context and
collects the records and printed lines, which travel back in the attempt's
`Outcome.logs` for the flow side to replay (`body.calls.run_call` does both):

    with capturing(BodyContext(task_run=..., task_name="t")) as logs:
        fn(*args)
    logs                                # [LogLine(created, levelno, message), ...]

This module imports Prefect only when the body's process already has it loaded
(a body that calls `get_run_logger()` imports Prefect itself).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import io
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from ..core.outcome import LogLine

RUN_LOGGER_NAMES = ("prefect.task_runs", "prefect.flow_runs")


@dataclasses.dataclass(frozen=True)
class BodyContext:
    """What the body needs to know about its Prefect task run."""

    #: The TaskRun as plain data: unpickling a TaskRun model would import Prefect in
    #: every worker (RADICAL-Pilot's raptor forks a fresh process per function task).
    task_run: dict[str, Any]
    task_name: str
    log_prints: bool = False
    #: The flow side's level for run loggers; the body's loggers capture from it up.
    log_level: int = logging.INFO


_capture: contextvars.ContextVar[list[LogLine] | None] = contextvars.ContextVar(
    "rhapsody_log_capture", default=None
)
_print_capture: contextvars.ContextVar[_PrintBuffer | None] = contextvars.ContextVar(
    "rhapsody_print_capture", default=None
)
_install_lock = threading.Lock()
_filters_installed = False
_installed_for: set[tuple[bool, int]] = set()


class _CaptureFilter(logging.Filter):
    """On the run loggers: a record logged inside a captured body is kept for replay."""

    def filter(self, record: logging.LogRecord) -> bool:
        buffer = _capture.get()
        if buffer is None:
            return True
        buffer.append(LogLine(record.created, record.levelno, record.getMessage()))
        return False  # replayed on the flow side, once


class _PrintBuffer:
    def __init__(self, logs: list[LogLine]) -> None:
        self.logs = logs
        self.pending = io.StringIO()

    def write(self, text: str) -> None:
        self.pending.write(text)
        if text.endswith("\n"):
            self.flush()

    def flush(self) -> None:
        text = self.pending.getvalue().rstrip("\n")
        self.pending = io.StringIO()
        if text:
            self.logs.append(LogLine(time.time(), logging.INFO, text))


class _StdoutRouter(io.TextIOBase):
    """sys.stdout stand-in: writes from a capturing body go to its buffer, others pass."""

    def __init__(self, target: TextIO) -> None:
        self.target = target

    def write(self, text: str) -> int:
        buffer = _print_capture.get()
        if buffer is None:
            return self.target.write(text)
        buffer.write(text)
        return len(text)

    def flush(self) -> None:
        if _print_capture.get() is None:
            self.target.flush()

    def fileno(self) -> int:
        return self.target.fileno()

    def isatty(self) -> bool:
        return self.target.isatty()


def _install_capture_hooks(log_prints: bool, log_level: int) -> None:
    global _filters_installed
    if (log_prints, log_level) in _installed_for:  # once per combination and process
        return
    with _install_lock:
        for name in RUN_LOGGER_NAMES:
            run_logger = logging.getLogger(name)
            if not _filters_installed:
                run_logger.addFilter(_CaptureFilter())
            if run_logger.getEffectiveLevel() > log_level:
                # In a worker process Prefect's logging config is absent (root: WARNING).
                run_logger.setLevel(log_level)
        _filters_installed = True
        if log_prints and not isinstance(sys.stdout, _StdoutRouter):
            sys.stdout = _StdoutRouter(sys.stdout)
        _installed_for.add((log_prints, log_level))


@contextlib.contextmanager
def _task_run_context(context: BodyContext) -> Iterator[None]:
    """A minimal TaskRunContext so get_run_logger() works inside the body.

    Only where the body's process already has Prefect loaded: a worker that never
    imports Prefect does not pay for it.
    """
    if "prefect" not in sys.modules:
        yield
        return
    from .prefect_context import task_run_context

    with task_run_context(context.task_run, context.task_name, context.log_prints):
        yield


@contextlib.contextmanager
def capturing(context: BodyContext) -> Iterator[list[LogLine]]:
    """Capture the body's run-logger records (and its prints, with `log_prints`)."""
    logs: list[LogLine] = []
    _install_capture_hooks(context.log_prints, context.log_level)
    log_token = _capture.set(logs)
    printer = _PrintBuffer(logs) if context.log_prints else None
    print_token = _print_capture.set(printer)
    try:
        with _task_run_context(context):
            yield logs
    finally:
        if printer:
            printer.flush()
        _print_capture.reset(print_token)
        _capture.reset(log_token)


__all__ = ["BodyContext", "LogLine", "capturing"]
