"""The shared engine: the RHAPSODY contract implemented once for every built-in backend.

`ExecutionBackend` does validation, uids, state bookkeeping and callbacks in order
(NEW -> WAITING -> READY -> EXECUTING -> COMPLETED | FAILED | CANCELED, with
RETRYING between attempts), slot accounting, per-task timeouts, retries,
cancellation, `wait`, and the end of a broken backend. A backend subclass
implements only how to start, launch, cancel and shut down:

    class EchoBackend(ExecutionBackend):
        backend_type = "echo"

        async def _launch(self, attempts):
            for attempt in attempts:
                self._report(attempt, TaskState.EXECUTING)
                self._report(attempt, Outcome.completed(attempt.task["args"]))

    async with EchoBackend() as backend:
        await backend.submit_tasks([{"function": print, "args": ("hi",)}])
        await backend.wait()

The engine owns attempts (`core/attempt.py`): each launch is an `Attempt`, each
report names it, and only the current attempt of a task, until its end is
decided, can move the task; reports of superseded attempts are dropped and
counted (`superseded_reports`). `_report`, `_report_unstoppable` and `_break`
are thread-safe: call them from any thread (a Dask or RADICAL-Pilot callback
thread); they only schedule work on the backend's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

from .attempt import Attempt, SupersededReports, TaskRecord
from .capacity import Capacity
from .constants import TaskState
from .contract import BaseExecutionBackend
from .exceptions import BackendError, ConfigurationError, WaitTimeoutError
from .guard import Guard
from .outcome import Outcome, task_error
from .scheduling import Batcher, Inbox, SlotPool
from .tasks import TaskDict, retry_delay, task_slots, validate_task

logger = logging.getLogger("rhapsody_prefect.backends")

#: Seconds a backend gets to confirm a cancel before the task is marked CANCELED anyway.
CANCEL_GRACE_SECONDS = 10.0
CLOSE_WAIT_SECONDS = 10.0  # for the watchdog to exit after terminate() (slow when loaded)


class ExecutionBackend(BaseExecutionBackend):
    """Shared implementation of the contract; built-in backends subclass this.

    Hooks: `_start`, `_launch`, `_cancel`, `_shutdown`, `_check_task`, `_capacity`, `slots`
    (total cores, or None when the backend schedules by itself). Report with
    `_report(attempt, TaskState.EXECUTING | Outcome)` from any thread; register what must
    end if this process dies with `self._guard` (`core/guard.py`).
    """

    #: Total cores the backend offers; tasks wait for free slots. None: no limit here.
    slots: int | None = None
    #: Seconds launches are collected for one `_launch` (for a costly submit call); 0: a tick.
    launch_batch_delay: float = 0.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._records: dict[str, TaskRecord] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_task: asyncio.Future[None] | None = None
        self._started = False
        self._terminated = False
        self._broken: BackendError | None = None
        self._slot_pool: SlotPool | None = None
        self._launcher = Batcher(self._flush_launch, self.launch_batch_delay)
        self._canceller = Batcher(self._flush_cancel)
        self._inbox = Inbox()  # reports from other threads, applied on the loop
        self._guard = Guard(str(self.backend_type))  # its watchdog starts on first use
        self._superseded = SupersededReports(str(self.backend_type))

    # ----------------------------------------------------------- subclass hooks
    async def _start(self) -> None:
        """Acquire resources (cluster, pilot, pool). Runs once, on the backend loop."""

    @abstractmethod
    async def _launch(self, attempts: list[Attempt]) -> None:
        """Start these attempts (`attempt.task` is validated); report with `_report`."""

    async def _cancel(self, attempts: list[Attempt]) -> None:
        """Ask the backend to stop these launched attempts; report CANCELED when it did
        (`_report_unstoppable` when a body cannot be stopped)."""

    async def _shutdown(self) -> None:
        """Release everything `_start` acquired."""

    def _check_task(self, task: TaskDict) -> None:
        """Backend-specific validation; raise ConfigurationError naming the key."""

    def _capacity(self, task: TaskDict) -> Capacity:
        """The most this task may use here (default: `slots` cores)."""
        return Capacity(cores=self.slots, where=f"the {self.backend_type} backend")

    # ----------------------------------------------------------------- contract
    async def start(self) -> ExecutionBackend:
        loop = self._bind_loop()
        if self._terminated:
            raise BackendError(f"The {self.backend_type} backend was terminated", self.backend_type)
        if self._start_task is None:
            self._start_task = loop.create_task(self._start_once())
        await asyncio.shield(self._start_task)
        return self

    async def _start_once(self) -> None:
        try:
            await self._start()
        except (ConfigurationError, BackendError):
            raise
        except Exception as error:
            raise BackendError(
                f"The {self.backend_type} backend could not start: {error!r}",
                self.backend_type,
            ) from error
        if self.slots is not None:
            self._slot_pool = SlotPool(self.slots)
        self._started = True

    async def submit_tasks(self, tasks: Iterable[TaskDict]) -> None:
        """Validate every task, then start it; nothing starts if any task is invalid.

        Raises:
            ConfigurationError: a task is invalid, its uid is taken, or it needs more
                cores than the backend has.
        """
        tasks = list(tasks)
        seen: set[str] = set()
        for task in tasks:
            validate_task(task)
            uid = task["uid"]
            if uid in self._records or uid in seen:
                raise ConfigurationError(
                    f"Task uid '{uid}' is already used; uids must be unique per backend",
                    config_key="uid",
                )
            seen.add(uid)
        await self.start()
        for task in tasks:
            self._check_task(task)
            self._capacity(task).check(task)
        loop = self._bind_loop()
        for task in tasks:
            record = TaskRecord(task)
            self._records[task["uid"]] = record
            self._task_dicts[task["uid"]] = task
            self._notify(task, TaskState.NEW)
            record.driver = loop.create_task(self._drive(record))
            record.driver.add_done_callback(functools.partial(self._driver_done, record))

    async def wait(self, timeout: float | None = None) -> None:
        """Wait for every submitted task; raise TaskError for a task that failed.

        Raises:
            WaitTimeoutError: `timeout` seconds passed; lists the unfinished uids.
            TaskError: a task failed (first failed one; `details['failed']` lists all).
        """
        drivers = [r.driver for r in self._records.values() if r.driver and not r.driver.done()]
        if drivers:
            _, pending = await asyncio.wait(drivers, timeout=timeout)
            if pending:
                unfinished = [r.task["uid"] for r in self._records.values() if r.driver in pending]
                raise WaitTimeoutError(
                    f"{len(unfinished)} task(s) unfinished after {timeout}s: "
                    f"{unfinished[:20]}{' ...' if len(unfinished) > 20 else ''}",
                    unfinished,
                )
        failed = [r for r in self._records.values()
                  if r.task.get("state") == TaskState.FAILED and not r.failure_raised]
        for record in failed:
            record.failure_raised = True
        if failed:
            raise task_error(failed[0].task, also_failed=[r.task["uid"] for r in failed])

    async def cancel_task(self, uid: str) -> bool:
        """Cancel a queued or running task; True if it ended CANCELED."""
        record = self._records.get(uid)
        if record is None:
            raise ConfigurationError(f"Unknown task uid '{uid}'", config_key="uid")
        if record.driver is None or record.driver.done():
            return False
        record.driver.cancel()
        await asyncio.wait([record.driver])
        return record.task.get("state") == TaskState.CANCELED

    async def terminate(self) -> None:
        """Cancel every unfinished task, then release the backend's resources."""
        if self._terminated:
            return
        self._terminated = True
        drivers = [r.driver for r in self._records.values() if r.driver and not r.driver.done()]
        for driver in drivers:
            driver.cancel()
        if drivers:
            await asyncio.wait(drivers)
        if self._start_task is not None:
            with contextlib.suppress(BaseException):
                await self._start_task
        clean = False
        try:
            if self._started:
                await self._shutdown()
            clean = True
        finally:  # after a failed _shutdown the watchdog ends what is still registered
            await asyncio.to_thread(self._guard.close, clean, CLOSE_WAIT_SECONDS)

    # ------------------------------------------------------------ for subclasses
    def _report(self, attempt: Attempt, report: TaskState | Outcome) -> None:
        """Report that `attempt` is EXECUTING, or how it ended (an `Outcome`, or a bare
        terminal state such as CANCELED); any thread."""
        if not isinstance(report, Outcome):
            state = TaskState(report)
            if state is not TaskState.EXECUTING:
                if not state.is_terminal:
                    raise ValueError(f"_report takes EXECUTING or an end, got {state}")
                report = Outcome(state)
        self._inbox.post(self._loop, self._apply_report, attempt, report)

    def _report_unstoppable(self, attempt: Attempt) -> None:
        """`attempt` could not be stopped (a function running in a thread): it ends
        CANCELED for its task, and its body goes on running, holding its cores, until it
        reports its end (which is then dropped). Any thread."""
        self._inbox.post(self._loop, self._apply_unstoppable, attempt)

    def _break(self, error: BackendError) -> None:
        """The backend can no longer run tasks (scheduler or pilot lost); any thread.

        Fails every launched, unfinished task with `error`; tasks not launched yet,
        and tasks submitted later, fail with it when their turn comes.
        """
        if not self._inbox.post(self._loop, self._apply_break, error):
            self._broken = self._broken or error

    def _apply_break(self, error: BackendError) -> None:
        if self._broken is None:
            self._broken = error
            logger.error("%s", error)
        for record in self._records.values():
            if record.attempt is not None and record.outcome is not None:
                self._apply_report(record.attempt, Outcome.failed(self._broken))

    @property
    def broken(self) -> BackendError | None:
        """Why the backend can no longer run tasks, or None."""
        return self._broken

    def attempt_of(self, uid: str) -> int:
        """1 for the first attempt of a task, 2 for its first retry, ... (0: none yet)."""
        attempt = self._records[uid].attempt
        return 0 if attempt is None else attempt.number

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    # ------------------------------------------------------------------ internals
    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise BackendError(
                f"This {self.backend_type} backend is bound to another event loop; "
                "use it from the loop it was first used on",
                self.backend_type,
            )
        return loop

    @property
    def superseded_reports(self) -> int:
        """Reports dropped because their attempt no longer decided its task."""
        return self._superseded.count

    def _apply_report(self, attempt: Attempt, report: TaskState | Outcome) -> None:
        record = self._records.get(attempt.uid)
        if record is None or not record.decides(attempt):
            if self._superseded.drop(attempt, report):
                self._release(attempt)  # a body that could not be stopped has ended
        elif record.take(attempt, report):
            self._notify(record.task, TaskState.EXECUTING)

    def _apply_unstoppable(self, attempt: Attempt) -> None:
        record = self._records.get(attempt.uid)
        if record is None or not record.decides(attempt):
            return
        attempt.left_running = True
        attempt.task.setdefault("still_running", []).append(attempt.number)
        logger.warning(
            "Task %s: attempt %d cannot be stopped (a function running in a thread); it "
            "goes on running and holds its %d core(s) of the %s backend until it returns",
            attempt.uid, attempt.number, attempt.held_slots, self.backend_type)
        self._apply_report(attempt, Outcome.canceled())

    def _release(self, attempt: Attempt) -> None:
        """Give back the attempt's cores, unless its body still runs."""
        if attempt.held_slots and not attempt.left_running and self._slot_pool is not None:
            self._slot_pool.release(attempt.held_slots)
            attempt.held_slots = 0

    async def _drive(self, record: TaskRecord) -> None:
        task = record.task
        try:
            outcome = await self._run_attempts(record)
        except asyncio.CancelledError:
            # A second cancel (cancel_task, then terminate) must not skip _finish.
            cancelling = asyncio.ensure_future(self._cancel_attempt(record))
            while True:
                try:
                    outcome = await asyncio.shield(cancelling)
                    break
                except asyncio.CancelledError:
                    continue
        except Exception as error:
            logger.exception("Internal error while running task %s", task["uid"])
            outcome = Outcome.failed(BackendError(
                f"Internal error in the {self.backend_type} backend: {error!r}", self.backend_type
            ))
        if record.attempt is not None:  # cancelled or broken mid-attempt (else a no-op)
            self._release(record.attempt)
        self._finish(record, outcome)

    def _driver_done(self, record: TaskRecord, driver: asyncio.Task[None]) -> None:
        # A driver cancelled before its first step never ran _drive: finish it here.
        if driver.cancelled() and not TaskState(record.task["state"]).is_terminal:
            self._finish(record, Outcome.canceled())

    async def _run_attempts(self, record: TaskRecord) -> Outcome:
        task = record.task
        number = 0
        while True:
            number += 1
            attempt = Attempt(task, number)
            self._notify(task, TaskState.WAITING)
            if self._slot_pool is not None:
                slots = task_slots(task)
                await self._slot_pool.acquire(slots)
                attempt.held_slots = slots
            self._notify(task, TaskState.READY)
            # On CancelledError, _drive cancels the attempt, then releases its cores.
            outcome = await self._attempt(record, attempt)
            self._release(attempt)
            if outcome.state is not TaskState.FAILED or number > task["retries"]:
                return outcome
            task.update(outcome.results())
            self._notify(task, TaskState.RETRYING)
            await asyncio.sleep(retry_delay(task, number))

    async def _attempt(self, record: TaskRecord, attempt: Attempt) -> Outcome:
        loop = asyncio.get_running_loop()
        record.attempt = attempt
        record.outcome = outcome = loop.create_future()
        record.executing = False
        self._launcher.add(attempt)
        timeout = record.task["timeout"]
        try:
            result = await asyncio.wait_for(asyncio.shield(outcome), timeout)
        except TimeoutError:
            result = await self._cancel_attempt(record)
            if result.state is TaskState.CANCELED:
                message = f"Task '{attempt.uid}' exceeded its timeout of {timeout}s"
                if attempt.left_running:
                    message += (f"; attempt {attempt.number} could not be stopped (a function "
                                "in a thread) and still runs, holding its cores until it "
                                "returns (executor='process' stops it)")
                result = Outcome.failed(TimeoutError(message))
        # Not cleared on CancelledError: _cancel_attempt still needs the pending outcome.
        record.outcome = None
        return result

    async def _cancel_attempt(self, record: TaskRecord) -> Outcome:
        """Stop the running attempt, if any; give the backend a grace period."""
        outcome = record.outcome
        if outcome is None:
            return Outcome.canceled()
        if outcome.done():
            return outcome.result()
        assert record.attempt is not None
        self._canceller.add(record.attempt)
        try:
            return await asyncio.wait_for(asyncio.shield(outcome), CANCEL_GRACE_SECONDS)
        except TimeoutError:
            logger.warning(
                "The %s backend did not confirm cancelling task %s within %ss; "
                "marking it CANCELED",
                self.backend_type, record.task["uid"], CANCEL_GRACE_SECONDS,
            )
            outcome.cancel()
            return Outcome.canceled()

    async def _flush_launch(self, attempts: list[Attempt]) -> None:
        try:
            if self._broken is not None:
                raise self._broken
            await self._launch(attempts)
        except Exception as error:
            backend_error = error if isinstance(error, BackendError) else BackendError(
                f"The {self.backend_type} backend failed to launch tasks: {error!r}",
                self.backend_type,
            )
            for attempt in attempts:
                self._report(attempt, Outcome.failed(backend_error))

    async def _flush_cancel(self, attempts: list[Attempt]) -> None:
        try:
            await self._cancel(attempts)
        except Exception:
            logger.exception("The %s backend failed to cancel %s", self.backend_type, attempts)

    def _finish(self, record: TaskRecord, outcome: Outcome) -> None:
        task = record.task
        task.update(outcome.results())
        if outcome.state is not TaskState.CANCELED and not record.executing:
            record.executing = True
            self._notify(task, TaskState.EXECUTING)
        self._notify(task, outcome.state)


__all__ = ["CANCEL_GRACE_SECONDS", "ExecutionBackend"]
