"""rhapsody-prefect: the RHAPSODY runtime API, and its backends as Prefect task runners.

    import rhapsody_prefect as rhapsody

    backend = rhapsody.get_backend("concurrent")           # the RHAPSODY API
    await backend.submit_tasks([{"executable": "/bin/true"}])
    await backend.wait()

    from prefect import flow
    from rhapsody_prefect import RhapsodyRunner            # the Prefect task runner

    @flow(task_runner=RhapsodyRunner("dask"))
    def ensemble(): ...

The Prefect parts (`RhapsodyRunner`, `executable_task`, `task_resources`,
`ensemble_map`) are imported on first use, so the core API does not pay for importing Prefect.

The folders are the layers: `core/` (the RHAPSODY API and the shared engine,
Prefect-free), `backends/` (one engine each, and the registry), `body/` (what runs
where a task body runs), `adapter/` (the Prefect task runner and its helpers).
Imports run one way: adapter -> backends -> body -> core. See docs/design.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from .backends.discovery import (
    BackendRegistry,
    discover_backends,
    get_backend,
    list_backends,
    register_backend,
    why_unavailable,
)
from .core.constants import BackendType, Defaults, TaskState
from .core.contract import BaseBackend, BaseExecutionBackend
from .core.engine import ExecutionBackend
from .core.exceptions import (
    BackendError,
    ConfigurationError,
    RhapsodyError,
    TaskError,
    WaitTimeoutError,
)
from .core.tasks import CallbackFunction, TaskDict, TaskList

__version__ = "0.1.0"

_LAZY = {
    "RhapsodyRunner": "rhapsody_prefect.adapter.runner",
    "executable_task": "rhapsody_prefect.adapter.executable",
    "ExecutableResult": "rhapsody_prefect.adapter.executable",
    "ExecutableFailed": "rhapsody_prefect.adapter.executable",
    "task_resources": "rhapsody_prefect.adapter.executable",
    "ensemble_map": "rhapsody_prefect.adapter.ensemble",
    "EnsembleFailed": "rhapsody_prefect.adapter.ensemble",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rhapsody_prefect' has no attribute {name!r}")


__all__ = [
    "BackendError",
    "BackendRegistry",
    "BackendType",
    "BaseBackend",
    "BaseExecutionBackend",
    "CallbackFunction",
    "ConfigurationError",
    "Defaults",
    "EnsembleFailed",
    "ExecutableFailed",
    "ExecutableResult",
    "ExecutionBackend",
    "RhapsodyError",
    "RhapsodyRunner",
    "TaskDict",
    "TaskError",
    "TaskList",
    "TaskState",
    "WaitTimeoutError",
    "discover_backends",
    "ensemble_map",
    "executable_task",
    "get_backend",
    "list_backends",
    "register_backend",
    "task_resources",
    "why_unavailable",
]
