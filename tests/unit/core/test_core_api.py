"""The RHAPSODY core API: registry, discovery, exceptions, constants, task validation,
and the reference documentation's own examples run as tests."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import textwrap
import threading

import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect.backends.base import (
    BaseBackend,
    BaseExecutionBackend,
    ExecutionBackend,
    Outcome,
)
from rhapsody_prefect.core.constants import BackendType, Defaults, TaskState
from rhapsody_prefect.core.tasks import validate_task
from rhapsody_prefect.exceptions import (
    BackendError,
    ConfigurationError,
    RhapsodyError,
    TaskError,
)


# ------------------------------------------------------------------ constants
def test_states_compare_equal_to_plain_strings():
    for name in ("NEW", "WAITING", "READY", "EXECUTING", "COMPLETED", "FAILED", "RETRYING",
                 "CANCELED"):
        assert getattr(TaskState, name) == name
        assert TaskState(name).value == name
    assert {s.value for s in TaskState if s.is_terminal} == {"COMPLETED", "FAILED", "CANCELED"}


def test_backend_types_and_defaults():
    assert (BackendType.CONCURRENT, BackendType.DASK, BackendType.RADICAL_PILOT) == (
        "concurrent", "dask", "radical_pilot"
    )
    assert Defaults.BACKEND_TYPE == "concurrent"
    assert (Defaults.MAX_WORKERS, Defaults.RETRY_ATTEMPTS, Defaults.RETRY_DELAY) == (4, 0, 1.0)
    assert Defaults.TIMEOUT is None


# ----------------------------------------------------------------- exceptions
def test_exception_attributes_and_hierarchy():
    backend = BackendError("lost", "dask", {"k": 1})
    task = TaskError("boom", "t1", exit_code=2)
    config = ConfigurationError("bad", config_key="ranks")
    assert (backend.message, backend.backend_type, backend.details) == ("lost", "dask", {"k": 1})
    assert (task.task_uid, task.exit_code, task.details) == ("t1", 2, {})
    assert config.config_key == "ranks"
    assert all(isinstance(e, RhapsodyError) for e in (backend, task, config))
    assert RhapsodyError("plain").details == {}


def test_exceptions_survive_pickling():
    error = TaskError("boom", "t1", exit_code=3, details={"stderr": "x"})
    clone = pickle.loads(pickle.dumps(error))
    assert (type(clone), clone.task_uid, clone.exit_code, clone.details, str(clone)) == (
        TaskError, "t1", 3, {"stderr": "x"}, "boom"
    )


# ------------------------------------------------------------------- registry
def test_builtin_backends_listed_and_reexported():
    assert rhapsody.list_backends()[:3] == ["concurrent", "dask", "radical_pilot"]
    assert rhapsody.BackendRegistry.list_backends() == rhapsody.list_backends()
    assert BaseBackend is BaseExecutionBackend


def test_unknown_backend_is_value_error_listing_available():
    with pytest.raises(ValueError, match=r"Backend 'nope' not found\. Available: \['concurrent'"):
        rhapsody.get_backend("nope")


def test_missing_dependency_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    for name in [m for m in sys.modules if m.startswith(("rhapsody_prefect.backends.dask",
                                                        "rhapsody_prefect.body.dask_worker"))]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"rhapsody-prefect\[dask\]"):
        rhapsody.get_backend("dask")
    reason = rhapsody.why_unavailable("dask")
    assert reason is not None and "rhapsody-prefect[dask]" in reason
    assert rhapsody.discover_backends()["dask"] is False


def test_discover_backends_starts_nothing_and_prints_nothing():
    code = textwrap.dedent("""
        import threading, psutil, rhapsody_prefect as r
        before = threading.active_count()
        result = r.discover_backends()
        assert set(result) >= {"concurrent", "dask", "radical_pilot"}, result
        assert result["concurrent"] is True
        assert psutil.Process().children(recursive=True) == [], "a process was started"
        extra = threading.active_count() - before
        assert extra == 0, f"{extra} threads started"
        print("REASONS", {n: r.why_unavailable(n) for n in result})
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("REASONS"), done.stdout  # nothing else printed
    assert "rhapsody.session" not in done.stderr


class _EchoBackend(ExecutionBackend):
    """A minimal backend for registry tests (returns the task's args)."""

    backend_type = "echo"

    async def _launch(self, attempts):
        for attempt in attempts:
            self._report(attempt, TaskState.EXECUTING)
            self._report(attempt, Outcome.completed(attempt.task["args"]))


async def test_register_backend_class_and_import_path():
    rhapsody.register_backend("echo", _EchoBackend)
    rhapsody.register_backend("echo_path", "tests.unit.core.test_core_api:_EchoBackend")
    for name in ("echo", "echo_path"):
        backend = await rhapsody.get_backend(name)  # awaitable: returns it started
        tasks = [{"function": print, "args": (1, 2)}]
        await backend.submit_tasks(tasks)
        await backend.wait()
        assert tasks[0]["return_value"] == (1, 2)
        await backend.terminate()
    with pytest.raises(ConfigurationError):
        rhapsody.register_backend("bad", object)  # type: ignore[arg-type]


