"""The reference's import path for the backend contract and the shared engine.

    from rhapsody_prefect.backends.base import BaseExecutionBackend, ExecutionBackend

They live in `rhapsody_prefect.core` (`contract`, `engine`, `outcome`); this module
keeps the RHAPSODY reference's path working.
"""

from ..core.contract import BaseBackend, BaseExecutionBackend
from ..core.engine import CANCEL_GRACE_SECONDS, ExecutionBackend
from ..core.outcome import Outcome, task_error

__all__ = [
    "CANCEL_GRACE_SECONDS",
    "BaseBackend",
    "BaseExecutionBackend",
    "ExecutionBackend",
    "Outcome",
    "task_error",
]
