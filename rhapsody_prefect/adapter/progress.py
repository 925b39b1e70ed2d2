"""How far a set of backend tasks has got, as Prefect artifacts: a progress bar and a summary.

    tally = Tally()                        # fed by the backend's state callbacks
    backend.register_callback(tally.on_state)
    reporter = Reporter(tally, backend, "square-ensemble-1a2", flow_run_id, task_run_id)
    reporter.start()                       # a progress artifact, updated every few seconds
    ...
    await reporter.finish()                # last progress value and a table artifact

A `Tally` costs a few dict operations per state change and 16 bytes per attempt
(no object per task): it counts tasks submitted and done, final states, retries,
queue time (WAITING -> EXECUTING) and execution time (EXECUTING -> end) per
attempt, and the busy core-seconds. The `Reporter` owns the artifacts; a failing
artifact call is logged once and never fails the work it reports on.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect.artifacts import Artifact, ProgressArtifact, TableArtifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.context import AsyncClientContext

from ..core.constants import TaskState
from ..core.contract import BaseExecutionBackend
from ..core.tasks import TaskDict, task_slots

logger = logging.getLogger("rhapsody_prefect.runner")

#: Seconds between two updates of a progress artifact (at most one update per interval).
PROGRESS_INTERVAL = 3.0
#: Percentiles shown for queue and execution times.
PERCENTILES = (50, 90, 99)


class Tally:
    """Counts and timings of a set of backend tasks, from their state changes."""

    def __init__(self, on_done: Callable[[], None] | None = None) -> None:
        self.submitted = 0
        self.done = 0
        self.final: collections.Counter[TaskState] = collections.Counter()
        self.retried = 0
        self.executing = 0
        self.busy_core_seconds = 0.0
        self.queue_times = array.array("d")
        self.exec_times = array.array("d")
        self.started_at: float | None = None  # time.time() of the first task
        self.ended_at: float | None = None  # time.time() of the latest end
        self._waiting: dict[str, float] = {}  # uid -> monotonic time its attempt queued
        self._running: dict[str, float] = {}  # uid -> monotonic time its attempt started
        self._on_done = on_done
        self.changes = 0  # bumped on every counted change (cheap "anything new?" test)

    def on_state(self, task: TaskDict, state: TaskState) -> None:
        """The backend's state callback (on the backend's loop)."""
        now = time.monotonic()
        uid = task["uid"]
        if state is TaskState.NEW:
            self.submitted += 1
            if self.started_at is None:
                self.started_at = time.time()
        elif state is TaskState.WAITING:
            self._waiting[uid] = now
        elif state is TaskState.EXECUTING:
            self._running[uid] = now
            self.executing += 1
            queued = self._waiting.pop(uid, None)
            if queued is not None:
                self.queue_times.append(now - queued)
        elif state is TaskState.RETRYING or state.is_terminal:
            self._waiting.pop(uid, None)
            started = self._running.pop(uid, None)
            if started is not None:
                self.executing -= 1
                self.exec_times.append(now - started)
                self.busy_core_seconds += (now - started) * task_slots(task)
            if state is TaskState.RETRYING:
                self.retried += 1
            else:
                self.done += 1
                self.final[state] += 1
                self.ended_at = time.time()
                if self._on_done is not None:
                    self._on_done()
        else:
            return
        self.changes += 1

    @property
    def failed(self) -> int:
        return self.final[TaskState.FAILED]

    def line(self, noun: str = "members") -> str:
        """'450 of 1000 members done (3 failed), 10 executing'."""
        extra = [f"{count} {state.value.lower()}" for state, count in sorted(self.final.items())
                 if state is not TaskState.COMPLETED]
        text = f"{self.done} of {self.submitted} {noun} done"
        if extra:
            text += f" ({', '.join(extra)})"
        return text + f", {self.executing} executing"


def percentiles(values: array.array[float]) -> str:
    """'p50 0.012 s, p90 0.030 s, p99 0.100 s, max 0.250 s' (nearest rank)."""
    if not values:
        return "-"
    ordered = sorted(values)
    last = len(ordered) - 1
    parts = [f"p{q} {ordered[min(last, (q * len(ordered) + 99) // 100 - 1)]:.3f} s"
             for q in PERCENTILES]
    return ", ".join([*parts, f"max {ordered[last]:.3f} s"])


class OfferedCores:
    """Cores the backend offered over time (sampled), for its utilisation."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []  # (time.time(), cores)
        self.placement: list[str] = []

    async def sample(self, backend: BaseExecutionBackend, placement: bool = False) -> None:
        """Ask the backend (may query a scheduler: runs in a worker thread)."""
        try:
            cores = await asyncio.to_thread(backend.capacity_cores)
            if placement:
                self.placement = await asyncio.to_thread(backend.placement)
        except Exception as error:  # a report must not fail the work
            logger.debug("Could not read the backend's capacity: %r", error)
            return
        if cores:
            self.samples.append((time.time(), cores))

    def core_seconds(self, start: float, end: float) -> float | None:
        """Available core-seconds from start to end (each sample holds until the next)."""
        if not self.samples or end <= start:
            return None
        total, points = 0.0, sorted(self.samples)
        for index, (moment, cores) in enumerate(points):
            begin = start if index == 0 else max(start, moment)
            finish = points[index + 1][0] if index + 1 < len(points) else end
            total += max(0.0, min(finish, end) - begin) * cores
        return total

    @property
    def cores(self) -> int | None:
        return max(cores for _, cores in self.samples) if self.samples else None


