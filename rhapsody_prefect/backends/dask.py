"""The `dask` backend: tasks run on a Dask distributed cluster.

    import rhapsody_prefect as rhapsody

    # A LocalCluster with 4 threads in total, started and closed by the backend:
    async with rhapsody.get_backend("dask", resources={"threads": 4}) as backend:
        await backend.submit_tasks([
            {"function": sum, "args": ([1, 2, 3],)},
            {"executable": "/bin/echo", "arguments": ["hello"]},
        ])
        await backend.wait()

    # An existing cluster: by scheduler address, or as a cluster object
    # (never closed by the backend):
    backend = rhapsody.get_backend("dask", address="tcp://10.0.0.5:8786")
    backend = rhapsody.get_backend("dask", cluster=SLURMCluster(...), adapt_kwargs={"maximum": 20})

    # A cluster class the backend starts and closes (the DaskTaskRunner shapes):
    backend = rhapsody.get_backend(
        "dask",
        cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs={"cores": 32, "memory": "64GB", "walltime": "01:00:00"},
        adapt_kwargs={"minimum": 1, "maximum": 10},
        client_kwargs={"timeout": "60s"},
    )

Function tasks (sync or async) run in a worker thread; executable tasks run
as a subprocess on the worker (`commands.run_command`), which the worker kills
when the task is cancelled. A task's `ranks * cores_per_rank` and
`ranks * gpus_per_rank` become Dask worker resources ("CPU" / "GPU", or the
names the workers declare, see `resource_names`) when the workers declare
them; a task that needs a resource no worker has is refused with a
ConfigurationError instead of waiting forever.

Dask calls back on the client's event loop thread; the backend only reports
states from there (`ExecutionBackend._report`), it never blocks that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import cloudpickle
import dask
import distributed
from distributed import Client, Future
from distributed.core import Status

from ..calls import call_function, portable_exception
from ..commands import CommandStopped, run_command
from ..constants import BackendType, TaskState
from ..exceptions import BackendError, ConfigurationError
from ..tasks import TaskDict, is_function_task
from .base import ExecutionBackend

logger = logging.getLogger("rhapsody_prefect.backends.dask")

#: Dask's states -> TaskState, in one place. Keys are the client's Future.status
#: values and the scheduler's and workers' task states.
DASK_STATES: Mapping[str, TaskState] = MappingProxyType({
    # client side: Future.status
    "pending": TaskState.WAITING,
    "finished": TaskState.COMPLETED,
    "error": TaskState.FAILED,
    "lost": TaskState.FAILED,
    "cancelled": TaskState.CANCELED,
    # scheduler side
    "released": TaskState.WAITING,
    "waiting": TaskState.WAITING,
    "no-worker": TaskState.WAITING,
    "queued": TaskState.READY,
    "processing": TaskState.READY,
    "memory": TaskState.COMPLETED,
    "erred": TaskState.FAILED,
    "forgotten": TaskState.CANCELED,
    # worker side
    "constrained": TaskState.READY,
    "ready": TaskState.READY,
    "executing": TaskState.EXECUTING,
    "long-running": TaskState.EXECUTING,
})

#: Resource names looked up (case-insensitively) among the workers' declared resources.
DEFAULT_RESOURCE_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "cores": ("CPU", "CPUS", "CORES", "CORE"),
    "gpus": ("GPU", "GPUS"),
})

#: `resources=` keys (a LocalCluster the backend starts).
RESOURCE_KEYS = ("threads", "workers", "threads_per_worker", "memory_limit")
#: Per-task `backend_kwargs` the backend understands (passed to `Client.submit`).
TASK_BACKEND_KWARGS = ("resources", "workers", "allow_other_workers", "priority")
#: Reason given to Dask when this backend cancels a future.
CANCEL_REASON = "rhapsody-cancel"
#: Seconds the worker info used to check task resources is cached.
WORKER_INFO_TTL = 1.0
#: Command keys shipped to the worker for an executable task.
COMMAND_KEYS = ("executable", "arguments", "shell", "ranks", "pre_exec", "environment", "cwd")


def availability() -> tuple[bool, str]:
    """Whether the backend's dependencies import (starts nothing)."""
    missing = [name for name in ("dask", "distributed") if importlib.util.find_spec(name) is None]
    if missing:
        return False, (
            f"The dask backend needs {', '.join(missing)}; "
            "install it with: pip install 'rhapsody-prefect[dask]'"
        )
    return True, f"dask {dask.__version__}, distributed {distributed.__version__}"


