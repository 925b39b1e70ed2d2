"""The reference's import path for the RHAPSODY exceptions (they live in `core.exceptions`).

    from rhapsody_prefect.exceptions import BackendError, ConfigurationError
"""

from .core.exceptions import (
    BackendError,
    ConfigurationError,
    RhapsodyError,
    TaskError,
    WaitTimeoutError,
)

__all__ = [
    "BackendError",
    "ConfigurationError",
    "RhapsodyError",
    "TaskError",
    "WaitTimeoutError",
]
