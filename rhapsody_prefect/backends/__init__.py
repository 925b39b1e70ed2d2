"""The backends: each translates the RHAPSODY contract to one engine, and the registry.

    from rhapsody_prefect.backends import get_backend
    backend = get_backend("concurrent", max_workers=2)

`concurrent` (local threads, processes, subprocesses), `dask/` (a Dask cluster),
`radical_pilot/` (a RADICAL-Pilot pilot), `upstream/` (upstream RHAPSODY's own
backends, `rhapsody-py`, listed as `upstream.<name>`), `discovery` (the registry).
Each backend subclasses `core.engine.ExecutionBackend` and implements only start,
launch, cancel and shutdown; `base` keeps the reference's import path of the contract.

Imports: `rhapsody_prefect.core`, `rhapsody_prefect.body` and the backend's own
engine library (distributed, radical.pilot); never Prefect or the adapter.
"""

from ..core.contract import BaseBackend, BaseExecutionBackend
from ..core.engine import ExecutionBackend
from .discovery import (
    BackendRegistry,
    discover_backends,
    get_backend,
    list_backends,
    register_backend,
    why_unavailable,
)

__all__ = [
    "BackendRegistry",
    "BaseBackend",
    "BaseExecutionBackend",
    "ExecutionBackend",
    "discover_backends",
    "get_backend",
    "list_backends",
    "register_backend",
    "why_unavailable",
]
