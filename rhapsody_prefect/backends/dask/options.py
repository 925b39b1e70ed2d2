"""The dask backend's options: which cluster, how big, and how to reach it; checked once.

    options = DaskOptions.check(resources={"threads": 4})
    options.cluster_kwargs          # {'n_workers': 2, 'threads_per_worker': 2}
    DaskOptions.check(adress="tcp://...")   # ConfigurationError: unknown option 'adress'

`resources=` sizes a cluster the backend starts (`CLUSTER_SIZE_KEYS`); `address=`
and `cluster=` name the user's own cluster, which the backend never sizes or closes.
`dashboard=` says whether (and where) a cluster the backend starts serves its
dashboard; `network_kwargs` keeps everything else it serves on loopback.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
from collections.abc import Mapping
from typing import Any

from ...core.exceptions import ConfigurationError, refuse_unknown_options
from ...core.machine import usable_cores

#: `resources=` keys: the size of a LocalCluster the backend starts.
CLUSTER_SIZE_KEYS = ("threads", "workers", "threads_per_worker", "memory_limit")
#: Resource kinds a task asks for, and the names workers may declare them under.
DEFAULT_RESOURCE_NAMES: Mapping[str, tuple[str, ...]] = {
    "cores": ("CPU", "CPUS", "CORES", "CORE"),
    "gpus": ("GPU", "GPUS"),
}
OPTIONS = (
    "resources", "address", "cluster", "cluster_class", "cluster_kwargs", "adapt_kwargs",
    "client_kwargs", "resource_names", "log_level", "dashboard",
)
#: Where a cluster the backend starts serves HTTP: loopback, a free port. Dask's
#: scheduler always runs an HTTP server (health, Prometheus metrics, info pages; the
#: dashboard when on); Dask's default ":8787" listens on every interface.
LOOPBACK_HTTP = "127.0.0.1:0"


@dataclasses.dataclass
class DaskOptions:
    address: str | None
    cluster: Any
    cluster_class: str | type | None
    cluster_kwargs: dict[str, Any]
    adapt_kwargs: dict[str, Any]
    client_kwargs: dict[str, Any]
    resource_names: dict[str, str]
    #: Level of Dask's own loggers while the backend runs a cluster it started.
    log_level: int = logging.WARNING
    #: A cluster the backend starts: False (no dashboard; Dask's HTTP on loopback),
    #: True (dashboard on 127.0.0.1, a free port) or an address ("0.0.0.0:8787").
    dashboard: bool | str = False

    @classmethod
    def check(
        cls,
        resources: Mapping[str, Any] | None = None,
        *,
        address: str | None = None,
        cluster: Any = None,
        cluster_class: str | type | None = None,
        cluster_kwargs: Mapping[str, Any] | None = None,
        adapt_kwargs: Mapping[str, Any] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        resource_names: Mapping[str, str] | None = None,
        log_level: int | str = logging.WARNING,
        dashboard: bool | str = False,
        **unknown: Any,
    ) -> DaskOptions:
        """The options, checked; ConfigurationError names the first bad one."""
        refuse_unknown_options("the dask backend", unknown, OPTIONS)
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
        _check_cluster_source(address, cluster, cluster_class)
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
        _check_dashboard(dashboard, address, cluster, cluster_kwargs)
        if address is not None and adapt_kwargs:
            raise ConfigurationError(
                "adapt_kwargs needs a cluster object; with address= scale the cluster yourself",
                config_key="adapt_kwargs",
            )
        client = dict(client_kwargs or {})
        for key in ("address", "asynchronous"):
            if key in client:
                raise ConfigurationError(
                    f"client_kwargs may not set {key!r}; the backend sets it",
                    config_key="client_kwargs",
                )
        client.setdefault("set_as_default", False)
        names = dict(resource_names or {})
        for key, value in names.items():
            if key not in DEFAULT_RESOURCE_NAMES or not isinstance(value, str):
                raise ConfigurationError(
                    f"resource_names maps {sorted(DEFAULT_RESOURCE_NAMES)} to the resource "
                    f"names your workers declare, got {key!r}: {value!r}",
                    config_key="resource_names",
                )
        level = logging.getLevelName(log_level.upper()) if isinstance(log_level, str) else log_level
        if isinstance(level, bool) or not isinstance(level, int):
            raise ConfigurationError(
                f"log_level must be a logging level (logging.INFO or 'INFO'), got {log_level!r}",
                config_key="log_level",
            )
        return cls(
            log_level=level,
            dashboard=dashboard,
            address=address,
            cluster=cluster,
            # Imported here, where the backend is created (the flow's main thread): some
            # cluster classes (dask_jobqueue's) install signal handlers on import.
            cluster_class=None if cluster_class is None else load_cluster_class(cluster_class),
            cluster_kwargs={**cluster_size(resources), **(cluster_kwargs or {})},
            adapt_kwargs=dict(adapt_kwargs or {}),
            client_kwargs=client,
            resource_names=names,
        )


def _check_cluster_source(address: Any, cluster: Any, cluster_class: Any) -> None:
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


def _check_dashboard(dashboard: Any, address: Any, cluster: Any,
                     cluster_kwargs: Mapping[str, Any] | None) -> None:
    if not isinstance(dashboard, (bool, str)) or dashboard == "":
        raise ConfigurationError(
            "dashboard must be True, False or an address such as '127.0.0.1:8787', "
            f"got {dashboard!r}",
            config_key="dashboard",
        )
    if dashboard is False:
        return
    if address is not None or cluster is not None:
        raise ConfigurationError(
            "dashboard configures a cluster the backend starts; a cluster you pass "
            "(address=, cluster=) keeps its own dashboard",
            config_key="dashboard",
        )
    given = dict(cluster_kwargs or {})
    if "dashboard_address" in given or "dashboard_address" in dict(
        given.get("scheduler_options") or {}
    ):
        raise ConfigurationError(
            "Pass the dashboard address either as dashboard= or in cluster_kwargs, not both",
            config_key="dashboard",
        )


def network_kwargs(cluster_class: type, kwargs: Mapping[str, Any],
                   dashboard: bool | str) -> dict[str, Any]:
    """Cluster kwargs with the dashboard off or where asked, Dask's HTTP on loopback.

    Only fills in what cluster_kwargs leave unset. Knows LocalCluster (and subclasses)
    and dask-jobqueue's clusters; other classes are started as given.
    """
    import distributed

    result = dict(kwargs)
    address = dashboard if isinstance(dashboard, str) else LOOPBACK_HTTP
    if issubclass(cluster_class, distributed.LocalCluster):
        if "dashboard_address" not in result:
            if dashboard is False:
                # No dashboard; the scheduler's HTTP server (health, metrics) on loopback.
                result["dashboard_address"] = None
                scheduler_kwargs = dict(result.get("scheduler_kwargs") or {})
                scheduler_kwargs.setdefault("dashboard_address", LOOPBACK_HTTP)
                result["scheduler_kwargs"] = scheduler_kwargs
            else:
                result["dashboard_address"] = address
        if result.get("processes") is False:
            # In-process workers' HTTP servers listen on every interface otherwise.
            result.setdefault("worker_dashboard_address", LOOPBACK_HTTP)
    elif any(c.__module__.startswith("dask_jobqueue.") for c in cluster_class.__mro__):
        # The scheduler runs in this process; its dashboard defaults to ":8787".
        options = dict(result.get("scheduler_options") or {})
        options.setdefault("dashboard_address", address)
        if dashboard is False:
            options.setdefault("dashboard", False)
        result["scheduler_options"] = options
    return result


def cluster_size(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    """LocalCluster keyword arguments for `resources=` (threads, workers, ...)."""
    resources = dict(resources or {})
    unknown = sorted(set(resources) - set(CLUSTER_SIZE_KEYS))
    if unknown:
        raise ConfigurationError(
            f"Unknown resources key(s) {unknown}; allowed: {list(CLUSTER_SIZE_KEYS)}",
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
    result: dict[str, Any] = {}
    if workers is not None:
        result["n_workers"] = workers
    if per_worker is not None:
        result["threads_per_worker"] = per_worker
    if resources.get("memory_limit") is not None:
        result["memory_limit"] = resources["memory_limit"]
    return result


def _workers_for(threads: int) -> int:
    """Worker processes for `threads` threads: the largest divisor <= the usable cores."""
    return max(n for n in range(1, min(threads, usable_cores()) + 1) if threads % n == 0)


def load_cluster_class(cluster_class: str | type | None) -> type:
    """The cluster class: LocalCluster by default, or imported from 'package.Class'."""
    if cluster_class is None:
        import distributed

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


__all__ = [
    "CLUSTER_SIZE_KEYS",
    "DEFAULT_RESOURCE_NAMES",
    "LOOPBACK_HTTP",
    "DaskOptions",
    "cluster_size",
    "load_cluster_class",
    "network_kwargs",
]