class WorkerLost(BackendError):
    """Dask workers died while running the task (Dask's KilledWorker)."""


class SchedulerLost(BackendError):
    """The client lost its connection to the Dask scheduler."""


# ----------------------------------------------------------------- worker side
def _run_on_worker(payload: bytes, topic: str | None, key: str) -> tuple[str, Any]:
    """Runs in a Dask worker thread; never raises (the outcome travels as data)."""
    worker = _current_worker()
    if worker is not None and topic:
        with contextlib.suppress(Exception):
            worker.log_event(topic, key)
    try:
        kind, body = cloudpickle.loads(payload)
        if kind == "function":
            function, args, kwargs = body
            return "value", call_function(function, args, kwargs)
        result = run_command(body, stop=lambda: _stop_requested(worker, key))
        return "command", (result.exit_code, result.stdout, result.stderr)
    except CommandStopped:
        return "stopped", None
    except BaseException as error:  # never let a BaseException escape a worker
        return "error", portable_exception(error)


def _current_worker() -> distributed.Worker | None:
    try:
        return distributed.get_worker()
    except ValueError:
        return None


def _stop_requested(worker: distributed.Worker | None, key: str) -> bool:
    """True once the task was cancelled, or the worker is shutting down."""
    if worker is None:
        return False
    if worker.status in (Status.closing, Status.closed, Status.failed):
        return True
    task = worker.state.tasks.get(key)
    return task is None or task.state in ("cancelled", "released", "forgotten")