def test_entry_point_backends_are_discovered(tmp_path, monkeypatch):
    dist = tmp_path / "rhapsody_plugin_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: rhapsody-plugin-demo\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[rhapsody.backends]\nplugin_echo = tests.unit.core.test_core_api:_EchoBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(rhapsody.BackendRegistry, "_entry_points_loaded", False)
    monkeypatch.setattr(rhapsody.BackendRegistry, "_backends",
                        dict(rhapsody.BackendRegistry._backends))
    assert "plugin_echo" in rhapsody.list_backends()
    assert rhapsody.BackendRegistry.get_backend_class("plugin_echo") is _EchoBackend


# ------------------------------------------------------------ task validation
@pytest.mark.parametrize(
    ("task", "key"),
    [
        ({}, "function"),
        ({"executable": "x", "function": print}, "executable"),
        ({"executable": "x", "ranks": 0}, "ranks"),
        ({"executable": "x", "cores_per_rank": "2"}, "cores_per_rank"),
        ({"executable": "x", "gpus_per_rank": -1}, "gpus_per_rank"),
        ({"executable": "x", "arguments": "not-a-list"}, "arguments"),
        ({"executable": "x", "environment": {"A": 1}}, "environment"),
        ({"executable": "x", "timeout": 0}, "timeout"),
        ({"executable": "x", "retries": -1}, "retries"),
        ({"function": 42}, "function"),
        ({"function": print, "args": 3}, "args"),
        ({"executable": "x", "colour": "blue"}, "colour"),
        ({"executable": "x", "args": [1]}, "args"),
    ],
)
def test_invalid_tasks_name_the_key(task, key):
    with pytest.raises(ConfigurationError) as info:
        validate_task(task)
    assert info.value.config_key == key
    assert key in str(info.value)


def test_valid_task_gets_defaults_and_uid():
    task = validate_task({"executable": "/bin/echo", "arguments": ["a", 1]})
    assert task["uid"].startswith("task.")
    assert task["arguments"] == ["a", "1"]
    assert (task["ranks"], task["cores_per_rank"], task["gpus_per_rank"]) == (1, 1, 0)
    assert (task["retries"], task["retry_delay"], task["timeout"]) == (0, 1.0, None)


# --------------------------------------------------- the reference's examples
def test_reference_error_handling_example(capsys):
    """The reference's robust_workflow, verbatim but for the import."""

    async def robust_workflow():
        try:
            backend = rhapsody.get_backend("concurrent")
            tasks = [{"uid": "test_task", "executable": "false"}]
            await backend.submit_tasks(tasks)
            await backend.wait()
        except TaskError as e:
            print(f"Task {e.task_uid} failed with exit code {e.exit_code}")
            print(f"Error details: {e.details}")
        except BackendError as e:
            print(f"Backend '{e.backend_type}' error: {e.message}")
        except ConfigurationError as e:
            print(f"Configuration error in '{e.config_key}': {e.message}")
        except RhapsodyError as e:
            print(f"RHAPSODY error: {e.message}")
        finally:
            await backend.terminate()

    asyncio.run(robust_workflow())
    assert "Task test_task failed with exit code 1" in capsys.readouterr().out


def test_reference_backend_discovery_example(capsys, monkeypatch):
    # Threads this test starts (directly or through a pool it creates), not the ones
    # earlier tests left behind: creating a backend must start nothing.
    started: list[threading.Thread] = []
    start, caller = threading.Thread.start, threading.current_thread()

    def recording_start(thread: threading.Thread) -> None:
        if threading.current_thread() is caller:
            started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    print("Available backends:")
    for backend_name in rhapsody.list_backends():
        try:
            backend = rhapsody.get_backend(backend_name)
            print(f"  {backend_name}: {backend.__class__.__name__}")
        except Exception as e:
            print(f"  {backend_name}: Not available ({e})")
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert "concurrent: ConcurrentBackend" in out
    assert [thread.name for thread in started if thread.is_alive()] == []


def test_reference_custom_backend_registration(capsys):
    """The reference's LoggingBackend defines only submit_tasks, wait, terminate."""
    from typing import Any, Optional

    class LoggingBackend(BaseBackend):
        """Backend that logs all operations."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.submitted_tasks = []

        async def submit_tasks(self, tasks: list[dict[str, Any]]) -> None:
            print(f"LoggingBackend: Submitting {len(tasks)} tasks")
            self.submitted_tasks.extend(tasks)

        async def wait(self, timeout: Optional[float] = None) -> None:  # noqa: UP045
            print("LoggingBackend: Waiting for tasks to complete")

        async def terminate(self) -> None:
            print("LoggingBackend: Terminating")

    rhapsody.register_backend("logging", LoggingBackend)
    backend = rhapsody.get_backend("logging")

    async def use():
        async with backend:
            await backend.submit_tasks([{"executable": "/bin/true"}])
            await backend.wait()

    asyncio.run(use())
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "LoggingBackend: Submitting 1 tasks",
        "LoggingBackend: Waiting for tasks to complete",
        "LoggingBackend: Terminating",
    ]
    assert len(backend.submitted_tasks) == 1
