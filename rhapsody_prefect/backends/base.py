"""The reference's import path for the backend contract and the shared engine.

    from rhapsody_prefect.backends.base import Attempt, ExecutionBackend, Outcome

They live in `rhapsody_prefect.core` (`contract`, `engine`, `attempt`, `outcome`);
this module keeps the RHAPSODY reference's path working, and is where a backend
of your own imports what it needs.
"""

from ..core.attempt import Attempt
from ..core.contract import BaseBackend, BaseExecutionBackend
from ..core.engine import CANCEL_GRACE_SECONDS, ExecutionBackend
from ..core.outcome import Outcome, task_error

__all__ = [
    "CANCEL_GRACE_SECONDS",
    "Attempt",
    "BaseBackend",
    "BaseExecutionBackend",
    "ExecutionBackend",
    "Outcome",
    "task_error",
]