# ----------------------------------------------------------------- the backend
class DaskBackend(ExecutionBackend):
    """Runs tasks on a Dask distributed cluster: started here, or an existing one."""

    backend_type = BackendType.DASK
    slots = None  # Dask schedules

    def __init__(
        self,
        resources: Mapping[str, Any] | None = None,
        *,
        address: str | None = None,
        cluster: Any = None,
        cluster_class: str | type | None = None,
        cluster_kwargs: Mapping[str, Any] | None = None,
        adapt_kwargs: Mapping[str, Any] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        resource_names: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ConfigurationError(
                f"Unknown option(s) {sorted(kwargs)} for the dask backend; allowed: resources, "
                "address, cluster, cluster_class, cluster_kwargs, adapt_kwargs, client_kwargs, "
                "resource_names",
                config_key=sorted(kwargs)[0],
            )
        for key, value in (
            ("resources", resources),
            ("cluster_kwargs", cluster_kwargs),
            ("adapt_kwargs", adapt_kwargs),
            ("client_kwargs", client_kwargs),
            ("resource_names", resource_names),
        ):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigurationError(
                    f"{key} must be a dict, got {type(value).__name__}", config_key=key
                )
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigurationError(
                f"address must be a scheduler address str, got {address!r}", config_key="address"
            )
        if cluster is not None and not hasattr(cluster, "scheduler_address"):
            raise ConfigurationError(
                f"cluster must be a Dask cluster object (with scheduler_address), got {cluster!r}",
                config_key="cluster",
            )
        if cluster_class is not None and not isinstance(cluster_class, (str, type)):
            raise ConfigurationError(
                f"cluster_class must be a class or an import path str, got {cluster_class!r}",
                config_key="cluster_class",
            )
        if address is not None and cluster is not None:
            raise ConfigurationError("Pass either address or cluster, not both", "cluster")
        if address is not None or cluster is not None:
            given = "address" if address is not None else "cluster"
            for key, value in (
                ("resources", resources),
                ("cluster_class", cluster_class),
                ("cluster_kwargs", cluster_kwargs),
            ):
                if value:
                    raise ConfigurationError(
                        f"{key} configures a cluster the backend starts; it cannot be "
                        f"combined with {given}=",
                        config_key=key,
                    )
        if address is not None and adapt_kwargs:
            raise ConfigurationError(
                "adapt_kwargs needs a cluster object; with address= scale the cluster yourself",
                config_key="adapt_kwargs",
            )
        client_kwargs = dict(client_kwargs or {})
        for key in ("address", "asynchronous"):
            if key in client_kwargs:
                raise ConfigurationError(
                    f"client_kwargs may not set {key!r}; the backend sets it",
                    config_key="client_kwargs",
                )
        client_kwargs.setdefault("set_as_default", False)
        names = dict(resource_names or {})
        for key, value in names.items():
            if key not in DEFAULT_RESOURCE_NAMES or not isinstance(value, str):
                raise ConfigurationError(
                    f"resource_names maps {sorted(DEFAULT_RESOURCE_NAMES)} to the resource "
                    f"names your workers declare, got {key!r}: {value!r}",
                    config_key="resource_names",
                )
        super().__init__()
        self.address = address
        self.cluster = cluster
        self.cluster_class = cluster_class
        self.cluster_kwargs = self._cluster_kwargs(resources, cluster_kwargs)
        self.adapt_kwargs = dict(adapt_kwargs or {})
        self.client_kwargs = client_kwargs
        self.resource_names = names
        self._client: Client | None = None
        self._own_cluster: Any = None
        self._token = uuid.uuid4().hex[:8]
        self._topic = f"rhapsody-{self._token}"
        # uid -> current Dask key; key -> (uid, future). Written on the backend loop only.
        self._key_of: dict[str, str] = {}
        self._futures: dict[str, tuple[str, Future]] = {}
        self._cancelling: set[str] = set()
        self._watchers: set[asyncio.Task[None]] = set()  # client loop only
        self._worker_info: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._scheduler_lost = False

    @staticmethod
    def _cluster_kwargs(
        resources: Mapping[str, Any] | None, cluster_kwargs: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = {}
        resources = dict(resources or {})
        unknown = sorted(set(resources) - set(RESOURCE_KEYS))
        if unknown:
            raise ConfigurationError(
                f"Unknown resources key(s) {unknown}; allowed: {list(RESOURCE_KEYS)}",
                config_key="resources",
            )
        for key in ("threads", "workers", "threads_per_worker"):
            value = resources.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigurationError(
                    f"resources['{key}'] must be an int >= 1, got {value!r}",
                    config_key="resources",
                )
        threads = resources.get("threads")
        workers = resources.get("workers")
        per_worker = resources.get("threads_per_worker")
        if threads is not None:
            if workers is None and per_worker is None:
                workers = _workers_for(threads)
            if workers is not None and per_worker is None:
                per_worker = max(1, math.ceil(threads / workers))
            elif per_worker is not None and workers is None:
                workers = max(1, math.ceil(threads / per_worker))
            if workers * per_worker != threads:
                raise ConfigurationError(
                    f"resources: threads={threads} is not workers * threads_per_worker "
                    f"({workers} * {per_worker})",
                    config_key="resources",
                )
        if workers is not None:
            result["n_workers"] = workers
        if per_worker is not None:
            result["threads_per_worker"] = per_worker
        if resources.get("memory_limit") is not None:
            result["memory_limit"] = resources["memory_limit"]
        result.update(cluster_kwargs or {})
        return result

    # ----------------------------------------------------------------- hooks
    async def _start(self) -> None:
        self._client = await asyncio.to_thread(self._connect)
        self._client.subscribe_topic(self._topic, self._on_event)

    def _connect(self) -> Client:
        """Create (or reach) the cluster and a client; runs in a worker thread."""
        if self.address is not None:
            return Client(self.address, **self.client_kwargs)
        if self.cluster is not None:
            if self.adapt_kwargs:
                self.cluster.adapt(**self.adapt_kwargs)
            return Client(self.cluster, **self.client_kwargs)
        cluster_class = _load_cluster_class(self.cluster_class)
        cluster = cluster_class(**self.cluster_kwargs)
        self._own_cluster = cluster
        try:
            if self.adapt_kwargs:
                cluster.adapt(**self.adapt_kwargs)
            return Client(cluster, **self.client_kwargs)
        except BaseException:
            self._own_cluster = None
            cluster.close()
            raise

    async def _launch(self, tasks: list[TaskDict]) -> None:
        client = self._client
        if client is None or client.status != "running" or self._scheduler_lost:
            raise SchedulerLost(
                f"The Dask client is not connected to the scheduler "
                f"({client.status if client else 'no client'})",
                self.backend_type,
            )
        launched: list[tuple[str, str, Future]] = []
        for task in tasks:
            uid = task["uid"]
            key = f"rhapsody-{uid}-{self.attempt_of(uid)}-{self._token}"
            try:
                payload = cloudpickle.dumps(_payload(task))
                future = client.submit(
                    _run_on_worker, payload, self._topic, key,
                    key=key, pure=False, retries=0, **self._submit_options(task),
                )
            except Exception as error:
                self._report(uid, TaskState.FAILED, exception=error)
                continue
            self._key_of[uid] = key
            self._futures[key] = (uid, future)
            launched.append((uid, key, future))
        if launched:
            client.loop.add_callback(self._start_watchers, launched)

    async def _cancel(self, uids: list[str]) -> None:
        client = self._client
        futures = []
        for uid in uids:
            key = self._key_of.get(uid)
            entry = self._futures.get(key) if key else None
            if entry is not None:
                self._cancelling.add(key)
                futures.append(entry[1])
        if client is None or not futures:
            return
        await self._on_client_loop(client.cancel(
            futures, asynchronous=True, reason=CANCEL_REASON,
            msg="Cancelled by the rhapsody dask backend",
        ))

    async def _shutdown(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        client, cluster = self._client, self._own_cluster
        self._client = self._own_cluster = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(self._topic)
            try:
                client.close()
            except Exception:
                logger.warning("Closing the Dask client failed", exc_info=True)
        if cluster is not None:  # only a cluster this backend started
            try:
                cluster.close()
            except Exception:
                logger.warning("Closing the Dask cluster failed", exc_info=True)

    def _check_task(self, task: TaskDict) -> None:
        kwargs = task.get("backend_kwargs") or {}
        unknown = sorted(set(kwargs) - set(TASK_BACKEND_KWARGS))
        if unknown:
            raise ConfigurationError(
                f"Task '{task['uid']}': backend_kwargs {unknown} are not dask options; "
                f"allowed: {list(TASK_BACKEND_KWARGS)}",
                config_key="backend_kwargs",
            )
        extra = kwargs.get("resources") or {}
        if not isinstance(extra, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in extra.items()
        ):
            raise ConfigurationError(
                f"Task '{task['uid']}': backend_kwargs['resources'] must map resource "
                f"names to numbers, got {extra!r}",
                config_key="backend_kwargs",
            )
        workers = self._workers()
        if not workers:
            return  # nothing to check against yet (e.g. an adaptive cluster at zero)
        for name, amount, config_key in self._requirements(task, workers):
            best = max(w["resources"].get(name, 0) for w in workers)
            if best >= amount:
                continue
            have = f"at most {best:g}" if best else "no"
            raise ConfigurationError(
                f"Task '{task['uid']}' needs {amount:g} {name} but the Dask workers have "
                f"{have} {name} (declared worker resources: {_declared(workers)}); it would "
                "never run",
                config_key=config_key,
            )
        cores = task["ranks"] * task["cores_per_rank"]
        threads = max(w["nthreads"] or 0 for w in workers)
        if self._resource_name("cores", workers) is None and cores > threads:
            raise ConfigurationError(
                f"Task '{task['uid']}' needs {cores} cores (ranks * cores_per_rank) but the "
                f"largest Dask worker has {threads} threads and the workers declare no CPU "
                "resource (start them with --resources CPU=<n> to let Dask reserve cores)",
                config_key="cores_per_rank" if task["cores_per_rank"] > 1 else "ranks",
            )

    # ---------------------------------------------------------------- helpers
    def _submit_options(self, task: TaskDict) -> dict[str, Any]:
        kwargs = task.get("backend_kwargs") or {}
        options: dict[str, Any] = {
            k: kwargs[k] for k in ("workers", "allow_other_workers", "priority") if k in kwargs
        }
        resources = self._task_resources(task, self._workers(refresh=False))
        if resources:
            options["resources"] = resources
        return options

    def _requirements(
        self, task: TaskDict, workers: list[dict[str, Any]]
    ) -> list[tuple[str, float, str]]:
        """(Dask resource name, amount, task key asking for it) for `task`."""
        ranks, cores_per_rank = task["ranks"], task["cores_per_rank"]
        requirements: list[tuple[str, float, str]] = []
        cores_name = self._resource_name("cores", workers)
        if cores_name is not None:
            key = "cores_per_rank" if cores_per_rank > 1 else "ranks"
            requirements.append((cores_name, ranks * cores_per_rank, key))
        if task["gpus_per_rank"]:
            requirements.append((
                self._resource_name("gpus", workers) or "GPU",
                ranks * task["gpus_per_rank"],
                "gpus_per_rank",
            ))
        extra = (task.get("backend_kwargs") or {}).get("resources") or {}
        requirements.extend((name, amount, "backend_kwargs") for name, amount in extra.items())
        return requirements

    def _task_resources(self, task: TaskDict, workers: list[dict[str, Any]]) -> dict[str, float]:
        """Dask resources for `task`: cores/GPUs under the names the workers declare."""
        return {name: amount for name, amount, _ in self._requirements(task, workers)}

    def _resource_name(self, kind: str, workers: list[dict[str, Any]]) -> str | None:
        if kind in self.resource_names:
            return self.resource_names[kind]
        declared = {name.upper(): name for w in workers for name in w["resources"]}
        for candidate in DEFAULT_RESOURCE_NAMES[kind]:
            if candidate in declared:
                return declared[candidate]
        return None

    def _workers(self, refresh: bool = True) -> list[dict[str, Any]]:
        """The workers' info (cached for WORKER_INFO_TTL seconds)."""
        fetched, workers = self._worker_info
        client = self._client
        if (
            refresh
            and client is not None
            and client.status == "running"
            and time.monotonic() - fetched > WORKER_INFO_TTL
        ):
            try:
                info = client.scheduler_info(n_workers=-1)
            except Exception:
                logger.debug("Could not fetch the Dask workers' info", exc_info=True)
            else:
                workers = [
                    {"resources": dict(w.get("resources") or {}), "nthreads": w.get("nthreads")}
                    for w in info.get("workers", {}).values()
                ]
                self._worker_info = (time.monotonic(), workers)
        return workers

    async def _on_client_loop(self, coro: Any) -> Any:
        assert self._client is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._client.loop.asyncio_loop)
        return await asyncio.wrap_future(future)

    # ------------------------------------------------- on the client's loop
    def _on_event(self, event: tuple[float, Any]) -> None:
        _, key = event
        entry = self._futures.get(key)
        if entry is not None and self._key_of.get(entry[0]) == key:
            self._report(entry[0], TaskState.EXECUTING)

    def _start_watchers(self, launched: list[tuple[str, str, Future]]) -> None:
        for uid, key, future in launched:
            watcher = asyncio.ensure_future(self._watch(uid, key, future))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, uid: str, key: str, future: Future) -> None:
        client = self._client
        state: TaskState
        results: dict[str, Any]
        try:
            if client is None:
                raise SchedulerLost("The Dask client was closed", self.backend_type)
            (envelope,) = await client.gather([future], asynchronous=True)
        except BaseException as error:  # every outcome must be reported
            state, results = self._failure(uid, key, future, error)
        else:
            state, results = _unpack(envelope)
        del future
        self._report(uid, state, **results)
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._forget, uid, key)

    def _failure(
        self, uid: str, key: str, future: Future, error: BaseException
    ) -> tuple[TaskState, dict[str, Any]]:
        state = DASK_STATES.get(future.status or "", TaskState.FAILED)
        if state is TaskState.CANCELED:
            reason = getattr(future._state.exception, "reason", None) if future._state else None
            if key in self._cancelling or reason == CANCEL_REASON:
                return TaskState.CANCELED, {}
            if reason == "scheduler-connection-lost":
                lost = SchedulerLost(
                    f"Lost the connection to the Dask scheduler at {self._scheduler_address()}; "
                    "the task's outcome is unknown",
                    self.backend_type,
                )
                self._lose_scheduler(lost)
                return TaskState.FAILED, {"exception": lost}
            return TaskState.FAILED, {"exception": BackendError(
                f"Dask cancelled task '{uid}' (key {key}): {error}", self.backend_type
            )}
        if isinstance(error, distributed.KilledWorker):
            return TaskState.FAILED, {"exception": WorkerLost(
                f"Task '{uid}' failed: KilledWorker: the Dask workers running it died "
                f"({error})",
                self.backend_type,
                details={"key": key},
            )}
        if isinstance(error, asyncio.CancelledError):
            error = BackendError(
                f"The Dask client stopped watching task '{uid}'", self.backend_type
            )
        return TaskState.FAILED, {"exception": error}

    def _lose_scheduler(self, error: BackendError) -> None:
        if self._scheduler_lost:
            return
        self._scheduler_lost = True
        logger.error("%s", error)
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fail_outstanding, error)

    def _scheduler_address(self) -> str:
        with contextlib.suppress(Exception):
            if self._client is not None and self._client.scheduler is not None:
                return str(self._client.scheduler.address)
        return str(self.address)

    # ---------------------------------------------------- on the backend loop
    def _forget(self, uid: str, key: str) -> None:
        self._futures.pop(key, None)
        self._cancelling.discard(key)
        if self._key_of.get(uid) == key:
            del self._key_of[uid]

    @property
    def client(self) -> Client | None:
        """The Dask client, once started."""
        return self._client

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self._client, "dashboard_link", None) if self._client else None


