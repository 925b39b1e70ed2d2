"""Several backends in one flow run: which backend a body goes to, and their lifecycle.

    from prefect import flow, tags, task
    from rhapsody_prefect import RhapsodyRunner, ensemble_map, executable_task, task_resources

    @executable_task
    def simulate(seed: int) -> dict:
        return {"executable": "./md-sim", "arguments": [str(seed)], "backend": "pilot"}

    @task
    @task_resources(backend="local")
    def analyse(path: str) -> float: ...

    @flow(task_runner=RhapsodyRunner(backends={
        "pilot": {"backend": "radical_pilot", "resource": "mysite.slurm", "cores": 4},
        "local": "concurrent",
        "dask": {"backend": "dask", "address": "tcp://scheduler:8786"},
    }, default="local"))
    def mixed() -> None:
        runs = [simulate.submit(seed) for seed in range(8)]          # on the pilot
        scores = [analyse.submit(r) for r in runs]                    # on concurrent
        with tags("rhapsody:dask"):                                   # every task in here
            ensemble_map(analyse, range(1000), backend="dask")

A body goes to the first of (`Routing.route`): the name its own call gives (the
`"backend"` key of the dict an `executable_task` returns, `ensemble_map(...,
backend=)`), its `task_resources(backend=)`, its Prefect tag `rhapsody:NAME`
(`@task(tags=)`, `.with_options(tags=)`, `with tags(...)`; two such tags on one run
are an error), the runner's `default`. A name that is not the runner's fails that
task run, listing the runner's names. The `"backend"` key never reaches a backend:
it is taken out of the task dict here (an upstream RHAPSODY backend refuses keys it
cannot apply, and routing is this adapter's business, not the backends').

`BackendSpec` is one configured backend, checked where the runner is built (the
backend is constructed and dropped). `Backends` is one flow run's set: a
`BodyDispatcher` per name, whose backend is created and started when the first
body is routed to it (once, however many bodies arrive meanwhile; a failed start
fails every body routed there), all cancelled by `cancel_all` and all terminated
together when the flow run ends. The single-backend form `RhapsodyRunner("dask",
...)` is the same thing with one name, the registry name.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.loggers import flow_run_logger
from prefect.states import Cancelled
from prefect.tasks import Task

from ..backends.discovery import BackendRegistry, get_backend
from ..core.contract import BaseExecutionBackend
from ..core.exceptions import ConfigurationError
from .body_spec import BodySpec
from .dispatch import FLOW_SIDE_ATTRIBUTE, BodyDispatcher
from .timeline import TransitionLines, notice_listener

logger = logging.getLogger("rhapsody_prefect.runner")

#: A Prefect tag `rhapsody:NAME` routes a task run's body to the backend NAME.
TAG_PREFIX = "rhapsody:"


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """One backend of a runner: its name there, its registry name, its constructor options."""

    name: str
    registry_name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: One of several (`backends=`): errors and artifacts say which one.
    named: bool = False

    @classmethod
    def parse(cls, name: Any, spec: Any) -> BackendSpec:
        """`"registry_name"` or `{"backend": registry_name, **constructor_kwargs}`."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"backends= needs names that are non-empty str, got {name!r}", "backends")
        if isinstance(spec, str):
            return cls(name, spec, named=True)
        if isinstance(spec, Mapping) and isinstance(spec.get("backend"), str):
            options = {k: v for k, v in spec.items() if k != "backend"}
            return cls(name, spec["backend"], kwargs=options, named=True)
        raise ConfigurationError(
            f"Backend {name!r}: a spec is a registry name or a dict "
            f"{{'backend': registry_name, **options}}, got {spec!r}", f"backends.{name}")

    def check(self) -> None:
        """Fail where the flow is defined: an unknown registry name or a bad option.

        The backend is constructed (which checks its options) and dropped; nothing
        starts. A backend whose optional dependencies are missing here is not
        checked (the flow may be deployed from a machine that will not run it).
        """
        where = f"Backend {self.name!r}: " if self.named else ""
        try:
            backend_class = BackendRegistry.get_backend_class(self.registry_name)
        except ValueError:
            raise ConfigurationError(
                f"{where}Unknown backend {self.registry_name!r}; registered backends: "
                f"{BackendRegistry.list_backends()}",
                config_key=f"backends.{self.name}" if self.named else "backend",
            ) from None
        except ImportError as error:
            logger.debug("Not checking the options of %r here: %s", self.registry_name, error)
            return
        try:
            backend_class(*self.args, **self.kwargs)
        except ConfigurationError as error:
            if not self.named:
                raise
            raise ConfigurationError(
                f"{where}{error.message}", f"backends.{self.name}.{error.config_key}",
                error.details) from error
        except TypeError as error:
            raise ConfigurationError(
                f"{where}Bad options for the {self.registry_name!r} backend: {error}",
                config_key=f"backends.{self.name}" if self.named else "backend_kwargs",
            ) from error

    def create(self) -> BaseExecutionBackend:
        return get_backend(self.registry_name, *self.args, **self.kwargs)


