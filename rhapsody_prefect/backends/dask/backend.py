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

    # A started cluster has no dashboard unless asked for (True: 127.0.0.1, a free
    # port; or an address); everything it serves stays on loopback; the link is logged:
    backend = rhapsody.get_backend("dask", dashboard=True)

    # A cluster class the backend starts and closes (the DaskTaskRunner shapes):
    backend = rhapsody.get_backend(
        "dask",
        cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs={"cores": 32, "memory": "64GB", "walltime": "01:00:00"},
        adapt_kwargs={"minimum": 1, "maximum": 10},
        client_kwargs={"timeout": "60s"},
    )

Function tasks (sync or async) run in a worker thread; executable tasks run
as a subprocess on the worker (`body.dask_worker`), which the worker kills
when the task is cancelled. Options are checked in `options`, task resources
against the workers in `worker_resources`.

A launch batch goes to the scheduler as one graph update per set of submit
options (`Client.map`). The launched futures belong to one watcher (`watch`)
on the client's event loop thread, which never blocks that loop: it reports
their start and end (`ExecutionBackend._report`) and cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shlex
import uuid
from collections.abc import Mapping
from typing import Any

import cloudpickle
import distributed
from distributed import Client

from ...body.dask_worker import payload_of, run_on_worker
from ...core.attempt import Attempt
from ...core.constants import BackendType
from ...core.engine import ExecutionBackend
from ...core.outcome import Outcome
from ...core.tasks import TaskDict
from .options import DaskOptions, load_cluster_class, network_kwargs
from .watch import FutureWatcher, Launched, SchedulerLost
from .worker_resources import WorkerResources

logger = logging.getLogger("rhapsody_prefect.backends.dask")

#: Dask's config variable for its loggers' level (read by worker processes at start).
LOG_ENV = "DASK_LOGGING__DISTRIBUTED"


