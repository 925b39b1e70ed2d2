"""Several backends in one flow (issue 24): specs, routing and its precedence, lifecycle.

The flows run on `concurrent` beside a real Dask `LocalCluster` (tests/fixtures_dask.py),
or on two `concurrent` backends; bodies report where they ran (a Dask worker, or the
flow process). The lifecycle tests register a backend that is the real `concurrent`
backend noting when it starts and shuts down, and one whose start fails.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from typing import Any

import cloudpickle
import pytest
from prefect import flow, tags, task
from prefect.client.schemas.objects import StateType
from prefect.context import get_run_context

import rhapsody_prefect as rhapsody
from rhapsody_prefect import (
    BackendError,
    ConfigurationError,
    RhapsodyRunner,
    ensemble_map,
    executable_task,
    task_resources,
)
from rhapsody_prefect.adapter import progress
from rhapsody_prefect.backends.concurrent import ConcurrentBackend
from tests.adapter.test_ensemble import _table, artifacts_of
from tests.helpers import pid_alive, signal_flow_script, task_run_logs, wait_until

THREADS = {"backend": "concurrent", "max_workers": 2, "executor": "thread"}


def where() -> str:
    """'dask' on a Dask worker, 'flow' in the flow process (a thread of `concurrent`)."""
    try:
        from distributed import get_worker

        get_worker()
        return "dask"
    except (ImportError, ValueError):
        return "flow" if os.getpid() == FLOW_PID else f"pid {os.getpid()}"


FLOW_PID = os.getpid()


@task
def plain(_: int = 0) -> str:
    return where()


@task
@task_resources(backend="dask")
def wants_dask(_: int = 0) -> str:
    return where()


@executable_task
def command(target: str | None) -> dict[str, Any]:
    # $PPID: the flow process for `concurrent`, a worker process for Dask.
    spec: dict[str, Any] = {"executable": "/bin/sh", "arguments": ["-c", "echo $PPID"]}
    if target is not None:
        spec["backend"] = target
    return spec


@executable_task
@task_resources(backend="dask")
def command_wants_dask(target: str) -> dict[str, Any]:
    return {"executable": "/bin/sh", "arguments": ["-c", "echo $PPID"], "backend": target}


def ran_on(parent_pid: str) -> str:
    return "flow" if int(parent_pid) == FLOW_PID else "dask"


EVENTS: list[tuple[str, str]] = []


class _Recorded(ConcurrentBackend):
    """The real `concurrent` backend, noting when it starts and shuts down."""

    def __init__(self, label: str = "", max_workers: int = 2, executor: str = "thread") -> None:
        super().__init__(max_workers=max_workers, executor=executor)  # type: ignore[arg-type]
        self.label = label

    async def _start(self) -> None:
        EVENTS.append(("start", self.label))
        await super()._start()

    async def _shutdown(self) -> None:
        EVENTS.append(("shutdown", self.label))
        await super()._shutdown()


class _Broken(ConcurrentBackend):
    async def _start(self) -> None:
        raise OSError("no route to the batch system (test)")


rhapsody.register_backend("recorded", _Recorded)
rhapsody.register_backend("broken-start", _Broken)


@pytest.fixture
def mixed(dask_backend_spec: tuple[str, dict]) -> RhapsodyRunner:
    """`local` (concurrent threads, the default) and `dask` (the module's LocalCluster)."""
    _, options = dask_backend_spec
    return RhapsodyRunner(backends={"local": THREADS, "dask": {"backend": "dask", **options}},
                          default="local")


# ------------------------------------------------------------------ specs
@pytest.mark.parametrize(
    ("kwargs", "config_key", "words"),
    [
        ({"backends": {"a": "concurrent", "b": "nosuch"}}, "backends.b",
         ["Backend 'b'", "Unknown backend 'nosuch'", "'concurrent'"]),
        ({"backends": {"a": {"backend": "concurrent", "max_wrkers": 2}}},
         "backends.a.max_wrkers", ["Backend 'a'", "max_wrkers"]),
        ({"backends": {"a": {"backend": "recorded", "label": "x", "extra": 1}}}, "backends.a",
         ["Backend 'a'", "Bad options for the 'recorded' backend", "extra"]),
        ({"backends": {"a": {"backend": "concurrent", "executor": "fork"}}},
         "backends.a.executor", ["Backend 'a'", "fork"]),
        ({"backends": {"a": "concurrent"}, "default": "b"}, "default",
         ["default='b'", "['a']"]),
        ({"backends": {}}, "backends", ["non-empty"]),
        ({"backends": {"a": {"max_workers": 2}}}, "backends.a", ["{'backend': registry_name"]),
        ({"backends": {"a": 7}}, "backends.a", ["a registry name"]),
        ({"backends": {"a": "concurrent"}, "max_workers": 2}, "backends", ["not both"]),
        ({"default": "a"}, "default", ["goes with backends="]),
    ],
)
def test_every_spec_is_checked_when_the_runner_is_created(
    kwargs: dict[str, Any], config_key: str, words: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        RhapsodyRunner(**kwargs)
    assert info.value.config_key == config_key
    for word in words:
        assert word in str(info.value)


def test_several_backends_compare_duplicate_and_pickle() -> None:
    runner = RhapsodyRunner(backends={"a": THREADS, "b": "concurrent"}, default="b")
    assert runner.name == "rhapsody-a+b"
    assert runner.routing.names == ["a", "b"] and runner.backend_name == "b"
    assert RhapsodyRunner(backends={"a": THREADS, "b": "concurrent"}).routing.default == "a"
    twin = runner.duplicate()
    clone = cloudpickle.loads(cloudpickle.dumps(runner))
    assert twin == runner == clone and twin is not runner
    assert runner != RhapsodyRunner(backends={"a": THREADS, "b": "concurrent"}, default="a")
    assert runner != RhapsodyRunner("concurrent")
    single = RhapsodyRunner("concurrent", max_workers=2)
    assert single.name == "rhapsody-concurrent" and single.routing.names == ["concurrent"]


def test_task_resources_checks_the_backend_name() -> None:
    with pytest.raises(ConfigurationError) as info:
        task_resources(backend=3)
    assert info.value.config_key == "backend"
    with pytest.raises(ConfigurationError) as info:
        task_resources(backnd="dask")
    assert "'backend'" in str(info.value)  # listed among the allowed keys


# ------------------------------------------------------------------ routing
def test_routing_and_its_precedence(mixed: RhapsodyRunner) -> None:
    @flow(task_runner=mixed)
    def routed() -> dict[str, Any]:
        found = {
            "default": plain.submit(),
            "task_resources": wants_dask.submit(),
            "tag on the task": plain.with_options(tags=["rhapsody:dask"]).submit(),
            "command key": command.submit("dask"),
            "command, default": command.submit(None),
            # the command's key > task_resources > tag
            "key over resources": command_wants_dask.submit("local"),
            "resources over tag": wants_dask.with_options(tags=["rhapsody:local"]).submit(),
        }
        with tags("rhapsody:dask"):
            found["with tags(...)"] = plain.submit()
            found["ensemble by tag"] = ensemble_map(plain, range(4))
        found["ensemble backend="] = ensemble_map(plain, range(4), backend="dask")
        found["ensemble backend= over resources"] = ensemble_map(
            wants_dask, range(3), backend="local")
        found["ensemble of commands"] = ensemble_map(command, ["dask"] * 3, backend="dask")
        return {name: future.result() for name, future in found.items()}

    found = routed()
    commands = {k: v for k, v in found.items() if k.startswith(("command", "key"))}
    found.update({k: ran_on(v.stdout) for k, v in commands.items()})
    found["ensemble of commands"] = [ran_on(r.stdout) for r in found["ensemble of commands"]]
    assert found == {
        "default": "flow", "task_resources": "dask", "tag on the task": "dask",
        "command key": "dask", "command, default": "flow", "key over resources": "flow",
        "resources over tag": "dask", "with tags(...)": "dask",
        "ensemble by tag": ["dask"] * 4, "ensemble backend=": ["dask"] * 4,
        "ensemble backend= over resources": ["flow"] * 3,
        "ensemble of commands": ["dask"] * 3,
    }


def test_an_unknown_name_fails_that_task_run_listing_the_names() -> None:
    runner = RhapsodyRunner(backends={"a": THREADS, "b": THREADS})

    @task
    @task_resources(backend="gpu")
    def lost() -> str:
        return "never"

    @flow(task_runner=runner)
    def some_lost() -> dict[str, Any]:
        futures = {
            "resources": lost.submit(),
            "tag": plain.with_options(tags=["rhapsody:gpu"]).submit(),
            "command key": command.submit("gpu"),
            "two tags": plain.with_options(tags=["rhapsody:a", "rhapsody:b"]).submit(),
            "fine": plain.with_options(tags=["rhapsody:b"]).submit(),
        }
        with pytest.raises(ConfigurationError, match=r"'gpu' .*\['a', 'b'\]"):
            ensemble_map(plain, range(3), backend="gpu")
        with pytest.raises(ConfigurationError, match="pass backend='a' to ensemble_map"):
            ensemble_map(command, ["a"] * 2, backend="b").result()
        for future in futures.values():
            future.wait()
        return {name: future.state for name, future in futures.items()}

    states = some_lost()
    assert states.pop("fine").result() == "flow"
    sources = {"resources": "task_resources(backend=...)", "tag": "the tag 'rhapsody:gpu'",
               "command key": "the task's 'backend' key"}
    for name, source in sources.items():
        assert states[name].is_failed()
        message = states[name].message
        assert f"Backend 'gpu' (from {source}) is not one of this runner's backends: " \
               "['a', 'b']" in message, message
    assert "name 2 backends" in states["two tags"].message


def test_an_upstream_backend_is_routed_to_like_any_registry_name() -> None:
    """`upstream.concurrent` (rhapsody-py's own backend, through the registry) beside ours:
    its commands carry the `backend` key, which upstream's backends would refuse."""
    pytest.importorskip("rhapsody")
    runner = RhapsodyRunner(backends={"local": THREADS, "upstream": "upstream.concurrent"})

    @flow(task_runner=runner)
    def beside() -> tuple[str, str, list[str], Any]:
        here = plain.submit().result()
        there = command.submit("upstream").result().stdout
        members = ensemble_map(command, ["upstream"] * 3, backend="upstream").result()
        tagged = plain.with_options(tags=["rhapsody:upstream"]).submit()
        tagged.wait()
        assert tagged.state.is_completed()
        return here, there, [m.stdout for m in members], tagged.task_run_id

    here, there, members, tagged_run = beside()
    assert here == "flow"
    assert int(there) > 0 and len(members) == 3 and all(int(m) > 0 for m in members)
    assert task_run_logs(tagged_run, "Backend 'upstream' task plain-")


# ------------------------------------------------------------------ lifecycle
def test_each_backend_starts_on_first_use_and_all_end_with_the_flow() -> None:
    EVENTS.clear()
    runner = RhapsodyRunner(backends={
        "first": {"backend": "recorded", "label": "first", "executor": "thread"},
        "second": {"backend": "recorded", "label": "second", "executor": "thread"},
        "idle": {"backend": "recorded", "label": "idle"},
        "broken": "broken-start",
    }, default="first")

    @flow(task_runner=runner)
    def lazily() -> tuple[list[tuple[str, str]], list[Any]]:
        plain.submit().result()
        after_first = list(EVENTS)
        # Many bodies at once for a backend not started yet: it starts once.
        second = [plain.with_options(tags=["rhapsody:second"]).submit(i) for i in range(8)]
        broken = [plain.with_options(tags=["rhapsody:broken"]).submit(i) for i in range(2)]
        [future.wait() for future in [*second, *broken]]
        assert [future.result() for future in second] == ["flow"] * 8
        return after_first, [future.state for future in broken]

    assert EVENTS == []  # checked when created (constructed), never started
    after_first, broken = lazily()
    assert after_first == [("start", "first")]
    assert EVENTS[:2] == [*after_first, ("start", "second")]
    assert sorted(EVENTS[2:]) == [("shutdown", "first"), ("shutdown", "second")]
    for state in broken:  # only the task runs routed to the broken backend fail
        assert state.is_failed()
        with pytest.raises(BackendError, match="no route to the batch system"):
            state.result()


def test_logs_and_artifacts_per_backend(
    mixed: RhapsodyRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0.3)

    @task
    def nap(i: int) -> str:
        time.sleep(0.3)
        return where()

    @flow(task_runner=mixed)
    def both() -> tuple[str, Any, Any]:
        local = nap.map(range(8))
        remote = nap.with_options(tags=["rhapsody:dask"]).map(range(8))
        assert [f.result() for f in local] == ["flow"] * 8
        assert [f.result() for f in remote] == ["dask"] * 8
        return str(get_run_context().flow_run.id), local[0].task_run_id, remote[0].task_run_id

    flow_run_id, local_run, remote_run = both()
    assert task_run_logs(remote_run, "Backend 'dask' task nap-")
    assert task_run_logs(local_run, "Backend 'local' task nap-")
    found = artifacts_of(flow_run_id, expected=4)
    progress_bars = sorted(a.description for a in found if a.type == "progress")
    assert len(progress_bars) == 2, found
    assert "on 'dask'**: 8 of 8 backend tasks done" in progress_bars[0]
    assert "on 'local'**: 8 of 8 backend tasks done" in progress_bars[1]
    tables = [{row["metric"]: row["value"] for row in _table(a.data)}
              for a in found if a.type == "table"]
    assert sorted(t["backend"] for t in tables) == ["dask (dask)", "local (concurrent)"]
    assert all(t["backend tasks"] == "8" and t["completed"] == "8" for t in tables)


def test_cancel_all_reaches_every_backend(mixed: RhapsodyRunner, tmp_path: Any) -> None:
    @executable_task
    def sleeper(pid_file: str, backend: str) -> dict[str, Any]:
        return {"executable": "/bin/sh", "arguments": ["-c", f"echo $$ > {pid_file}; "
                                                       "exec sleep 120"], "backend": backend}

    files = {name: tmp_path / f"{name}.pid" for name in ("local", "dask")}
    with mixed:
        futures = [mixed.submit(sleeper, {"pid_file": str(path), "backend": name})
                   for name, path in files.items()]
        assert wait_until(lambda: all(p.exists() and p.read_text() for p in files.values()),
                          timeout=120)
        mixed.cancel_all()
        for future in futures:
            future.wait(timeout=60)
            assert future.state.type == StateType.CANCELLED
    pids = [int(path.read_text()) for path in files.values()]
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=30)


SIGNALLED_FLOW = textwrap.dedent("""
    import os, sys, time
    from prefect import flow, task
    from rhapsody_prefect import RhapsodyRunner, executable_task

    pid_file = sys.argv[1]

    @executable_task
    def sleeper(i: int) -> list[str]:
        return ["/bin/sh", "-c", f"echo $$ >> {pid_file}; exec sleep 300"]

    @task(tags=["rhapsody:processes"])
    def python_sleeper(i: int) -> None:
        with open(pid_file, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(300)

    @flow(task_runner=RhapsodyRunner(backends={
        "threads": {"backend": "concurrent", "max_workers": 2},
        "processes": {"backend": "concurrent", "max_workers": 2, "executor": "process"},
    }))
    def long_flow():
        futures = [*sleeper.map(range(2)), *python_sleeper.map(range(2))]
        return [f.result() for f in futures]

    long_flow()
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signalled_flow_ends_the_tasks_of_every_backend(tmp_path: Any, signum: int) -> None:
    """SIGTERM (how a worker cancels a flow run) and SIGKILL (the watchdogs) of the flow
    process end the bodies on both backends: commands and process-pool functions."""
    pids = signal_flow_script(tmp_path / "long_flow.py", SIGNALLED_FLOW, 4, signum,
                              timeout=240)
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=30), (
        "bodies outlived the signalled flow run: "
        + json.dumps([p for p in pids if pid_alive(p)]))
