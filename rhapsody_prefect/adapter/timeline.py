"""What a task run's log says of its backend task: transition lines and the body's own lines.

    states = BodyStates()                 # fed by the backend's state callback
    states.push(TaskState.EXECUTING)
    states.timeline()                     # 'queued 12:00:01.250, executing +0.004s, ...'
    lines = TransitionLines("dask", logging.INFO)
    lines.log(run_logger, uid, "finished", TaskState.COMPLETED, states.timeline())
    replay(run_logger, captured, uid)    # the body's lines, with their original times
    lines.waiting(run_logger, uid, backend)          # 'task ... waiting: ...; batch job 14 ...'
    listener = notice_listener("radical_pilot")      # a backend's notices -> this run's log
    backend.notices.subscribe(listener)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prefect.logging import get_run_logger

from ..core.constants import TaskState
from ..core.outcome import LogLine
from .states import to_prefect

#: The states the runner acts on and shows in a timeline; the waiting engine coroutine is
#: woken only for these (one wake-up costs a resume of Prefect's whole engine call chain).
NOTABLE = frozenset(
    {TaskState.EXECUTING, TaskState.RETRYING} | {s for s in TaskState if s.is_terminal}
)


class BodyStates:
    """The flow side of one backend task: its state changes, as they arrive."""

    def __init__(self) -> None:
        self.states: asyncio.Queue[TaskState] = asyncio.Queue()
        self.times: list[tuple[TaskState, float]] = []

    def push(self, state: TaskState) -> None:
        self.times.append((state, time.time()))
        if state in NOTABLE:  # NEW, WAITING, READY are only timestamped
            self.states.put_nowait(state)

    def timeline(self) -> str:
        """'queued 12:00:01.250, executing +0.004s, completed +0.120s'."""
        if not self.times:
            return ""
        start = self.times[0][1]
        parts = [f"queued {_clock(start)}"]
        for state, moment in self.times[1:]:
            if state in NOTABLE:
                parts.append(f"{state.value.lower()} +{moment - start:.3f}s")
        return ", ".join(parts)


class TransitionLines:
    """A line when a long body is executing (or retrying), one when it ends.

    The final line carries the whole timeline, so a short task costs one log line.
    """

    def __init__(self, backend_name: str, level: int | None) -> None:
        self.backend_name = backend_name
        self.level = level

    def log(
        self,
        run_logger: Any,
        uid: str,
        event: str,
        state: TaskState,
        timeline: str = "",
        at: float | None = None,
    ) -> None:
        if self.level is None:
            return
        _prefect_type, prefect_name = to_prefect(state)
        message = (
            f"Backend {self.backend_name!r} task {uid} {event}: RHAPSODY {state.value} "
            f"(Prefect {prefect_name}){f'; {timeline}' if timeline else ''}"
        )
        emit(run_logger, self.level, message, at, extra={
            "rhapsody_backend": self.backend_name, "rhapsody_uid": uid,
            "rhapsody_state": state.value,
        })

    def waiting(self, run_logger: Any, uid: str, backend: Any) -> None:
        """A line when the body was queued while the backend cannot start tasks yet.

        The reason is the backend's (`backend.notices.waiting`, e.g. a pilot whose batch
        job is still PENDING); the task run itself is Running in Prefect from here on.
        """
        reason = getattr(getattr(backend, "notices", None), "waiting", None)
        if reason:
            self.log(run_logger, uid, "waiting", TaskState.READY, reason)


def notice_listener(backend_name: str, run_logger: Any = None) -> Callable[[int, str], None]:
    """Send a backend's notices (`core.notices`) to a run's log, from any thread.

    `run_logger`: the run's logger; None: the current run's, so call it where the
    backend is created, inside the flow run (or task run) that uses it. The lines
    carry that run's id, so they reach its log from the backend's threads.
    """
    if run_logger is None:
        try:
            run_logger = get_run_logger()
        except Exception:  # no run context: Prefect's flow-run logger without a run id
            run_logger = logging.LoggerAdapter(logging.getLogger("prefect.flow_runs"), {})

    def listener(level: int, message: str) -> None:
        emit(run_logger, level, f"Backend {backend_name!r}: {message}",
             extra={"rhapsody_backend": backend_name})

    return listener


def replay(run_logger: Any, lines: Sequence[LogLine] | None, uid: str = "") -> None:
    """Emit the body's captured log lines as the task run's own, with their times.

    They arrive when the body ends, after lines logged meanwhile; one line first
    says so, so a console that prints in arrival order reads as a block.
    """
    if not lines:
        return
    first, last = lines[0].created, lines[-1].created
    emit(run_logger, logging.INFO,
         f"Body of {uid or 'this task'}: {len(lines)} line(s) it logged between "
         f"{_clock(first)} and {_clock(last)}, replayed with their original times:")
    for line in lines:
        emit(run_logger, line.levelno, line.message, line.created,
             extra={"rhapsody_replayed": True})


def _clock(moment: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(moment)) + f".{int(moment % 1 * 1000):03d}"


def emit(
    run_logger: Any,
    level: int,
    message: str,
    created: float | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Log `message` on the task run's logger, stamped `created` (default: now)."""
    target = run_logger.logger
    if not target.isEnabledFor(level):
        return
    record = target.makeRecord(
        target.name, level, "(backend)", 0, message, None, None,
        extra={**run_logger.extra, **(extra or {})},
    )
    if created is not None:
        record.created = created
        record.msecs = (created % 1) * 1000
    target.handle(record)


__all__ = ["NOTABLE", "BodyStates", "TransitionLines", "emit", "notice_listener", "replay"]