class DaskBackend(ExecutionBackend):
    """Runs tasks on a Dask distributed cluster: started here, or an existing one."""

    backend_type = BackendType.DASK
    slots = None  # Dask schedules

    def __init__(self, resources: Mapping[str, Any] | None = None, **options: Any) -> None:
        checked = DaskOptions.check(resources, **options)
        super().__init__()
        self.address = checked.address
        self.cluster = checked.cluster
        self.cluster_class = checked.cluster_class
        self.cluster_kwargs = checked.cluster_kwargs
        self.adapt_kwargs = checked.adapt_kwargs
        self.client_kwargs = checked.client_kwargs
        self.resource_names = checked.resource_names
        self.log_level = checked.log_level
        self.dashboard = checked.dashboard
        self._saved_log_level: int | None = None
        self._saved_env: str | None = None
        self._worker_resources = WorkerResources(checked.resource_names)
        self._client: Client | None = None
        self._own_cluster: Any = None
        self._guarded: set[int | str] = set()  # worker pids, job ids of _own_cluster
        self._token = uuid.uuid4().hex[:8]
        self._topic = f"rhapsody-{self._token}"
        self._watcher: FutureWatcher | None = None  # owns the launched futures

    # ----------------------------------------------------------------- hooks
    async def _start(self) -> None:
        self._client = await asyncio.to_thread(self._connect)
        self._watcher = FutureWatcher(self._client, self._report, self._break, self.address)
        self._client.subscribe_topic(self._topic, self._watcher.on_event)
        self._guard_own_workers()
        if self._own_cluster is not None and self.dashboard is not False:
            link = self._client.dashboard_link
            if isinstance(self.dashboard, str) and not _on_loopback(self.dashboard):
                logger.warning("Dask dashboard: %s, on %s: anyone who can reach this machine "
                               "can open it%s", link, self.dashboard, _bokeh_hint())
            else:
                logger.info("Dask dashboard: %s%s", link, _bokeh_hint())

    def _connect(self) -> Client:
        """Create (or reach) the cluster and a client; runs in a worker thread."""
        if self.address is not None:
            return Client(self.address, **self.client_kwargs)
        if self.cluster is not None:
            if self.adapt_kwargs:
                self.cluster.adapt(**self.adapt_kwargs)
            return Client(self.cluster, **self.client_kwargs)
        cluster_class = load_cluster_class(self.cluster_class)
        # Dask's scheduler and nannies log in this process, through Prefect's handlers:
        # a cluster we start stays quiet unless the user asks (log_level=logging.INFO).
        dask_logger = logging.getLogger("distributed")
        self._saved_log_level = dask_logger.level
        dask_logger.setLevel(self.log_level)
        # Worker processes configure their loggers from Dask's config at import.
        self._saved_env = os.environ.get(LOG_ENV)
        if self._saved_env is None:
            os.environ[LOG_ENV] = logging.getLevelName(self.log_level).lower()
        kwargs = network_kwargs(cluster_class, self.cluster_kwargs, self.dashboard)
        if cluster_class is distributed.LocalCluster:
            kwargs.setdefault("silence_logs", self.log_level)
        cluster = cluster_class(**kwargs)
        self._own_cluster = cluster
        try:
            if self.adapt_kwargs:
                cluster.adapt(**self.adapt_kwargs)
            return Client(cluster, **self.client_kwargs)
        except BaseException:
            self._own_cluster = None
            cluster.close()
            raise

    def _key(self, attempt: Attempt) -> str:
        """The Dask key of an attempt: its own, so a retry never meets its predecessor."""
        return f"rhapsody-{attempt.uid}-{attempt.number}-{self._token}"

    async def _launch(self, attempts: list[Attempt]) -> None:
        client, watcher = self._client, self._watcher
        if client is None or watcher is None or client.status != "running":
            raise SchedulerLost(
                f"The Dask client is not connected to the scheduler "
                f"({client.status if client else 'no client'})",
                self.backend_type,
            )
        self._guard_own_workers()  # workers an adaptive cluster added since
        # One graph update per set of submit options (usually one for the whole batch).
        groups: dict[str, tuple[dict[str, Any], list[tuple[Attempt, str, bytes]]]] = {}
        for attempt in attempts:
            try:  # a task that cannot be pickled fails alone
                payload = cloudpickle.dumps(payload_of(attempt.task))
                options = self._submit_options(attempt.task)
            except Exception as error:
                self._report(attempt, Outcome.failed(error))
                continue
            groups.setdefault(repr(options), (options, []))[1].append(
                (attempt, self._key(attempt), payload))
        launched: list[Launched] = []
        for options, members in groups.values():
            launched += self._submit_group(client, options, members)
        if launched:
            client.loop.add_callback(watcher.watch, launched)

    def _submit_group(
        self, client: Client, options: dict[str, Any], members: list[tuple[Attempt, str, bytes]]
    ) -> list[Launched]:
        """Submit tasks with the same submit options in one `Client.map` (one graph update)."""
        attempts, keys, payloads = zip(*members, strict=True)
        try:
            futures = client.map(
                run_on_worker, payloads, [self._topic] * len(keys), keys,
                key=list(keys), pure=False, retries=0, **options,
            )
        except Exception as error:
            for attempt in attempts:
                self._report(attempt, Outcome.failed(error))
            return []
        return [Launched(*member) for member in zip(attempts, keys, futures, strict=True)]

    async def _cancel(self, attempts: list[Attempt]) -> None:
        if self._client is not None and self._watcher is not None:
            keys = [self._key(attempt) for attempt in attempts]
            await self._on_client_loop(self._watcher.cancel(keys))

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
        if self._saved_log_level is not None:
            logging.getLogger("distributed").setLevel(self._saved_log_level)
            self._saved_log_level = None
            if self._saved_env is None:
                os.environ.pop(LOG_ENV, None)

    def _check_task(self, task: TaskDict) -> None:
        self._worker_resources.check(task, self._client)

    # ---------------------------------------------------------------- helpers
    def _guard_own_workers(self) -> None:
        """A cluster started here ends if this process dies, even by SIGKILL: a
        LocalCluster's worker processes (children of this process) with all they
        started, and a dask-jobqueue cluster's batch jobs (its cancel command)."""
        workers: list[Any] = []
        with contextlib.suppress(RuntimeError, AttributeError):  # changed on the cluster's loop
            workers = list(self._own_cluster.workers.values()) if self._own_cluster else []
        for worker in workers:
            pid = getattr(getattr(getattr(worker, "process", None), "process", None), "pid", None)
            job, cancel = getattr(worker, "job_id", None), getattr(worker, "cancel_command", None)
            if isinstance(pid, int) and pid not in self._guarded:  # a Nanny's worker process
                self._guarded.add(pid)
                self._guard.kill_tree(pid)
            elif job and isinstance(cancel, str) and job not in self._guarded:  # a batch job
                self._guarded.add(job)
                self._guard.on_death([*shlex.split(cancel), str(job)])

    def _submit_options(self, task: TaskDict) -> dict[str, Any]:
        kwargs = task.get("backend_kwargs") or {}
        options: dict[str, Any] = {
            k: kwargs[k] for k in ("workers", "allow_other_workers", "priority") if k in kwargs
        }
        resources = self._worker_resources.for_task(task)
        if resources:
            options["resources"] = resources
        return options

    async def _on_client_loop(self, coro: Any) -> Any:
        assert self._client is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._client.loop.asyncio_loop)
        return await asyncio.wrap_future(future)

    @property
    def client(self) -> Client | None:
        """The Dask client, once started."""
        return self._client

    def capacity_cores(self) -> int | None:
        """Threads of the cluster's workers now (asks the scheduler; off the loop)."""
        client = self._client
        return sum(client.nthreads().values()) if client is not None else None

    def placement(self) -> list[str]:
        client = self._client
        if client is None:
            return ["dask (not connected)"]
        return [f"dask worker {address} ({threads} threads)"
                for address, threads in sorted(client.nthreads().items())]

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's URL; None before start, and when a started cluster has none."""
        if self._client is None or (self._own_cluster is not None and self.dashboard is False):
            return None
        return getattr(self._client, "dashboard_link", None)


def _on_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _bokeh_hint() -> str:
    if importlib.util.find_spec("bokeh") is None:
        return " (its pages need bokeh: pip install 'bokeh>=3.1')"
    return ""


__all__ = ["DaskBackend"]
