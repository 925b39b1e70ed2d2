"""The dask backend on real clusters: a LocalCluster and a `dask scheduler` +
`dask worker` subprocess pair reached by address. No mocks."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal

import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect import BackendError, ConfigurationError, TaskError, TaskState
from tests.helpers import pid_alive, record_states, wait_for_state

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]

SPECS = ["dask_backend_spec", "dask_pair_backend_spec"]


@pytest.fixture(params=SPECS, ids=["localcluster", "scheduler-worker-pair"])
async def backend(request):
    name, kwargs = request.getfixturevalue(request.param)
    backend = rhapsody.get_backend(name, **kwargs)
    try:
        yield backend
    finally:
        await asyncio.wait_for(backend.terminate(), 60)


def square(x: int) -> int:
    return x * x


async def async_square(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def where_am_i() -> dict:
    worker = distributed.get_worker()
    key = worker.get_current_task()
    return {
        "pid": os.getpid(),
        "worker": worker.address,
        "restrictions": dict(worker.state.tasks[key].resource_restrictions or {}),
    }


def kill_my_worker_first_time(counter: str) -> str:
    path = pathlib.Path(counter)
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return f"survived on call {calls}"


def kill_my_worker_always() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------ functions and commands
async def test_functions_async_functions_and_executables(backend):
    seen = record_states(backend)
    tasks = [
        {"uid": "sq", "function": square, "args": [6]},
        {"uid": "asq", "function": async_square, "args": [7]},
        {"uid": "lambda", "function": lambda a, b=1: a + b, "args": [1], "kwargs": {"b": 41}},
        {"uid": "cmd", "executable": "/bin/sh", "arguments": ["-c", "echo out; echo err >&2"]},
        {"uid": "exit3", "executable": "exit 3", "shell": True},
        {"uid": "raise", "function": fail, "args": ["marker-77"]},
    ]
    await backend.submit_tasks(tasks)
    with pytest.raises(TaskError) as info:
        await backend.wait(timeout=120)
    by_uid = {t["uid"]: t for t in tasks}
    assert by_uid["sq"]["return_value"] == 36
    assert by_uid["asq"]["return_value"] == 49
    assert by_uid["lambda"]["return_value"] == 42
    assert (by_uid["cmd"]["exit_code"], by_uid["cmd"]["stdout"], by_uid["cmd"]["stderr"]) == (
        0, "out\n", "err\n"
    )
    assert by_uid["exit3"]["state"] == TaskState.FAILED
    assert by_uid["exit3"]["exit_code"] == 3
    assert isinstance(by_uid["raise"]["exception"], ValueError)
    assert "marker-77" in str(by_uid["raise"]["exception"])
    assert "Remote traceback" in "".join(getattr(by_uid["raise"]["exception"], "__notes__", []))
    assert set(info.value.details["failed"]) == {"exit3", "raise"}
    for uid in ("sq", "asq", "lambda", "cmd"):
        assert seen[uid][-2:] == ["EXECUTING", "COMPLETED"]
    assert seen["raise"][-2:] == ["EXECUTING", "FAILED"]


async def test_executing_is_reported_while_the_task_runs(backend, tmp_path):
    marker = tmp_path / "release"
    await backend.submit_tasks([{
        "uid": "gate", "executable": "/bin/sh",
        "arguments": ["-c", f"while [ ! -e {marker} ]; do sleep 0.05; done"],
    }])
    await wait_for_state(backend, "gate", TaskState.EXECUTING)
    marker.touch()
    await backend.wait(timeout=60)
    assert backend.get_task_state("gate") == TaskState.COMPLETED


async def test_cancel_kills_the_command_on_the_worker(backend, tmp_path):
    pid_file = tmp_path / "pid"
    seen = record_states(backend)
    await backend.submit_tasks([{
        "uid": "long", "executable": "/bin/sh",
        "arguments": ["-c", f"echo $$ > {pid_file}; exec sleep 120"],
    }])
    await wait_for_state(backend, "long", TaskState.EXECUTING)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    assert await backend.cancel_task("long") is True
    await backend.wait(timeout=30)
    assert seen["long"][-1] == "CANCELED"
    for _ in range(100):
        if not pid_alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not pid_alive(pid), "the cancelled command still runs on the worker"
    # the worker thread is free again
    await backend.submit_tasks([{"uid": "after", "function": square, "args": [3]}])
    await backend.wait(timeout=30)
    assert backend.get_task("after")["return_value"] == 9


async def test_timeout_and_retries_use_fresh_dask_keys(backend, tmp_path):
    from tests.helpers import count_and_fail_first

    counter = str(tmp_path / "calls")
    tasks = [
        {"uid": "flaky", "function": count_and_fail_first, "args": [counter, 1], "retries": 1,
         "retry_delay": 0},
        {"uid": "late", "executable": "sleep", "arguments": ["60"], "timeout": 1},
    ]
    await backend.submit_tasks(tasks)
    with pytest.raises(TaskError) as info:
        await backend.wait(timeout=60)
    assert info.value.task_uid == "late"
    assert isinstance(tasks[1]["exception"], TimeoutError)
    assert tasks[0]["return_value"] == "ok after 2 calls"


# ------------------------------------------------------------------------------ resources
async def test_task_resources_map_to_declared_worker_resources(dask_pair_backend_spec):
    name, kwargs = dask_pair_backend_spec  # worker declares CPU=2 GPU=1
    backend = rhapsody.get_backend(name, **kwargs)
    try:
        tasks = [
            {"uid": "plain", "function": where_am_i},
            {"uid": "two-cores", "function": where_am_i, "cores_per_rank": 2},
            {"uid": "gpu", "function": where_am_i, "gpus_per_rank": 1},
            {"uid": "extra", "function": where_am_i, "backend_kwargs": {"resources": {"GPU": 1}}},
        ]
        await backend.submit_tasks(tasks)
        await backend.wait(timeout=60)
        got = {t["uid"]: t["return_value"]["restrictions"] for t in tasks}
        assert got == {
            "plain": {"CPU": 1},
            "two-cores": {"CPU": 2},
            "gpu": {"CPU": 1, "GPU": 1},
            "extra": {"CPU": 1, "GPU": 1},
        }
        for task, key in (
            ({"function": square, "args": [1], "cores_per_rank": 3}, "cores_per_rank"),
            ({"function": square, "args": [1], "ranks": 3}, "ranks"),
            ({"function": square, "args": [1], "gpus_per_rank": 2}, "gpus_per_rank"),
            ({"function": square, "args": [1], "backend_kwargs": {"resources": {"FPGA": 1}}},
             "backend_kwargs"),
            ({"function": square, "args": [1], "backend_kwargs": {"bogus": 1}}, "backend_kwargs"),
        ):
            with pytest.raises(ConfigurationError) as info:
                await backend.submit_tasks([task])
            assert info.value.config_key == key
            assert "never run" in str(info.value) or "bogus" in str(info.value)
    finally:
        await backend.terminate()


async def test_missing_gpu_on_plain_cluster_is_refused_before_running(dask_backend_spec, tmp_path):
    name, kwargs = dask_backend_spec  # LocalCluster without declared resources
    backend = rhapsody.get_backend(name, **kwargs)
    marker = tmp_path / "ran"
    try:
        with pytest.raises(ConfigurationError) as info:
            await backend.submit_tasks([
                {"uid": "ok", "executable": "touch", "arguments": [str(marker)]},
                {"uid": "gpu", "executable": "/bin/true", "gpus_per_rank": 1},
            ])
        assert info.value.config_key == "gpus_per_rank"
        assert "GPU" in str(info.value)
        # cores are not a declared resource here: more cores than a worker has
        # threads is refused, otherwise the task runs without resource restrictions
        with pytest.raises(ConfigurationError) as info:
            await backend.submit_tasks([{"function": where_am_i, "cores_per_rank": 2}])
        assert info.value.config_key == "cores_per_rank"
        assert "threads" in str(info.value)
        await backend.submit_tasks([{"uid": "one-core", "function": where_am_i}])
        await backend.wait(timeout=60)
        assert backend.get_task("one-core")["return_value"]["restrictions"] == {}
        assert not marker.exists()
    finally:
        await backend.terminate()


# ---------------------------------------------------------------------- failure handling
@pytest.mark.timeout(240)
async def test_killed_worker_is_rescheduled_or_failed(tmp_path):
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        backend = rhapsody.get_backend(
            "dask",
            cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "dashboard_address": None},
        )
        await backend.start()
    try:
        counter = str(tmp_path / "calls")
        await backend.submit_tasks(
            [{"uid": "phoenix", "function": kill_my_worker_first_time, "args": [counter]}]
        )
        await backend.wait(timeout=120)
        assert backend.get_task("phoenix")["return_value"] == "survived on call 2"

        await backend.submit_tasks([{"uid": "doomed", "function": kill_my_worker_always}])
        with pytest.raises(TaskError) as info:
            await backend.wait(timeout=120)
        error = backend.get_task("doomed")["exception"]
        assert isinstance(error, BackendError)
        assert "KilledWorker" in str(error)
        assert "KilledWorker" in str(info.value)
    finally:
        await asyncio.wait_for(backend.terminate(), 60)


@pytest.mark.timeout(240)
async def test_lost_scheduler_fails_outstanding_tasks(dask_pair_factory, tmp_path):
    pair = dask_pair_factory(nthreads=1, resources=None)
    backend = rhapsody.get_backend("dask", address=pair.address)
    try:
        tasks = [
            {"uid": "running", "executable": "sleep", "arguments": ["60"]},
            {"uid": "queued", "function": square, "args": [2]},
        ]
        await backend.submit_tasks(tasks)
        await wait_for_state(backend, "running", TaskState.EXECUTING)
        pair.snapshot_descendants()
        pair.kill_scheduler()
        with pytest.raises(TaskError):
            await backend.wait(timeout=60)
        for task in tasks:
            assert task["state"] == TaskState.FAILED
            assert isinstance(task["exception"], BackendError)
            assert "scheduler" in str(task["exception"])
        # a later submit fails fast too
        await backend.submit_tasks([{"uid": "later", "function": square, "args": [1]}])
        with pytest.raises(TaskError):
            await backend.wait(timeout=60)
        assert isinstance(backend.get_task("later")["exception"], BackendError)
    finally:
        await asyncio.wait_for(backend.terminate(), 60)


# ------------------------------------------------------------------------------ ownership
async def test_address_and_cluster_are_never_closed(dask_cluster, dask_process_pair):
    for kwargs in ({"address": dask_process_pair.address}, {"cluster": dask_cluster}):
        backend = rhapsody.get_backend("dask", **kwargs)
        await backend.submit_tasks([{"function": square, "args": [5]}])
        await backend.wait(timeout=60)
        await backend.terminate()
    assert dask_process_pair.scheduler.poll() is None
    assert dask_process_pair.worker.poll() is None
    assert dask_cluster.status.name == "running"
    with distributed.Client(dask_cluster, set_as_default=False) as client:
        assert client.submit(square, 4).result(timeout=30) == 16


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resources": {"threads": 2}},
        {"cluster_kwargs": {"n_workers": 1, "threads_per_worker": 2, "dashboard_address": None}},
        {},  # the default: a LocalCluster sized to the machine
    ],
    ids=["resources-threads", "cluster_kwargs", "default"],
)
async def test_started_cluster_is_closed(kwargs):
    backend = rhapsody.get_backend("dask", **kwargs)
    await backend.start()
    client = backend.client
    info = client.scheduler_info(n_workers=-1)
    threads = sum(w["nthreads"] for w in info["workers"].values())
    expected = {"resources-threads": 2, "cluster_kwargs": 2}.get(
        "resources-threads" if "resources" in kwargs else
        "cluster_kwargs" if kwargs else "default", os.cpu_count()
    )
    assert threads == expected
    pids = list(client.run(os.getpid).values())
    await backend.submit_tasks([{"function": square, "args": [3]}])
    await backend.wait(timeout=60)
    await asyncio.wait_for(backend.terminate(), 60)
    assert client.status == "closed"
    for _ in range(100):
        if not any(pid_alive(pid) for pid in pids):
            break
        await asyncio.sleep(0.1)
    assert not any(pid_alive(pid) for pid in pids)


# -------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"adress": "tcp://x:1"}, "adress"),
        ({"address": 5}, "address"),
        ({"cluster": object()}, "cluster"),
        ({"cluster_kwargs": ["n_workers"]}, "cluster_kwargs"),
        ({"adapt_kwargs": 3}, "adapt_kwargs"),
        ({"client_kwargs": "x"}, "client_kwargs"),
        ({"client_kwargs": {"asynchronous": True}}, "client_kwargs"),
        ({"resources": {"threads": 0}}, "resources"),
        ({"resources": {"cores": 2}}, "resources"),
        ({"address": "tcp://127.0.0.1:1", "cluster_kwargs": {"n_workers": 1}}, "cluster_kwargs"),
        ({"address": "tcp://127.0.0.1:1", "adapt_kwargs": {"maximum": 2}}, "adapt_kwargs"),
        ({"resource_names": {"gpus": 1}}, "resource_names"),
        ({"cluster_class": 3}, "cluster_class"),
    ],
)
def test_invalid_options_name_the_key(kwargs, key):
    with pytest.raises(ConfigurationError) as info:
        rhapsody.get_backend("dask", **kwargs)
    assert info.value.config_key == key


def test_reference_constructor_starts_nothing():
    import threading

    before = threading.active_count()
    backend = rhapsody.get_backend("dask", resources={"threads": 4})
    assert backend.client is None
    assert backend.cluster_kwargs["n_workers"] * backend.cluster_kwargs["threads_per_worker"] == 4
    assert rhapsody.discover_backends()["dask"] is True
    assert rhapsody.why_unavailable("dask") is None
    assert threading.active_count() == before


async def test_bad_cluster_class_is_a_configuration_error():
    # Checked (imported) where the backend is created: a typo fails where the flow is defined.
    with pytest.raises(ConfigurationError) as info:
        rhapsody.get_backend("dask", cluster_class="no_such_module.Cluster")
    assert info.value.config_key == "cluster_class"
    assert "no_such_module" in str(info.value)
