"""Coexistence with rhapsody-py: this project's names stay its own, upstream's are prefixed.

rhapsody-py registers `ai`, `dask` and `radical_pilot` in the same entry-point group
this project reads; they (and upstream's other backends) are listed as
`upstream.<name>`, and an upstream class registered by import path or class runs
through the adapter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect.backends.concurrent import ConcurrentBackend
from rhapsody_prefect.backends.upstream import UpstreamBackend

pytest.importorskip("rhapsody")

UPSTREAM_NAMES = ["upstream.concurrent", "upstream.noop", "upstream.dask",
                  "upstream.radical_pilot", "upstream.dragon", "upstream.orbit", "upstream.ai"]


@pytest.fixture
def registry(monkeypatch):
    """The registry as loaded from the installed entry points, restored afterwards."""
    monkeypatch.setattr(rhapsody.BackendRegistry, "_entry_points_loaded", False)
    monkeypatch.setattr(rhapsody.BackendRegistry, "_backends",
                        {name: path for name, (path, _) in
                         rhapsody.backends.discovery.BUILTIN_BACKENDS.items()})
    return rhapsody.BackendRegistry


def test_our_names_keep_our_backends_and_upstream_ones_are_prefixed(registry):
    from rhapsody_prefect.backends.dask import DaskBackend
    from rhapsody_prefect.backends.radical_pilot import RadicalPilotBackend

    names = registry.list_backends()
    assert names[:3] == ["concurrent", "dask", "radical_pilot"]
    assert names[3:] == UPSTREAM_NAMES  # nothing unprefixed from rhapsody-py ('ai' was)
    assert registry.get_backend_class("concurrent") is ConcurrentBackend
    assert registry.get_backend_class("dask") is DaskBackend
    assert registry.get_backend_class("radical_pilot") is RadicalPilotBackend
    adapted = registry.get_backend_class("upstream.dask")
    assert issubclass(adapted, UpstreamBackend)
    assert adapted.upstream_class.__module__ == "rhapsody.backends.execution.dask_parallel"
    assert adapted.backend_type == "upstream.dask"


def test_discovery_says_which_upstream_backends_work_here_and_why_not(registry):
    found = rhapsody.discover_backends()
    assert {name: found[name] for name in UPSTREAM_NAMES[:4]} == dict.fromkeys(
        UPSTREAM_NAMES[:4], True)
    for name, module in [("upstream.dragon", "dragon"), ("upstream.orbit", "radical.orbit")]:
        assert found[name] is False
        reason = rhapsody.why_unavailable(name)
        assert reason is not None and f"needs the module '{module}'" in reason, reason


def test_register_by_import_path_and_class_runs_through_the_adapter(registry):
    from rhapsody.backends.execution.noop import NoopExecutionBackend

    # the path of the issue, which raised "ImportError: ... is not a backend class"
    rhapsody.register_backend("x", "rhapsody.backends.execution.concurrent"
                                   ".ConcurrentExecutionBackend")
    rhapsody.register_backend("y", NoopExecutionBackend)
    x, y = registry.get_backend_class("x"), registry.get_backend_class("y")
    assert x is registry.get_backend_class("upstream.concurrent")  # one adapter per class
    assert y.upstream_class is NoopExecutionBackend
    assert rhapsody.why_unavailable("x") is None


async def test_a_backend_registered_by_path_runs_tasks(registry):
    rhapsody.register_backend("by_path", "rhapsody.backends.execution.concurrent:"
                                         "ConcurrentExecutionBackend")
    tasks = [{"function": sum, "args": ([1, 2, 3],)}]
    async with rhapsody.get_backend("by_path") as backend:
        await backend.submit_tasks(tasks)
        await backend.wait()
    assert tasks[0]["return_value"] == 6


def test_cli_lists_each_upstream_backend_with_availability_and_reason():
    done = subprocess.run([sys.executable, "-m", "rhapsody_prefect.cli", "backends", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert [name for name in rows if name.startswith("upstream.")] == UPSTREAM_NAMES
    assert rows["upstream.concurrent"]["available"] is True
    assert rows["upstream.concurrent"]["detail"].startswith("rhapsody-py 0.6")
    assert rows["upstream.dragon"]["available"] is False
    assert "pip install dragonhpc" in rows["upstream.dragon"]["detail"]
    assert "ai" not in rows


def test_without_rhapsody_py_nothing_changes():
    """rhapsody-py hidden from imports and metadata: the registry is this project's."""
    code = textwrap.dedent("""
        import importlib.metadata as md, sys
        sys.modules["rhapsody"] = None            # `import rhapsody` fails
        real_version, real_eps = md.version, md.entry_points
        def version(name):
            if name == "rhapsody-py":
                raise md.PackageNotFoundError(name)
            return real_version(name)
        def entry_points(**kw):
            return md.EntryPoints(ep for ep in real_eps(**kw)
                                  if not ep.value.startswith("rhapsody."))
        md.version, md.entry_points = version, entry_points
        import rhapsody_prefect as r
        from rhapsody_prefect.cli import backend_rows
        print(r.list_backends(), sorted(r.discover_backends()), len(backend_rows()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("]")[0] + "]" == "['concurrent', 'dask', 'radical_pilot']"
    assert done.stdout.strip().endswith("3")
    assert "rhapsody" not in done.stderr.replace("rhapsody_prefect", "")