def _payload(task: TaskDict) -> tuple[str, Any]:
    if is_function_task(task):
        return "function", (task["function"], task["args"], task["kwargs"])
    return "command", {key: task.get(key) for key in COMMAND_KEYS}


def _unpack(envelope: tuple[str, Any]) -> tuple[TaskState, dict[str, Any]]:
    kind, body = envelope
    if kind == "value":
        return TaskState.COMPLETED, {"return_value": body}
    if kind == "command":
        exit_code, stdout, stderr = body
        state = TaskState.COMPLETED if exit_code == 0 else TaskState.FAILED
        return state, {"exit_code": exit_code, "stdout": stdout, "stderr": stderr}
    if kind == "stopped":
        return TaskState.CANCELED, {}
    return TaskState.FAILED, {"exception": body}


def _workers_for(threads: int) -> int:
    """Worker processes for `threads` threads: the largest divisor <= CPU count."""
    cpus = os.cpu_count() or 1
    return max(n for n in range(1, min(threads, cpus) + 1) if threads % n == 0)


def _load_cluster_class(cluster_class: str | type | None) -> type:
    if cluster_class is None:
        return distributed.LocalCluster
    if isinstance(cluster_class, type):
        return cluster_class
    module_name, _, attr = cluster_class.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigurationError(
            f"cluster_class {cluster_class!r} cannot be imported: {error}",
            config_key="cluster_class",
        ) from error


def _declared(workers: list[dict[str, Any]]) -> dict[str, float]:
    declared: dict[str, float] = {}
    for worker in workers:
        for name, amount in worker["resources"].items():
            declared[name] = max(declared.get(name, 0), amount)
    return declared


__all__ = [
    "DASK_STATES",
    "DaskBackend",
    "SchedulerLost",
    "WorkerLost",
    "availability",
]
