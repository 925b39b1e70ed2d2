"""The backend registry: names to backend classes, built-in and third-party.

    >>> import rhapsody_prefect as rhapsody
    >>> rhapsody.list_backends()[:3]
    ['concurrent', 'dask', 'radical_pilot']
    >>> backend = rhapsody.get_backend("concurrent", max_workers=2)

Third-party packages add backends through the entry-point group
`rhapsody.backends` (`name = "package.module:BackendClass"`). Nothing here
starts a backend: `discover_backends()` only checks that each backend's
dependencies import, and `why_unavailable(name)` says what is missing.

Upstream RHAPSODY (`rhapsody-py`) reads the same group: its backends are listed
as `upstream.<name>` (`upstream.concurrent`, `upstream.dask`, ...; see
`upstream/catalogue.py`), so this project's names keep meaning its own backends.
A class written to upstream's contract (its `BaseBackend`), registered by class,
import path or entry point, resolves to the engine adapter running it
(`upstream/backend.py`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import threading
from typing import Any, ClassVar

from ..core.contract import BaseExecutionBackend
from ..core.exceptions import ConfigurationError
from .upstream import adapt, is_upstream_class, upstream_backends
from .upstream.catalogue import is_upstream_entry_point, missing_dependency

ENTRY_POINT_GROUP = "rhapsody.backends"

#: name -> (import path, pip extra that installs its dependencies)
BUILTIN_BACKENDS: dict[str, tuple[str, str | None]] = {
    "concurrent": ("rhapsody_prefect.backends.concurrent:ConcurrentBackend", None),
    "dask": ("rhapsody_prefect.backends.dask:DaskBackend", "dask"),
    "radical_pilot": (
        "rhapsody_prefect.backends.radical_pilot:RadicalPilotBackend",
        "radical_pilot",
    ),
}

BackendSource = str | type[BaseExecutionBackend]


def _split_import_path(path: str) -> tuple[str, str]:
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigurationError(
            f"Invalid backend import path {path!r}; expected 'package.module:ClassName'",
            config_key="import_path",
        )
    return module_name, attr


class BackendRegistry:
    """Registry for managing available execution backends."""

    _backends: ClassVar[dict[str, BackendSource]] = {
        name: path for name, (path, _) in BUILTIN_BACKENDS.items()
    }
    _entry_points_loaded: ClassVar[bool] = False
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def _load_entry_points(cls) -> None:
        with cls._lock:
            if cls._entry_points_loaded:
                return
            cls._entry_points_loaded = True
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            for name, path in upstream_backends(entry_points).items():
                cls._backends.setdefault(name, path)
            for entry_point in entry_points:
                if not is_upstream_entry_point(entry_point):
                    cls._backends.setdefault(entry_point.name, entry_point.value)

    @classmethod
    def list_backends(cls) -> list[str]:
        """List all registered backend names."""
        cls._load_entry_points()
        return list(cls._backends)

    @classmethod
    def register_backend(cls, name: str, backend: BackendSource) -> None:
        """Register a backend class, or its import path ('package.module:Class').

        A class written to upstream RHAPSODY's contract runs through the engine adapter.
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Backend name must be a non-empty str, got {name!r}", "name")
        if isinstance(backend, str):
            _split_import_path(backend)
        elif not _is_backend_class(backend):
            raise ConfigurationError(
                f"Backend {name!r} must be a BaseExecutionBackend subclass, an upstream "
                f"RHAPSODY BaseBackend subclass or an import path, got {backend!r}",
                config_key="backend",
            )
        cls._load_entry_points()
        cls._backends[name] = backend

    @classmethod
    def get_backend_class(cls, backend_name: str) -> type[BaseExecutionBackend]:
        """Get backend class by name.

        Raises:
            ValueError: the name is not registered.
            ImportError: the backend's dependencies are missing (names the pip extra).
        """
        cls._load_entry_points()
        if backend_name not in cls._backends:
            available = list(cls._backends)
            raise ValueError(f"Backend '{backend_name}' not found. Available: {available}")
        source = cls._backends[backend_name]
        if not isinstance(source, str):
            return _engine_class(backend_name, source)
        module_name, attr = _split_import_path(source)
        missing = missing_dependency(source)  # upstream's modules import without them
        if missing:
            raise ImportError(f"Backend '{backend_name}' is not available: {missing}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ImportError(_missing_dependency_message(backend_name, error)) from error
        backend_class = getattr(module, attr, None)
        if not _is_backend_class(backend_class):
            raise ImportError(f"Backend '{backend_name}': {source!r} is not a backend class")
        return _engine_class(backend_name, backend_class)


def _is_backend_class(candidate: object) -> bool:
    """A backend of this project's contract, or of upstream RHAPSODY's."""
    return ((inspect.isclass(candidate) and issubclass(candidate, BaseExecutionBackend))
            or is_upstream_class(candidate))


def _engine_class(backend_name: str, backend_class: type) -> type[BaseExecutionBackend]:
    """`backend_class`, or for an upstream class the adapter running it."""
    if issubclass(backend_class, BaseExecutionBackend):
        return backend_class
    try:
        return adapt(backend_class, backend_name)
    except ImportError as error:
        raise ImportError(f"Backend '{backend_name}' is not available: {error}") from None


def _missing_dependency_message(backend_name: str, error: ImportError) -> str:
    extra = BUILTIN_BACKENDS.get(backend_name, (None, None))[1]
    hint = f"; install it with: pip install 'rhapsody-prefect[{extra}]'" if extra else ""
    return f"Failed to import backend '{backend_name}': {error}{hint}"


def get_backend(backend_name: str, *args: Any, **kwargs: Any) -> BaseExecutionBackend:
    """Create a backend; it starts on first submit, or when awaited.

        backend = get_backend("dask", resources={"threads": 4})
        backend = await get_backend("radical_pilot")   # started
    """
    backend_class = BackendRegistry.get_backend_class(backend_name)
    return backend_class(*args, **kwargs)


def list_backends() -> list[str]:
    """List all registered backend names."""
    return BackendRegistry.list_backends()


def register_backend(name: str, backend: BackendSource) -> None:
    """Register a backend class or import path under `name`."""
    BackendRegistry.register_backend(name, backend)


def why_unavailable(backend_name: str) -> str | None:
    """Why `backend_name` cannot be used here, or None if it can. Starts nothing."""
    try:
        backend_class = BackendRegistry.get_backend_class(backend_name)
    except (ImportError, ValueError) as error:
        return str(error)
    module = inspect.getmodule(backend_class)
    check = getattr(module, "availability", None)
    if callable(check):
        available, reason = check()
        if not available:
            return reason
    return None


def discover_backends() -> dict[str, bool]:
    """Which backends can be used here: name -> True/False. Starts nothing, prints nothing."""
    return {name: why_unavailable(name) is None for name in list_backends()}


__all__ = [
    "BackendRegistry",
    "discover_backends",
    "get_backend",
    "list_backends",
    "register_backend",
    "why_unavailable",
]
