"""Upstream RHAPSODY's backends (`rhapsody-py`): their names here, and what each needs.

`rhapsody-py` registers some of its backends in the same entry-point group this
project reads (`rhapsody.backends`: `ai`, `dask`, `radical_pilot`), and finds
the rest by class name (`concurrent`, `noop`, `dragon`, `orbit`). Here they are
all listed as `upstream.<its name>`, so they never shadow this project's
`concurrent`, `dask` and `radical_pilot`:

    >>> from rhapsody_prefect.backends.upstream.catalogue import PREFIX, upstream_name
    >>> PREFIX + "dask"
    'upstream.dask'
    >>> upstream_name("rhapsody.backends.execution.noop:NoopExecutionBackend")
    'upstream.noop'

Nothing here imports `rhapsody`: without `rhapsody-py` installed,
`upstream_backends` is empty and the registry is what it was.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Iterable

#: The distribution whose backends are listed under PREFIX.
DISTRIBUTION = "rhapsody-py"
PREFIX = "upstream."

#: rhapsody-py 0.6's backends, by the name its own registry gives them (class name, snake
#: case), as 'module:Class'. Entry points of the distribution add any later ones.
BACKENDS: dict[str, str] = {
    "concurrent": "rhapsody.backends.execution.concurrent:ConcurrentExecutionBackend",
    "noop": "rhapsody.backends.execution.noop:NoopExecutionBackend",
    "dask": "rhapsody.backends.execution.dask_parallel:DaskExecutionBackend",
    "radical_pilot": "rhapsody.backends.execution.radical_pilot:RadicalExecutionBackend",
    "dragon": "rhapsody.backends.execution.dragon:DragonExecutionBackend",
    "orbit": "rhapsody.backends.execution.orbit:OrbitExecutionBackend",
    "ai": "rhapsody.backends.ai.vllm:DragonVllmInferenceBackend",
}

#: What an upstream class needs besides rhapsody-py, and how to get it. Its modules
#: import without these (they set the name to None and fail in the constructor), so
#: the registry asks here instead.
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "DaskExecutionBackend": (("distributed", "pip install 'rhapsody-prefect[dask]'"),),
    "RadicalExecutionBackend": (
        ("radical.pilot", "pip install 'rhapsody-prefect[radical_pilot]'"),),
    "DragonExecutionBackend": (
        ("dragon", "pip install dragonhpc flask gunicorn, and run the flow under "
                   "`dragon --single-node-override` (docs/api.md)"),
        ("flask", "pip install flask gunicorn (dragon.workflows.batch needs them)"),
    ),
    "DragonVllmInferenceBackend": (
        ("aiohttp", "pip install aiohttp"),
        ("dragon", "pip install 'dragonhpc[ai]', and run the flow under `dragon`"),
    ),
    "OrbitExecutionBackend": (("radical.orbit", "pip install radical.orbit"),),
}

#: Dragon's classes also need the Dragon runtime: the launcher sets this variable
#: (without it, the backend's start fails: "Launch parameter not initialized: GS_QD").
DRAGON_RUNTIME = "DRAGON_GS_QD"
RUNTIME_NEEDED = {"DragonExecutionBackend", "DragonVllmInferenceBackend"}


def installed_version() -> str | None:
    """rhapsody-py's version, or None when it is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_upstream_entry_point(entry_point: importlib.metadata.EntryPoint) -> bool:
    """Whether `entry_point` is one of rhapsody-py's own."""
    dist = getattr(entry_point, "dist", None)
    name = dist.metadata["Name"] if dist is not None else None
    return name == DISTRIBUTION or entry_point.value.split(".")[0] == "rhapsody"


def upstream_backends(
    entry_points: Iterable[importlib.metadata.EntryPoint],
) -> dict[str, str]:
    """Registry name -> import path of every upstream backend; empty without rhapsody-py."""
    if installed_version() is None:
        return {}
    names = {PREFIX + name: path for name, path in BACKENDS.items()}
    for entry_point in entry_points:
        if is_upstream_entry_point(entry_point):
            names.setdefault(PREFIX + entry_point.name, entry_point.value)
    return names


def upstream_name(import_path: str) -> str | None:
    """The registry name of an upstream backend's 'module:Class' path, if it is one."""
    for name, path in BACKENDS.items():
        if path == import_path:
            return PREFIX + name
    return None


def missing_dependency(class_name: str) -> str | None:
    """Why upstream's `class_name` (or 'module:Class' path) cannot run here (a module it
    needs is missing), or None. Imports nothing."""
    if ":" in class_name or "." in class_name:  # a path: only upstream's own
        if not class_name.startswith("rhapsody."):
            return None
        class_name = class_name.rpartition(":")[2].rpartition(".")[2]
    for module, remedy in NEEDS.get(class_name, ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a missing parent package
            found = False
        if not found:
            return f"upstream {class_name} needs the module '{module}': {remedy}"
    if class_name in RUNTIME_NEEDED and not os.environ.get(DRAGON_RUNTIME):
        return (f"upstream {class_name} runs only inside the Dragon runtime: start the flow "
                "with `dragon --single-node-override flow.py` (one machine) or `dragon "
                "flow.py` (in a batch allocation)")
    return None


__all__ = [
    "BACKENDS",
    "DISTRIBUTION",
    "NEEDS",
    "PREFIX",
    "installed_version",
    "is_upstream_entry_point",
    "missing_dependency",
    "upstream_backends",
    "upstream_name",
]
