"""One attempt of a task: what a backend launches, and what each of its reports names.

The engine creates an `Attempt` for every try of a task (the first run and each
retry), hands it to the backend's `_launch`, and alone decides whether a report
still counts: only the current attempt of a task, and only until its end is
decided. A report of a superseded attempt (a timed-out body that returned late, a
cancelled Dask future, a pilot's late callback) is dropped and counted:

    >>> from rhapsody_prefect.core.attempt import Attempt
    >>> attempt = Attempt({"uid": "t1"}, 2)
    >>> attempt
    Attempt('t1', 2)

    async def _launch(self, attempts):          # an ExecutionBackend subclass
        for attempt in attempts:
            self._report(attempt, TaskState.EXECUTING)
            self._report(attempt, Outcome.completed(run(attempt.task)))

Attempts compare by identity: a backend may key what it launched by the attempt.
`TaskRecord` is the engine's view of one task: its driver, its current attempt
and that attempt's pending end; `TaskRecord.take` is the one place a report is
accepted or dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from .constants import TaskState
from .outcome import Outcome
from .tasks import TaskDict

logger = logging.getLogger("rhapsody_prefect.backends")


@dataclasses.dataclass(eq=False, slots=True)
class Attempt:
    """One launch of a task's body."""

    task: TaskDict
    #: 1 for the first run, 2 for the first retry, ...
    number: int
    #: Cores this attempt holds in the engine's pool (0 once released).
    held_slots: int = 0
    #: The attempt ended for the task, but its body could not be stopped and still runs.
    left_running: bool = False

    @property
    def uid(self) -> str:
        return str(self.task["uid"])

    def __repr__(self) -> str:
        return f"Attempt({self.uid!r}, {self.number})"


@dataclasses.dataclass(eq=False)
class TaskRecord:
    """One submitted task, as the engine drives it."""

    task: TaskDict
    driver: asyncio.Task[None] | None = None
    #: The current attempt; its end is undecided while `outcome` is pending.
    attempt: Attempt | None = None
    outcome: asyncio.Future[Outcome] | None = None
    executing: bool = False
    failure_raised: bool = False

    def decides(self, attempt: Attempt) -> bool:
        """Whether a report of `attempt` still counts: the current one, end undecided."""
        return self.attempt is attempt and self.outcome is not None and not self.outcome.done()

    def take(self, attempt: Attempt, report: TaskState | Outcome) -> bool:
        """Apply a report of the current attempt (check `decides` first); True when it
        is the attempt's first EXECUTING, which the engine announces."""
        assert self.outcome is not None
        if isinstance(report, Outcome):
            self.outcome.set_result(report)
            return False
        first = not self.executing
        self.executing = True
        return first


class SupersededReports:
    """Counts the reports the engine dropped; logs the first at debug level."""

    def __init__(self, backend_type: str) -> None:
        self.backend_type = backend_type
        self.count = 0

    def drop(self, attempt: Attempt, report: TaskState | Outcome) -> bool:
        """Count a dropped report; True when it ends a body that could not be stopped
        (whose cores the engine then gives back)."""
        self.count += 1
        if self.count == 1:
            logger.debug("The %s backend drops reports of superseded attempts (first: %r, "
                         "%s); counted in superseded_reports", self.backend_type, attempt,
                         getattr(report, "state", report))
        if not (isinstance(report, Outcome) and attempt.left_running):
            return False
        attempt.left_running = False
        running = attempt.task.get("still_running") or []
        if attempt.number in running:
            running.remove(attempt.number)
        return True


__all__ = ["Attempt", "SupersededReports", "TaskRecord"]
