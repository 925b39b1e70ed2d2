"""RHAPSODY execution backends and their registry.

    from rhapsody_prefect.backends import get_backend
    backend = get_backend("concurrent", max_workers=2)
"""

from .base import BaseBackend, BaseExecutionBackend, ExecutionBackend
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
