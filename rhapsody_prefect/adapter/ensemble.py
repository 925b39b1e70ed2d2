"""ensemble_map: one Prefect task run for thousands of backend tasks.

    from prefect import flow, task
    from rhapsody_prefect import RhapsodyRunner, ensemble_map, executable_task

    @task(retries=2)
    def score(x: int, scale: float) -> float:
        return x * scale

    @executable_task
    def simulate(seed: int) -> list[str]:
        return ["./md-sim", "--seed", str(seed)]

    @flow(task_runner=RhapsodyRunner("dask", address="tcp://scheduler:8786"))
    def sweep() -> float:
        scores = ensemble_map(score, range(100_000), unmapped(0.5))   # a PrefectFuture
        runs = ensemble_map(simulate, range(1_000), allow_failures=True)
        return sum(scores.result())

`task.map` makes one Prefect task run per member (per-member caching, retries,
UI entries; 5-8 ms of flow CPU each). `ensemble_map` makes ONE task run for the
whole ensemble and sends one backend task per member straight to the flow's
backend: members get `task.map`'s body semantics (Python bodies return their
value, `executable_task` commands an `ExecutableResult`, `task_resources`
apply, `unmapped` works), a failed member is retried by the backend with the
delays Prefect would wait between a task run's retries (`MemberRetries`: the
task's `retries`, `retry_delay_seconds` (a list: one per retry, its last
repeated), `retry_jitter_factor`), and the task run's result is the members'
results in input order. Members still failing fail the task run with
`EnsembleFailed` (counted, the first few listed), or, with `allow_failures=True`,
hold their exception in the list. A task with a `retry_condition_fn` is refused
(the backend retries a member without asking Prefect): use `task.map`.

The ensemble's task run body runs in the flow process on the runner's loop
(`dispatch.runs_in_flow`); its members are built like any body
(`body_spec.BodySpec`) and `join` the dispatcher as one `dispatch.Group` under
their `group` key, so their state changes feed one `progress.Tally` (no object
per member) and the runner's `cancel_all` cancels them. Options (keywords that
are not the task's parameters): `artifacts` (default: the runner's),
`progress_interval` (seconds, default 3), `wait_for`, `backend` (a name of the
runner's `backends=`). Other keywords are mapped parameters, as in `task.map`.

Every member goes to one backend, chosen when `ensemble_map` is called
(adapter/routing.py): `backend=`, else the task's `task_resources(backend=)`, else
a `rhapsody:NAME` tag (the task's, or of an enclosing `with tags(...)`), else the
runner's default. A member whose command dict names another backend fails the
ensemble (pass that name as `backend=`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TagsContext, TaskRunContext
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.states import Cancelled, State
from prefect.tasks import Task
from prefect.utilities.annotations import unmapped
from prefect.utilities.math import clamped_poisson_interval

from ..core.constants import TaskState
from ..core.exceptions import ConfigurationError, TaskError
from ..core.tasks import TaskDict, retry_delay
from . import progress
from .body_spec import BodySpec
from .dispatch import BodyDispatcher, cancel_many, runs_in_flow
from .executable import resources_of
from .progress import Reporter, Tally
from .states import prefect_result
from .timeline import replay

#: Members handed to the backend per `submit_tasks` call (the backend starts on the
#: first chunk while the flow side builds the next).
CHUNK = 2000
#: Failed members listed in the failure message.
LISTED_FAILURES = 5
OPTIONS = ("artifacts", "progress_interval", "wait_for", "backend")


class EnsembleFailed(TaskError):
    """Members of an ensemble still failed after their retries.

    `details`: `failed` (count), `members` (count), `indices` (of the failed members).
    """


def ensemble_map(
    task: Task[..., Any], *iterables: Any, allow_failures: bool = False, **options: Any
) -> PrefectFuture[list[Any]]:
    """Run `task` once per member on the flow's backend, as ONE Prefect task run.

    Returns the PrefectFuture of that task run at once; its result is the list of the
    members' results, in input order (see the module docstring).

    Raises:
        ConfigurationError: not inside a flow running on a RhapsodyRunner, `task` is
            not a Prefect task or has a `retry_condition_fn`, the iterables differ
            in length, or the backend it is routed to is not one of the runner's.
    """
    from .runner import RhapsodyRunner

    flow_context = FlowRunContext.get()
    runner = getattr(flow_context, "task_runner", None)
    if not isinstance(runner, RhapsodyRunner):
        where = ("outside a flow run" if flow_context is None
                 else f"in a flow whose task runner is {type(runner).__name__}")
        raise ConfigurationError(
            f"ensemble_map must be called inside a flow that runs on a RhapsodyRunner; "
            f"it was called {where}", config_key="task_runner",
        )
    if not isinstance(task, Task):
        raise ConfigurationError(
            f"ensemble_map needs a Prefect @task or an executable_task, got {task!r}", "task"
        )
    if inspect.isgeneratorfunction(task.fn) or inspect.isasyncgenfunction(task.fn):
        raise ConfigurationError(f"Task {task.name!r} is a generator; return a list", "task")
    retries = MemberRetries(task)
    parameters = set(inspect.signature(task.fn).parameters)
    keywords = {k: v for k, v in options.items() if k in parameters}
    settings = {k: v for k, v in options.items() if k not in parameters}
    unknown = sorted(set(settings) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"ensemble_map got {unknown[0]!r}, neither a parameter of {task.name!r} nor an "
            f"option ({', '.join(OPTIONS)})", config_key=unknown[0],
        )
    artifacts = settings.get("artifacts", runner.artifacts)
    interval = settings.get("progress_interval", progress.PROGRESS_INTERVAL)
    if not isinstance(artifacts, bool):
        raise ConfigurationError(f"artifacts must be a bool, got {artifacts!r}", "artifacts")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise ConfigurationError(
            f"progress_interval must be a number of seconds > 0, got {interval!r}",
            "progress_interval",
        )
    columns = [*iterables, *keywords.values()]
    mapped = [not isinstance(column, unmapped) for column in columns]
    if not any(mapped):
        raise ConfigurationError("ensemble_map needs at least one iterable to map over", "task")
    columns = [c if m or not isinstance(c, unmapped) else c.value
               for c, m in zip(columns, mapped, strict=True)]
    columns = [list(c) if m and not isinstance(c, (Sequence, PrefectFuture)) else c
               for c, m in zip(columns, mapped, strict=True)]
    member_count(columns, mapped)  # early, unless a column is a future
    route = runner.routing.route(settings.get("backend"), resources_of(task.fn).get("backend"),
                                 {*task.tags, *TagsContext.get().current_tags})
    ensemble = Ensemble(runner.dispatcher(route), task, list(keywords), mapped,
                        allow_failures, artifacts, float(interval), retries)

    async def run_ensemble(iterables: list[Any]) -> Any:
        return await ensemble.run(iterables)

    ensemble_task: Task[..., Any] = Task(
        fn=runs_in_flow(run_ensemble), name=f"{task.name}-ensemble",
        description=f"ensemble_map of {task.name!r}: one backend task per member",
        tags=set(task.tags), cache_policy=NO_CACHE, retries=0,
        persist_result=task.persist_result, log_prints=False,
    )
    return ensemble_task.submit(columns, wait_for=settings.get("wait_for"))


def member_count(columns: Sequence[Any], mapped: Sequence[bool]) -> int | None:
    """The number of members (equal lengths), or None while a column is a future."""
    lengths = {len(c) for c, m in zip(columns, mapped, strict=True)
               if m and not isinstance(c, PrefectFuture)}
    if len(lengths) > 1:
        raise ConfigurationError(
            f"ensemble_map needs iterables of equal length, got lengths {sorted(lengths)}",
            config_key="iterables",
        )
    if any(m and isinstance(c, PrefectFuture) for c, m in zip(columns, mapped, strict=True)):
        return None
    return lengths.pop() if lengths else 0


class MemberRetries:
    """Prefect's retry options of `task`, as the backend applies them to each member.

    Retry k of a member waits what Prefect's engine would wait before retry k of a task
    run: `retry_delay_seconds` (a list: its k-th, the last repeated), drawn with
    Prefect's `clamped_poisson_interval` when `retry_jitter_factor` is set (a fresh
    draw per member and retry). A callable delay is resolved as Prefect's `Task` does,
    called with `retries`.

    Raises:
        ConfigurationError: `task` has a `retry_condition_fn`.
    """

    def __init__(self, task: Task[..., Any]) -> None:
        if task.retry_condition_fn is not None:
            raise ConfigurationError(
                f"Task {task.name!r} has a retry_condition_fn, which ensemble_map cannot "
                "apply: the backend retries a failed member without asking Prefect. Use "
                "task.map (one task run per member, retried by Prefect), or a task without "
                "retry_condition_fn (ensemble_map honours retries, retry_delay_seconds and "
                "retry_jitter_factor)", config_key="retry_condition_fn",
            )
        self.retries = int(task.retries or 0)
        delay = task.retry_delay_seconds
        if callable(delay):  # Task() resolves it already; this one was set afterwards
            delay = delay(self.retries)
        delays = ([float(d) for d in delay] if isinstance(delay, (list, tuple))
                  else float(delay or 0))
        self.jitter = float(task.retry_jitter_factor or 0)
        #: The keys every member shares.
        self.keys: TaskDict = {"retries": self.retries, "retry_delay": delays}
        if task.timeout_seconds:
            self.keys["timeout"] = float(task.timeout_seconds)
        self.drawn = bool(self.jitter and self.retries)

    def member_keys(self) -> TaskDict:
        """One member's own keys: its drawn delays, with jitter (else none)."""
        if not self.drawn:
            return {}
        bases = [retry_delay(self.keys, retry) for retry in range(1, self.retries + 1)]
        return {"retry_delay": [
            clamped_poisson_interval(base, clamping_factor=self.jitter) if base > 0 else base
            for base in bases]}