def summary_rows(
    tally: Tally, backend: BaseExecutionBackend, capacity: OfferedCores, noun: str,
    name: str | None = None,
) -> list[dict[str, str]]:
    """The summary table: final states, times, where the tasks ran, utilisation.

    `name`: the backend's name in a runner with several (shown with its type).
    """
    start, end = tally.started_at, tally.ended_at
    wall = (end - start) if start is not None and end is not None else None
    rows = [("backend tasks" if noun != "members" else "members", str(tally.submitted))]
    for state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED):
        rows.append((state.value.lower(), str(tally.final[state])))
    rows += [
        ("retried attempts", str(tally.retried)),
        ("queue time per attempt (WAITING -> EXECUTING)", percentiles(tally.queue_times)),
        ("execution time per attempt (EXECUTING -> end)", percentiles(tally.exec_times)),
        ("wall time, first submitted to last done",
         "-" if wall is None else f"{wall:.2f} s"),
        (f"throughput ({noun} per second)",
         "-" if not wall else f"{tally.done / wall:.1f}"),
        ("backend", _backend_label(backend, name)),
        ("where they ran", "; ".join(capacity.placement) or backend.backend_type),
        ("cores available", "-" if capacity.cores is None else str(capacity.cores)),
        ("busy core-seconds", f"{tally.busy_core_seconds:.1f}"),
    ]
    available = None if wall is None else capacity.core_seconds(start or 0.0, end or 0.0)
    rows.append(("utilisation (busy / available core-seconds)",
                 "-" if not available else
                 f"{100 * tally.busy_core_seconds / available:.1f}% "
                 f"({tally.busy_core_seconds:.1f} / {available:.1f})"))
    return [{"metric": metric, "value": value} for metric, value in rows]


class Reporter:
    """A progress artifact updated at most every `interval` seconds, then a summary table."""

    def __init__(
        self,
        tally: Tally,
        backend: BaseExecutionBackend,
        label: str,
        flow_run_id: UUID | None,
        task_run_id: UUID | None = None,
        interval: float = PROGRESS_INTERVAL,
        noun: str = "members",
        name: str | None = None,
    ) -> None:
        self.tally = tally
        self.backend = backend
        self.label = label
        self.flow_run_id = flow_run_id
        self.task_run_id = task_run_id
        self.interval = interval
        self.noun = noun
        self.name = name
        self.capacity = OfferedCores()
        self.artifact_id: UUID | None = None
        self._client = _client()
        self._opening: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._shown = -1
        self._warned = False

    def start(self, create_now: bool = True) -> None:
        """On the loop: the progress artifact (now, or only once the work outlasts an
        interval), updated every interval. Returns at once (no API call waited for)."""
        loop = asyncio.get_running_loop()
        self._opening = loop.create_task(self._open(create_now))
        self._ticker = loop.create_task(self._tick())

    async def _open(self, create_now: bool) -> None:
        await self.capacity.sample(self.backend, placement=True)
        if create_now:
            await self._create()

    async def _tick(self) -> None:
        if self._opening is not None:
            await self._opening
        while True:
            await asyncio.sleep(self.interval)
            await self.capacity.sample(self.backend)
            if self.artifact_id is None:
                if self.tally.done < self.tally.submitted:  # still working after an interval
                    await self._create()
            elif self.tally.changes != self._shown:
                await self._update()

    async def finish(self) -> None:
        """Stop updating; the last progress value, and the summary table."""
        if self._opening is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._opening)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.artifact_id is None:
            return
        await self.capacity.sample(self.backend, placement=True)
        await self._update()
        await self._post(TableArtifact(
            table=summary_rows(self.tally, self.backend, self.capacity, self.noun,
                               self.name),
            description=f"**{self.label}**: {self.tally.line(self.noun)} "
                        f"on backend `{_backend_label(self.backend, self.name)}`",
        ))

    def _progress(self) -> float:
        tally = self.tally
        return 100.0 * tally.done / tally.submitted if tally.submitted else 0.0

    def _description(self) -> str:
        return f"**{self.label}**: {self.tally.line(self.noun)}"

    async def _create(self) -> None:
        self._shown = self.tally.changes
        created = await self._post(
            ProgressArtifact(progress=self._progress(), description=self._description())
        )
        if created is not None:
            self.artifact_id = created.id

    async def _update(self) -> None:
        if self.artifact_id is None:
            return
        self._shown = self.tally.changes
        update = ArtifactUpdate(data=self._progress(), description=self._description())
        await self._call(lambda client: client.update_artifact(
            artifact_id=self.artifact_id, artifact=update))

    async def _post(self, artifact: Artifact) -> Any:
        """Create `artifact` on this run (ids given here, not taken from the context)."""
        request = ArtifactCreate(
            type=artifact.type, description=artifact.description,
            data=await artifact.aformat(),
            flow_run_id=self.flow_run_id, task_run_id=self.task_run_id,
        )
        return await self._call(lambda client: client.create_artifact(artifact=request))

    async def _call(self, call: Callable[[Any], Any]) -> Any:
        try:
            if self._client is not None:
                return await call(self._client)
            async with get_client() as client:
                return await call(client)
        except Exception as error:  # the API may be busy: the work goes on
            if not self._warned:
                self._warned = True
                logger.warning("Could not write the progress artifact of %s: %r",
                               self.label, error)
            return None


def _backend_label(backend: BaseExecutionBackend, name: str | None) -> str:
    """'concurrent', or 'local (concurrent)' for a backend named in a runner."""
    kind = str(backend.backend_type)
    return kind if name is None else f"{name} ({kind})"


def _client() -> Any:
    """The API client the runner opened on its loop (shared by every task run)."""
    context = AsyncClientContext.get()
    return None if context is None else context.client


__all__ = ["PROGRESS_INTERVAL", "OfferedCores", "Reporter", "Tally", "percentiles", "summary_rows"]
