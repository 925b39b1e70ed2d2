"""A task's cores and GPUs as Dask worker resources, and the check that some worker has them.

    resources = WorkerResources(names={})
    resources.check(task, client)           # ConfigurationError if no worker could run it
    client.submit(..., resources=resources.for_task(task))   # {"CPU": 4, "GPU": 1}

A task's `ranks * cores_per_rank` and `ranks * gpus_per_rank` become the resources
the workers declare ("CPU"/"GPU", or the names in `resource_names`), when they
declare them; a task that needs a resource no worker has is refused instead of
waiting forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ...core.exceptions import ConfigurationError
from ...core.tasks import TaskDict, task_slots
from .options import DEFAULT_RESOURCE_NAMES

logger = logging.getLogger("rhapsody_prefect.backends.dask")

#: Per-task `backend_kwargs` the backend understands (passed to `Client.submit`).
TASK_BACKEND_KWARGS = ("resources", "workers", "allow_other_workers", "priority")
#: Seconds the workers' info used to check task resources is cached.
WORKER_INFO_TTL = 1.0

Worker = dict[str, Any]


class WorkerResources:
    """The workers' declared resources (cached), and what a task asks of them."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = dict(names)
        self._fetched = 0.0
        self._workers: list[Worker] = []

    def workers(self, client: Any = None) -> list[Worker]:
        """The workers' info; refreshed from `client` when older than WORKER_INFO_TTL."""
        if (client is not None and client.status == "running"
                and time.monotonic() - self._fetched > WORKER_INFO_TTL):
            try:
                info = client.scheduler_info(n_workers=-1)
            except Exception:
                logger.debug("Could not fetch the Dask workers' info", exc_info=True)
            else:
                self._workers = [
                    {"resources": dict(w.get("resources") or {}), "nthreads": w.get("nthreads")}
                    for w in info.get("workers", {}).values()
                ]
                self._fetched = time.monotonic()
        return self._workers

    def for_task(self, task: TaskDict) -> dict[str, float]:
        """Dask resources for `task`, under the names the workers declare."""
        return {name: amount for name, amount, _ in self._requirements(task, self._workers)}

    def check(self, task: TaskDict, client: Any) -> None:
        """Raise ConfigurationError, naming the key, if no worker could ever run `task`."""
        _check_backend_kwargs(task)
        workers = self.workers(client)
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
        cores = task_slots(task)
        threads = max(w["nthreads"] or 0 for w in workers)
        if self._name("cores", workers) is None and cores > threads:
            raise ConfigurationError(
                f"Task '{task['uid']}' needs {cores} cores (ranks * cores_per_rank) but the "
                f"largest Dask worker has {threads} threads and the workers declare no CPU "
                "resource (start them with --resources CPU=<n> to let Dask reserve cores)",
                config_key="cores_per_rank" if task["cores_per_rank"] > 1 else "ranks",
            )

    def _requirements(self, task: TaskDict, workers: list[Worker]) -> list[tuple[str, float, str]]:
        """(Dask resource name, amount, task key asking for it) for `task`."""
        requirements: list[tuple[str, float, str]] = []
        cores_name = self._name("cores", workers)
        if cores_name is not None:
            key = "cores_per_rank" if task["cores_per_rank"] > 1 else "ranks"
            requirements.append((cores_name, task_slots(task), key))
        if task["gpus_per_rank"]:
            requirements.append((
                self._name("gpus", workers) or "GPU",
                task["ranks"] * task["gpus_per_rank"],
                "gpus_per_rank",
            ))
        extra = (task.get("backend_kwargs") or {}).get("resources") or {}
        requirements.extend((name, amount, "backend_kwargs") for name, amount in extra.items())
        return requirements

    def _name(self, kind: str, workers: list[Worker]) -> str | None:
        if kind in self.names:
            return self.names[kind]
        declared = {name.upper(): name for w in workers for name in w["resources"]}
        for candidate in DEFAULT_RESOURCE_NAMES[kind]:
            if candidate in declared:
                return declared[candidate]
        return None


def _check_backend_kwargs(task: TaskDict) -> None:
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


def _declared(workers: list[Worker]) -> dict[str, float]:
    declared: dict[str, float] = {}
    for worker in workers:
        for name, amount in worker["resources"].items():
            declared[name] = max(declared.get(name, 0), amount)
    return declared


__all__ = ["TASK_BACKEND_KWARGS", "WorkerResources"]