class Ensemble:
    """One ensemble's task run body (on the runner's loop) and its members' group."""

    def __init__(
        self,
        dispatcher: BodyDispatcher,
        task: Task[..., Any],
        keywords: list[str],
        mapped: list[bool],
        allow_failures: bool,
        artifacts: bool,
        interval: float,
        retries: MemberRetries,
    ) -> None:
        self.dispatcher = dispatcher
        self.backend = dispatcher.backend
        self.task = task
        self.retries = retries
        self.keywords = keywords
        self.mapped = mapped
        self.allow_failures = allow_failures
        self.artifacts = artifacts
        self.interval = interval
        self.tally = Tally(self._member_done)
        self.specs: list[TaskDict] = []
        self.expected: int | None = None
        self._finished: asyncio.Future[None] | None = None
        self._run_logger: Any = None

    # ------------------------------------------------------------- the group
    def on_state(self, task: TaskDict, state: TaskState) -> None:
        self.tally.on_state(task, state)
        if state.is_terminal and self._run_logger is not None:
            logs = task.get("logs")
            if logs:
                replay(self._run_logger, logs)

    def _member_done(self) -> None:
        if (self.expected is not None and self.tally.done >= self.expected
                and self._finished is not None and not self._finished.done()):
            self._finished.set_result(None)

    async def cancel(self) -> None:
        """Cancel every member that has not ended (the dispatcher stops the submitting)."""
        await cancel_many(self.backend, self._outstanding())

    def _outstanding(self) -> list[str]:
        return [s["uid"] for s in self.specs if not TaskState(s["state"]).is_terminal]

    # ---------------------------------------------------------- the task run
    async def run(self, columns: list[Any]) -> Any:
        """The ensemble's task run body: submit the members, wait, gather results."""
        run_context = TaskRunContext.get()
        assert run_context is not None and run_context.task_run is not None
        task_run = run_context.task_run
        count = member_count(columns, self.mapped)
        assert count is not None  # futures were resolved by the engine
        self._run_logger = get_run_logger()
        self._finished = asyncio.get_running_loop().create_future()
        bodies = BodySpec.here(self.task, self.task.fn, self.retries.keys)
        reporter = None
        if self.artifacts:
            named = self.dispatcher.name if self.dispatcher.named else None
            reporter = Reporter(self.tally, self.backend, f"ensemble {task_run.name}",
                                task_run.flow_run_id, task_run.id, self.interval, name=named)
            reporter.start()  # the artifact is created while the members are submitted
        try:
            with self.dispatcher.join(bodies.group, self):
                try:
                    await self._submit(bodies, columns, count)
                except Exception:  # a member the backend refused: none of them runs
                    await self.cancel()
                    raise
                self.expected = len(self.specs)
                self._member_done()
                await self._finished
        except asyncio.CancelledError:  # Prefect's timeout or the flow torn down
            asyncio.get_running_loop().create_task(cancel_many(self.backend, self._outstanding()))
            raise
        finally:
            if reporter is not None:
                await asyncio.shield(reporter.finish())
        return await self._results(count, bodies.group)

    async def _submit(self, bodies: BodySpec, columns: list[Any], count: int) -> None:
        positional = len(columns) - len(self.keywords)
        getters = [(c.__getitem__ if m else _constant(c))
                   for c, m in zip(columns, self.mapped, strict=True)]
        names = self.keywords
        for start in range(0, count, CHUNK):
            if self.dispatcher.cancelled:
                break
            chunk = []
            for index in range(start, min(count, start + CHUNK)):
                values = [get(index) for get in getters]
                args, kwargs = values[:positional], dict(zip(names, values[positional:],
                                                             strict=True))
                chunk.append(bodies.build(index, args, kwargs, **self.retries.member_keys()))
            if bodies.command is not None:
                self._take_routes(chunk)
            await self.backend.submit_tasks(chunk)
            self.specs.extend(chunk)
            if self.dispatcher.cancelled:  # cancel_all ran while this chunk was handed over
                await cancel_many(self.backend, [spec["uid"] for spec in chunk])
                break
            await asyncio.sleep(0)

    def _take_routes(self, chunk: list[TaskDict]) -> None:
        """Take the members' own `"backend"` keys out: each must be this ensemble's."""
        for spec in chunk:
            named = spec.pop("backend", None)
            if named is not None and named != self.dispatcher.name:
                raise ConfigurationError(
                    f"Member {spec['uid']} names the backend {named!r}, but the members of "
                    f"an ensemble go to one backend, here {self.dispatcher.name!r}; pass "
                    f"backend={named!r} to ensemble_map", config_key="backend")

    async def _results(self, count: int, key: str) -> Any:
        results: list[Any] = []
        failures: list[tuple[int, str, BaseException]] = []
        cancelled = 0
        for index, spec in enumerate(self.specs):
            try:
                value = await prefect_result(spec)
            except Exception as error:
                failures.append((index, spec["uid"], error))
                value = error
            if isinstance(value, State):  # a cancelled member, or a body that crashed
                if value.is_cancelled():
                    cancelled += 1
                else:
                    value = TaskError(value.message or "crashed", task_uid=spec["uid"])
                    failures.append((index, spec["uid"], value))
            results.append(value)
        summary = self.tally.line()
        self._run_logger.info("Ensemble of %d members on backend %r: %s", count,
                              self.dispatcher.name, summary.rsplit(",", 1)[0])
        if cancelled or len(self.specs) < count:
            return Cancelled(message=f"{cancelled + count - len(self.specs)} of {count} "
                                     "members were cancelled")
        if failures and not self.allow_failures:
            raise failure(failures, count, self.task, key)
        return results


def failure(
    failures: list[tuple[int, str, BaseException]], count: int, task: Task[..., Any], key: str
) -> EnsembleFailed:
    """The error of an ensemble whose members failed: counted, the first few listed."""
    retries = int(task.retries or 0)
    lines = [f"{len(failures)} of {count} members of {task.name!r} failed"
             + (f" after {retries} backend retries each" if retries else "") + ":"]
    for index, uid, error in failures[:LISTED_FAILURES]:
        lines.append(f"  member {index} ({uid}): {describe(error)}")
    if len(failures) > LISTED_FAILURES:
        lines.append(f"  ... and {len(failures) - LISTED_FAILURES} more")
    return EnsembleFailed("\n".join(lines), task_uid=key, details={
        "failed": len(failures), "members": count, "indices": [f[0] for f in failures]})


def describe(error: BaseException) -> str:
    """'exit code 2' for a command, else 'ValueError: boom' (first line, shortened)."""
    code = getattr(error, "exit_code", None)
    if isinstance(error, TaskError) and code is not None:
        return f"exit code {code}"
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= 200 else text[:197] + "..."


def _constant(value: Any) -> Any:
    return lambda _index: value


__all__ = ["EnsembleFailed", "ensemble_map"]
