"""Launched Dask futures, from launch to outcome: one watcher per backend, on the client's loop.

    watcher = FutureWatcher(client, report=backend._report, lost=backend._break)
    client.subscribe_topic(topic, watcher.on_event)     # EXECUTING, announced by the workers
    futures = client.map(run_on_worker, payloads, ..., key=keys, pure=False)
    client.loop.add_callback(watcher.watch, [Launched(attempt, key, f) for ...])
    # -> backend._report(attempt, Outcome(...)), once per launched attempt
    await watcher.cancel([attempt])                      # a coroutine for the client's loop

The watcher owns the launched futures: it alone touches them, on the client's
loop, keyed by their Dask key; it reports every launched attempt's start and end
through `report` (the engine's `_report`, which takes reports from any thread to
the backend's loop, one wake-up per burst, and alone decides whether an attempt
still counts).

Every launched future is watched by one `distributed.as_completed`, which later
launches join. The futures that finished are gathered in rounds: one
`Client.gather` (one request to the scheduler) for all that finished since the
last round, and at most one round per ROUND_INTERVAL seconds while results keep
coming (the first result after a quiet spell is gathered at once). Rounds run side
by side: one waiting for a result Dask recomputes (its worker died while it was
gathered) holds back no other. A future whose result Dask lost before its round
(its worker died) is watched again until Dask recomputed it. A future without a
result (error, cancelled, the gather failed) is classified per task (`_failure`):
cancelled by this backend or by Dask, the scheduler connection lost (`lost`: the
backend is broken), KilledWorker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import distributed
from distributed import Client, Future

from ...core.attempt import Attempt
from ...core.constants import BackendType, TaskState
from ...core.exceptions import BackendError
from ...core.outcome import Outcome

#: Dask's client-side future states -> TaskState, in one place.
DASK_STATES: Mapping[str, TaskState] = MappingProxyType({
    "pending": TaskState.WAITING,
    "finished": TaskState.COMPLETED,
    "error": TaskState.FAILED,
    "lost": TaskState.FAILED,
    "cancelled": TaskState.CANCELED,
})
#: Reason given to Dask when this backend cancels a future.
CANCEL_REASON = "rhapsody-cancel"
#: Seconds between the starts of two gather rounds while results keep coming.
ROUND_INTERVAL = 0.05
#: Dask future states whose result will never come.
NO_RESULT = frozenset({"error", "cancelled"})
#: Dask future states of a result not there (yet, or again): watched further.
NOT_YET = frozenset({"pending", "lost"})


class WorkerLost(BackendError):
    """Dask workers died while running the task (Dask's KilledWorker)."""


class SchedulerLost(BackendError):
    """The client lost its connection to the Dask scheduler."""


@dataclasses.dataclass(frozen=True, slots=True)
class Launched:
    """An attempt submitted to Dask, under its own key."""

    attempt: Attempt
    key: str
    future: Future

    @property
    def uid(self) -> str:
        return self.attempt.uid


class FutureWatcher:
    """Reports the start (from the workers' events) and the end of launched futures."""

    def __init__(
        self,
        client: Client,
        report: Callable[..., None],
        lost: Callable[[BackendError], None],
        address: str | None = None,
    ) -> None:
        self._client = client
        self._report = report  # report(attempt, TaskState | Outcome), from any thread
        self._lost = lost
        self._address = address  # for messages, when the client no longer knows it
        # All on the client's loop:
        self._launched: dict[str, Launched] = {}  # key -> launched, outcome not reported
        self._cancelling: set[str] = set()  # keys
        self._pending: dict[str, Launched] = {}  # key -> not in a round yet
        self._completed: distributed.as_completed | None = None  # while a watcher runs
        self._tasks: set[asyncio.Task[None]] = set()  # the watcher and its rounds
        self._last_round = -ROUND_INTERVAL

    def watch(self, launched: list[Launched]) -> None:
        """Watch these futures too (call on the client's loop)."""
        for entry in launched:
            self._launched[entry.key] = self._pending[entry.key] = entry
        futures = [entry.future for entry in launched]
        if self._completed is not None:
            self._completed.update(futures)
        else:
            self._completed = distributed.as_completed(futures, loop=self._client.loop)
            self._spawn(self._watch(self._completed))

    def on_event(self, event: tuple[float, Any]) -> None:
        """`subscribe_topic` handler: a worker started the task with this key."""
        entry = self._launched.get(event[1])
        if entry is not None:
            self._report(entry.attempt, TaskState.EXECUTING)

    async def cancel(self, keys: list[str]) -> None:
        """Cancel the launched attempts with these keys (run on the client's loop)."""
        futures = []
        for key in keys:
            entry = self._launched.get(key)
            if entry is not None:
                self._cancelling.add(entry.key)
                futures.append(entry.future)
        if futures:
            await self._client.cancel(
                futures, asynchronous=True, reason=CANCEL_REASON,
                msg="Cancelled by the rhapsody dask backend",
            )

    # ------------------------------------------------------------------ watching
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, completed: distributed.as_completed) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for future in completed:
                await asyncio.sleep(self._last_round + ROUND_INTERVAL - loop.time())
                self._last_round = loop.time()
                self._start_round(completed, [future, *completed.next_batch(block=False)])
                del future  # no reference keeps a result on the cluster
        except BaseException as error:  # every outcome must be reported
            entries, self._pending = list(self._pending.values()), {}
            self._end(entries, {}, error)
        finally:  # in the step that saw `completed` empty: later launches start anew
            if self._completed is completed:
                self._completed = None

    def _start_round(self, completed: distributed.as_completed, done: list[Future]) -> None:
        completed.update([f for f in done if f.status in NOT_YET])  # lost: recomputed
        entries = [self._pending.pop(f.key) for f in done if f.status not in NOT_YET]
        if entries:
            self._spawn(self._round(entries))

    async def _round(self, entries: list[Launched]) -> None:
        waiting = {e.key: e.future for e in entries if e.future.status not in NO_RESULT}
        outcomes: dict[str, Outcome] = {}
        error: BaseException | None = None
        try:
            if waiting:
                outcomes = await self._client.gather(waiting, errors="skip", asynchronous=True)
        except BaseException as exc:  # every outcome must be reported
            error = exc
        self._end(entries, outcomes, error)

    def _end(
        self, entries: list[Launched], outcomes: dict[str, Outcome], error: BaseException | None
    ) -> None:
        """Report each entry's outcome: what its body returned, else why it has none."""
        for entry in entries:
            outcome = outcomes.get(entry.key)
            if outcome is None:  # the gather brought no result: why
                outcome = self._failure(entry, _error_of(entry, error))
            self._launched.pop(entry.key, None)
            self._cancelling.discard(entry.key)
            self._report(entry.attempt, outcome)

    # ------------------------------------------------------------------ outcomes
    def _failure(self, entry: Launched, error: BaseException) -> Outcome:
        uid, key, future = entry.uid, entry.key, entry.future
        state = DASK_STATES.get(future.status or "", TaskState.FAILED)
        if state is TaskState.CANCELED:
            reason = getattr(future._state.exception, "reason", None) if future._state else None
            if key in self._cancelling or reason == CANCEL_REASON:
                return Outcome.canceled()
            if reason == "scheduler-connection-lost":
                lost = SchedulerLost(
                    f"Lost the connection to the Dask scheduler at {self._scheduler_address()}; "
                    "the task's outcome is unknown",
                    BackendType.DASK,
                )
                self._lost(lost)
                return Outcome.failed(lost)
            return Outcome.failed(BackendError(
                f"Dask cancelled task '{uid}' (key {key}): {error}", BackendType.DASK
            ))
        if isinstance(error, distributed.KilledWorker):
            return Outcome.failed(WorkerLost(
                f"Task '{uid}' failed: KilledWorker: the Dask workers running it died "
                f"({error})",
                BackendType.DASK,
                details={"key": key},
            ))
        if isinstance(error, asyncio.CancelledError):
            error = BackendError(
                f"The Dask client stopped watching task '{uid}'", BackendType.DASK
            )
        return Outcome.failed(error)

    def _scheduler_address(self) -> str:
        with contextlib.suppress(Exception):
            if self._client.scheduler is not None:
                return str(self._client.scheduler.address)
        return str(self._address)


def _error_of(entry: Launched, error: BaseException | None) -> BaseException:
    """Why `entry` has no result: its own error (what gathering it alone raised), else
    the gather's."""
    state = entry.future._state
    own = state.exception if state is not None and entry.future.status in NO_RESULT else None
    if own is not None:
        return own
    if error is not None:
        return error
    return BackendError(
        f"Dask returned no result for task '{entry.uid}' (key {entry.key}, "
        f"status {entry.future.status})",
        BackendType.DASK,
    )


__all__ = [
    "CANCEL_REASON",
    "DASK_STATES",
    "ROUND_INTERVAL",
    "FutureWatcher",
    "Launched",
    "SchedulerLost",
    "WorkerLost",
]
