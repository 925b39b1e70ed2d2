"""The backend contract, and the machinery every built-in backend shares.

`BaseExecutionBackend` is the RHAPSODY contract: `submit_tasks`, `wait`,
`terminate`, `cancel_task`, `register_callback`, per-task state queries, async
context manager, awaitable. A user backend that defines only `submit_tasks`,
`wait` and `terminate` is a complete backend.

`ExecutionBackend` implements that contract once, for all built-in backends:
validation, uids, state bookkeeping and callbacks in order
(NEW -> WAITING -> READY -> EXECUTING -> COMPLETED | FAILED | CANCELED, with
RETRYING between attempts), slot accounting, per-task timeouts, retries,
cancellation and `wait`. A backend subclass implements only how to start,
launch, cancel and shut down:

    class EchoBackend(ExecutionBackend):
        backend_type = "echo"

        async def _launch(self, tasks):
            for task in tasks:
                self._report(task["uid"], TaskState.EXECUTING)
                self._report(task["uid"], TaskState.COMPLETED, return_value=task["args"])

    async with EchoBackend() as backend:
        await backend.submit_tasks([{"function": print, "args": ("hi",)}])
        await backend.wait()

`_report` is thread-safe: call it from any thread (a Dask or RADICAL-Pilot
callback thread); it only schedules work on the backend's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, ClassVar

from ..constants import TaskState
from ..exceptions import BackendError, ConfigurationError, TaskError, WaitTimeoutError
from ..tasks import CallbackFunction, TaskDict, task_slots, validate_task

logger = logging.getLogger("rhapsody_prefect.backends")

#: Seconds a backend gets to confirm a cancel before the task is marked CANCELED anyway.
CANCEL_GRACE_SECONDS = 10.0
#: Characters of stderr/stdout kept in a TaskError's details.
OUTPUT_TAIL_CHARS = 2000


def tail(text: str | bytes | None, limit: int = OUTPUT_TAIL_CHARS) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-limit:]


class BaseExecutionBackend(ABC):
    """The RHAPSODY backend contract.

    Subclasses must implement `submit_tasks`, `wait` and `terminate`. Callbacks
    registered with `register_callback` are called as `fn(task_dict, state)`.
    """

    backend_type: ClassVar[str] = "custom"

    def __init__(self, **kwargs: Any) -> None:
        self._callbacks: list[CallbackFunction] = []
        self._task_dicts: dict[str, TaskDict] = {}

    @abstractmethod
    async def submit_tasks(self, tasks: list[TaskDict]) -> None:
        """Submit task dicts for execution; returns once they are accepted."""

    @abstractmethod
    async def wait(self, timeout: float | None = None) -> None:
        """Wait until every submitted task reached a terminal state."""

    @abstractmethod
    async def terminate(self) -> None:
        """Cancel what is left and release every resource the backend holds."""

    async def start(self) -> BaseExecutionBackend:
        """Start the backend (no-op unless a subclass needs it); returns self."""
        return self

    async def cancel_task(self, uid: str) -> bool:
        """Cancel one task; True if it was cancelled. Unsupported here: False."""
        return False

    def register_callback(self, fn: CallbackFunction) -> None:
        """Call `fn(task_dict, state)` on every task state change."""
        if not callable(fn):
            raise ConfigurationError(f"callback must be callable, got {fn!r}", "callback")
        self._callbacks.append(fn)

    def get_task(self, uid: str) -> TaskDict | None:
        return self._task_dicts.get(uid)

    def get_task_state(self, uid: str) -> TaskState | None:
        """The task's current state, or None for a uid this backend never saw."""
        task = self._task_dicts.get(uid)
        return None if task is None or "state" not in task else TaskState(task["state"])

    @property
    def tasks(self) -> dict[str, TaskDict]:
        """Every task dict submitted so far, by uid."""
        return dict(self._task_dicts)

    def _notify(self, task: TaskDict, state: TaskState) -> None:
        task["state"] = state
        for callback in self._callbacks:
            try:
                callback(task, state)
            except Exception:
                logger.exception("State callback %r failed for task %s", callback, task.get("uid"))

    async def __aenter__(self) -> BaseExecutionBackend:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.terminate()

    def __await__(self) -> Generator[Any, None, BaseExecutionBackend]:
        return self.start().__await__()


#: Alias used by the reference's examples.
BaseBackend = BaseExecutionBackend


@dataclasses.dataclass
class Outcome:
    """The end of one attempt, as a backend reports it."""

    state: TaskState
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    return_value: Any = None
    exception: BaseException | None = None


RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(Outcome) if f.name != "state")