@dataclasses.dataclass(frozen=True)
class Routing:
    """A runner's backends by name and its default: where each body goes (picklable)."""

    specs: Mapping[str, BackendSpec]
    default: str

    @classmethod
    def single(cls, registry_name: str, args: tuple[Any, ...],
               kwargs: Mapping[str, Any]) -> Routing:
        return cls({registry_name: BackendSpec(registry_name, registry_name, args, kwargs)},
                   registry_name)

    @classmethod
    def several(cls, backends: Any, default: Any) -> Routing:
        """`backends=` and `default=` of the runner, checked (ConfigurationError)."""
        if not isinstance(backends, Mapping) or not backends:
            raise ConfigurationError(
                f"backends= needs a non-empty dict of name -> spec, got {backends!r}",
                "backends")
        specs = {name: BackendSpec.parse(name, spec) for name, spec in backends.items()}
        if default is None:
            default = next(iter(specs))  # as upstream's Session: the first backend
        if default not in specs:
            raise ConfigurationError(
                f"default={default!r} is not one of the backends {list(specs)}", "default")
        return cls(specs, default)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def check(self) -> None:
        for spec in self.specs.values():
            spec.check()

    def route(self, named: Any = None, resources: Any = None, tags: Iterable[str] = ()) -> str:
        """The backend for a body: `named` (its call's), else `resources` (its
        `task_resources`), else its `rhapsody:NAME` tag, else the default.

        Raises:
            ConfigurationError: the name is not one of the runner's, or two tags name
                different backends.
        """
        if named is not None:
            name, source = named, "the task's 'backend' key"
        elif resources is not None:
            name, source = resources, "task_resources(backend=...)"
        else:
            tagged = sorted(tag for tag in tags if tag.startswith(TAG_PREFIX))
            if not tagged:
                return self.default
            if len(tagged) > 1:
                raise ConfigurationError(
                    f"The tags {tagged} name {len(tagged)} backends; a task run goes to "
                    f"one (this runner's backends: {self.names})", config_key="backend")
            name, source = tagged[0][len(TAG_PREFIX):], f"the tag {tagged[0]!r}"
        if name not in self.specs:
            raise ConfigurationError(
                f"Backend {name!r} (from {source}) is not one of this runner's backends: "
                f"{self.names}", config_key="backend")
        return str(name)


