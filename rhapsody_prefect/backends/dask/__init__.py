"""The `dask` backend: RHAPSODY tasks on a Dask distributed cluster.

    import rhapsody_prefect as rhapsody
    backend = rhapsody.get_backend("dask", resources={"threads": 4})

Modules: `options` (the backend's options, checked once), `worker_resources`
(a task's cores and GPUs as Dask worker resources), `backend` (`DaskBackend`:
cluster and client lifecycle, launch in batches), `watch` (the launched futures
until their outcomes: watching, cancelling, Dask's states and failures as
TaskStates). What runs on a worker is `rhapsody_prefect.body.dask_worker`.
"""

from .backend import DaskBackend
from .options import CLUSTER_SIZE_KEYS, DaskOptions
from .watch import DASK_STATES, SchedulerLost, WorkerLost

__all__ = [
    "CLUSTER_SIZE_KEYS",
    "DASK_STATES",
    "DaskBackend",
    "DaskOptions",
    "SchedulerLost",
    "WorkerLost",
]