@dataclasses.dataclass(eq=False)
class _Record:
    task: TaskDict
    driver: asyncio.Task[None] | None = None
    outcome: asyncio.Future[Outcome] | None = None
    attempt: int = 0
    executing: bool = False
    failure_raised: bool = False


class _SlotPool:
    """FIFO counting semaphore over cores: a big task is not starved by small ones."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, count: int) -> None:
        if not self._waiters and self._free >= count:
            self._free -= count
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((count, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(count)
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove((count, waiter))
                self._wake()
            raise

    def release(self, count: int) -> None:
        self._free += count
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._free:
            count, waiter = self._waiters.popleft()
            if not waiter.done():
                self._free -= count
                waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self, count: int) -> Any:
        await self.acquire(count)
        try:
            yield
        finally:
            self.release(count)


class _Batcher:
    """Collects uids for `delay` seconds (0: one loop iteration), then hands them over."""

    def __init__(self, flush: Callable[[list[str]], Awaitable[None]], delay: float = 0.0) -> None:
        self._flush = flush
        self._delay = delay
        self._items: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, uid: str) -> None:
        if not self._items:
            loop = asyncio.get_running_loop()
            if self._delay > 0:
                loop.call_later(self._delay, self._run)
            else:
                loop.call_soon(self._run)
        self._items.append(uid)

    def _run(self) -> None:
        items, self._items = self._items, []
        task = asyncio.ensure_future(self._flush(items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ExecutionBackend(BaseExecutionBackend):
    """Shared implementation of the contract; built-in backends subclass this.

    Subclass hooks: `_start`, `_launch`, `_cancel`, `_shutdown`, `_check_task`,
    and `slots` (total cores, or None when the backend schedules by itself).
    Report progress with `_report(uid, state, **results)` from any thread.
    """

    #: Total cores the backend offers; tasks wait for free slots. None: no limit here.
    slots: int | None = None
    #: Seconds launches are collected before `_launch` (bulk submission pays off for
    #: backends with a costly submit call, such as RADICAL-Pilot); 0: one loop iteration.
    launch_batch_delay: float = 0.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._records: dict[str, _Record] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_task: asyncio.Future[None] | None = None
        self._started = False
        self._terminated = False
        self._slot_pool: _SlotPool | None = None
        self._launcher = _Batcher(self._flush_launch, self.launch_batch_delay)
        self._canceller = _Batcher(self._flush_cancel)

    # ----------------------------------------------------------- subclass hooks
    async def _start(self) -> None:
        """Acquire resources (cluster, pilot, pool). Runs once, on the backend loop."""

    @abstractmethod
    async def _launch(self, tasks: list[TaskDict]) -> None:
        """Start these validated tasks; report progress with `_report`."""

    async def _cancel(self, uids: list[str]) -> None:
        """Ask the backend to stop these launched tasks; report CANCELED when it did."""

    async def _shutdown(self) -> None:
        """Release everything `_start` acquired."""

    def _check_task(self, task: TaskDict) -> None:
        """Backend-specific validation; raise ConfigurationError naming the key."""

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
            self._slot_pool = _SlotPool(self.slots)
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
            if self.slots is not None and task_slots(task) > self.slots:
                raise ConfigurationError(
                    f"Task '{task['uid']}' needs {task_slots(task)} cores "
                    f"(ranks * cores_per_rank) but the {self.backend_type} backend "
                    f"has {self.slots}",
                    config_key="cores_per_rank" if task["cores_per_rank"] > 1 else "ranks",
                )
        loop = self._bind_loop()
        for task in tasks:
            record = _Record(task)
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
        failed = [
            r
            for r in self._records.values()
            if r.task.get("state") == TaskState.FAILED and not r.failure_raised
        ]
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
        if self._started:
            await self._shutdown()

    # ------------------------------------------------------------ for subclasses
    def _report(self, uid: str, state: TaskState | str, **results: Any) -> None:
        """Report EXECUTING or a terminal state of a launched task (any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        unknown = set(results) - set(RESULT_FIELDS)
        if unknown:
            raise TypeError(f"_report got unknown result fields {sorted(unknown)}")
        if _running_loop() is loop:
            self._apply_report(uid, TaskState(state), results)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                loop.call_soon_threadsafe(self._apply_report, uid, TaskState(state), results)

    def _fail_outstanding(self, error: BaseException) -> None:
        """Fail every launched, unfinished task with `error` (backend lost)."""
        for uid, record in self._records.items():
            if record.outcome is not None and not record.outcome.done():
                self._report(uid, TaskState.FAILED, exception=error)

    def attempt_of(self, uid: str) -> int:
        """1 for the first attempt of a task, 2 for its first retry, ..."""
        return self._records[uid].attempt

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

    def _apply_report(self, uid: str, state: TaskState, results: dict[str, Any]) -> None:
        record = self._records.get(uid)
        if record is None or record.outcome is None or record.outcome.done():
            return
        if state is TaskState.EXECUTING:
            if not record.executing:
                record.executing = True
                self._notify(record.task, TaskState.EXECUTING)
        elif state.is_terminal:
            record.outcome.set_result(Outcome(state, **results))
        else:
            logger.debug("Ignoring reported state %s of task %s", state, uid)

    async def _drive(self, record: _Record) -> None:
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
            outcome = Outcome(TaskState.FAILED, exception=BackendError(
                f"Internal error in the {self.backend_type} backend: {error!r}", self.backend_type
            ))
        self._finish(record, outcome)

    def _driver_done(self, record: _Record, driver: asyncio.Task[None]) -> None:
        # A driver cancelled before its first step never ran _drive: finish it here.
        if driver.cancelled() and not TaskState(record.task["state"]).is_terminal:
            self._finish(record, Outcome(TaskState.CANCELED))

    async def _run_attempts(self, record: _Record) -> Outcome:
        task = record.task
        while True:
            record.attempt += 1
            self._notify(task, TaskState.WAITING)
            pool = self._slot_pool
            async with pool.hold(task_slots(task)) if pool else contextlib.nullcontext():
                self._notify(task, TaskState.READY)
                outcome = await self._attempt(record)
            if outcome.state is not TaskState.FAILED or record.attempt > task["retries"]:
                return outcome
            self._write_results(task, outcome)
            self._notify(task, TaskState.RETRYING)
            await asyncio.sleep(task["retry_delay"])

    async def _attempt(self, record: _Record) -> Outcome:
        loop = asyncio.get_running_loop()
        record.outcome = outcome = loop.create_future()
        record.executing = False
        self._launcher.add(record.task["uid"])
        timeout = record.task["timeout"]
        try:
            result = await asyncio.wait_for(asyncio.shield(outcome), timeout)
        except TimeoutError:
            result = await self._cancel_attempt(record)
            if result.state is TaskState.CANCELED:
                result = Outcome(
                    TaskState.FAILED,
                    exception=TimeoutError(
                        f"Task '{record.task['uid']}' exceeded its timeout of {timeout}s"
                    ),
                )
        # Not cleared on CancelledError: _cancel_attempt still needs the pending outcome.
        record.outcome = None
        return result

    async def _cancel_attempt(self, record: _Record) -> Outcome:
        """Stop the running attempt, if any; give the backend a grace period."""
        outcome = record.outcome
        if outcome is None:
            return Outcome(TaskState.CANCELED)
        if outcome.done():
            return outcome.result()
        self._canceller.add(record.task["uid"])
        try:
            return await asyncio.wait_for(asyncio.shield(outcome), CANCEL_GRACE_SECONDS)
        except TimeoutError:
            logger.warning(
                "The %s backend did not confirm cancelling task %s within %ss; "
                "marking it CANCELED",
                self.backend_type, record.task["uid"], CANCEL_GRACE_SECONDS,
            )
            outcome.cancel()
            return Outcome(TaskState.CANCELED)

    async def _flush_launch(self, uids: list[str]) -> None:
        tasks = [self._records[uid].task for uid in uids]
        try:
            await self._launch(tasks)
        except Exception as error:
            backend_error = error if isinstance(error, BackendError) else BackendError(
                f"The {self.backend_type} backend failed to launch tasks: {error!r}",
                self.backend_type,
            )
            for uid in uids:
                self._report(uid, TaskState.FAILED, exception=backend_error)

    async def _flush_cancel(self, uids: list[str]) -> None:
        try:
            await self._cancel(uids)
        except Exception:
            logger.exception("The %s backend failed to cancel %s", self.backend_type, uids)

    def _write_results(self, task: TaskDict, outcome: Outcome) -> None:
        for field in RESULT_FIELDS:
            task[field] = getattr(outcome, field)

    def _finish(self, record: _Record, outcome: Outcome) -> None:
        task = record.task
        self._write_results(task, outcome)
        if outcome.state is not TaskState.CANCELED and not record.executing:
            record.executing = True
            self._notify(task, TaskState.EXECUTING)
        self._notify(task, outcome.state)


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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ = [
    "CANCEL_GRACE_SECONDS",
    "BaseBackend",
    "BaseExecutionBackend",
    "ExecutionBackend",
    "Outcome",
    "task_error",
]