class Backends:
    """One flow run's backends: a dispatcher per name, each backend started on first use.

    Everything here runs on the runner's loop; the flow thread reaches `started`
    through the loop (`RhapsodyRunner.dispatcher`).
    """

    def __init__(
        self, routing: Routing, level: int | None, executing_log_after: float, artifacts: bool
    ) -> None:
        self.routing = routing
        self.dispatchers = {
            name: BodyDispatcher(TransitionLines(name, level), executing_log_after, artifacts,
                                 named=spec.named)
            for name, spec in routing.specs.items()}
        self.cancelled = False
        self._starts: dict[str, asyncio.Future[None]] = {}
        self._ready: set[str] = set()
        self._unsubscribe: list[Callable[[], None]] = []

    def ready(self, name: str) -> BodyDispatcher | None:
        """The dispatcher of `name` if its backend has started (from any thread)."""
        return self.dispatchers[name] if name in self._ready else None

    async def started(self, name: str) -> BodyDispatcher:
        """The dispatcher of `name`, its backend created and started on first use.

        Call inside the flow run's context: the backend's notices go to its log.
        """
        if name in self._ready:
            return self.dispatchers[name]
        if name not in self.dispatchers:
            self.routing.route(name)  # raises, naming the runner's backends
        starting = self._starts.get(name)
        if starting is None:
            starting = self._starts[name] = asyncio.ensure_future(self._start(name))
        await asyncio.shield(starting)  # a cancelled body leaves the start to the others
        return self.dispatchers[name]

    async def _start(self, name: str) -> None:
        backend = self.routing.specs[name].create()
        notices = getattr(backend, "notices", None)
        if notices is not None:  # e.g. a pilot's batch job, queued: the flow's log
            listener = notice_listener(name, _flow_logger())
            notices.subscribe(listener)
            self._unsubscribe.append(functools.partial(notices.unsubscribe, listener))
        self.dispatchers[name].attach(backend)
        await backend.start()
        self._ready.add(name)

    def proxy(self, task: Task[Any, Any]) -> Task[Any, Any]:
        """A copy of `task` whose fn routes the body and sends it (engine unchanged).

        A fn marked `runs_in_flow` is returned as it is: the engine runs it here.
        """
        if getattr(task.fn, FLOW_SIDE_ATTRIBUTE, False):
            return task
        original = task.fn

        @functools.wraps(original)
        async def send_to_backend(*args: Any, **kwargs: Any) -> Any:
            try:
                return await self.run_body(original, args, kwargs)
            except Exception as error:
                # The user's traceback travels as the error's note ("Remote traceback");
                # the frames of our plumbing between here and the raise say nothing.
                raise error.with_traceback(None) from error.__cause__

        proxy = copy.copy(task)
        proxy.fn = send_to_backend
        proxy.isasync = True
        return proxy

    async def run_body(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Inside the task run: build its body, route it, send it (Prefect retries a plain
        task run itself: a new attempt, a new backend task)."""
        if self.cancelled:
            return Cancelled(message="The task runner was cancelled before this task ran")
        run_context = TaskRunContext.get()
        assert run_context is not None and run_context.task_run is not None
        bodies = BodySpec.here(run_context.task, fn)
        spec = bodies.build(run_context.task_run.run_count, args, kwargs)
        name = self.routing.route(spec.pop("backend", None), bodies.route,
                                  run_context.task_run.tags)
        dispatcher = await self.started(name)
        return await dispatcher.send(spec)

    async def cancel_all(self) -> None:
        """Cancel every body on every backend; send nothing after (started or not)."""
        self.cancelled = True
        await asyncio.gather(*(d.cancel_all() for d in self.dispatchers.values()))

    async def close(self) -> None:
        """The flow run ends: each backend's progress artifact's last value and summary."""
        await asyncio.gather(*(d.close() for d in self.dispatchers.values()))

    async def terminate(self) -> None:
        """Terminate every backend created (together); raise the first failure after all."""
        await asyncio.gather(*self._starts.values(), return_exceptions=True)
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        created = [d.backend for d in self.dispatchers.values() if d.attached]
        results = await asyncio.gather(*(b.terminate() for b in created),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _flow_logger() -> Any:
    """The flow run's logger (a backend serves all its task runs), if in a flow run."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return flow_run_logger(context.flow_run, context.flow)


__all__ = ["TAG_PREFIX", "BackendSpec", "Backends", "Routing"]
