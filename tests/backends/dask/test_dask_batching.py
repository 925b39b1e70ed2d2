"""The dask backend submits a launch batch in few graph updates and watches it with
one watcher: behaviours that batching must keep, on real clusters. No mocks, no
timed assertions."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect import TaskError, TaskState
from tests.helpers import record_states, wait_for_state

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(300)]


@pytest.fixture
async def backend(dask_backend_spec):
    name, kwargs = dask_backend_spec  # the module's LocalCluster: 2 workers x 1 thread
    backend = rhapsody.get_backend(name, **kwargs)
    await backend.start()
    try:
        yield backend
    finally:
        await asyncio.wait_for(backend.terminate(), 60)


def identity(x: int) -> int:
    return x


def fail(message: str) -> None:
    raise ValueError(message)


def where_am_i() -> dict:
    worker = distributed.get_worker()
    key = worker.get_current_task()
    return {"worker": worker.address,
            "restrictions": dict(worker.state.tasks[key].resource_restrictions or {})}


def record_key_and_fail_first(directory: str, uid: str, failures: int) -> list[str]:
    """Appends this attempt's Dask key to a file; fails the first `failures` attempts."""
    path = pathlib.Path(directory) / uid
    with path.open("a") as file:
        file.write(distributed.get_worker().get_current_task() + "\n")
    keys = path.read_text().split()
    if len(keys) <= failures:
        raise RuntimeError(f"planned failure {len(keys)}")
    return keys


async def update_graphs(backend) -> int:
    """How many graph updates the scheduler received from the backend's client."""
    client = backend.client
    events = await asyncio.to_thread(client.get_events, client.id)
    return sum(1 for _, msg in events
               if isinstance(msg, dict) and msg.get("action") == "update-graph")


async def our_tasks_on_client_loop(backend) -> int:
    """asyncio tasks running this package's code on the Dask client's loop."""
    async def count() -> int:
        codes = [getattr(task.get_coro(), "cr_code", None) for task in asyncio.all_tasks()]
        return sum(1 for code in codes if code and "rhapsody_prefect" in code.co_filename)

    future = asyncio.run_coroutine_threadsafe(count(), backend.client.loop.asyncio_loop)
    return await asyncio.wrap_future(future)


async def test_one_batch_mixing_workers_and_priorities(backend):
    workers = sorted(backend.client.nthreads())
    assert len(workers) == 2
    options = [
        {},
        {"workers": [workers[0]]},
        {"workers": [workers[1]]},
        {"workers": [workers[1]], "priority": 5},
    ]
    tasks = [{"uid": f"t{i}", "function": where_am_i, "backend_kwargs": dict(options[i % 4])}
             for i in range(24)]
    before = await update_graphs(backend)
    await backend.submit_tasks(tasks)
    await backend.wait(timeout=120)
    # one graph update per distinct set of submit options, not one per task
    assert await update_graphs(backend) - before == len(options)
    for i, task in enumerate(tasks):
        assert task["state"] == TaskState.COMPLETED
        pinned = options[i % 4].get("workers")
        if pinned:
            assert task["return_value"]["worker"] == pinned[0], task["uid"]


async def test_one_batch_mixing_resources(dask_pair_backend_spec):
    name, kwargs = dask_pair_backend_spec  # one worker declaring CPU=2 GPU=1
    backend = rhapsody.get_backend(name, **kwargs)
    try:
        await backend.start()
        kinds = [
            ({}, {"CPU": 1}),
            ({"cores_per_rank": 2}, {"CPU": 2}),
            ({"gpus_per_rank": 1}, {"CPU": 1, "GPU": 1}),
            ({"backend_kwargs": {"resources": {"GPU": 1}}}, {"CPU": 1, "GPU": 1}),
        ]
        tasks = [{"uid": f"r{i}", "function": where_am_i, **kinds[i % 4][0]} for i in range(16)]
        before = await update_graphs(backend)
        await backend.submit_tasks(tasks)
        await backend.wait(timeout=120)
        # {"GPU": 1} via gpus_per_rank and via backend_kwargs are the same options
        assert await update_graphs(backend) - before == 3
        for i, task in enumerate(tasks):
            assert task["return_value"]["restrictions"] == kinds[i % 4][1], task["uid"]
    finally:
        await asyncio.wait_for(backend.terminate(), 60)


async def test_failures_and_a_cancel_in_one_batch(backend, tmp_path):
    marker = tmp_path / "release"
    seen = record_states(backend)
    tasks = [
        {"uid": "long", "executable": "sleep", "arguments": ["120"]},
        {"uid": "gate", "executable": "/bin/sh",
         "arguments": ["-c", f"while [ ! -e {marker} ]; do sleep 0.05; done; echo through"]},
        *({"uid": f"ok{i}", "function": identity, "args": [i]} for i in range(20)),
        *({"uid": f"raise{i}", "function": fail, "args": [f"marker-{i}"]} for i in range(5)),
        *({"uid": f"exit{i}", "executable": "exit 3", "shell": True} for i in range(5)),
    ]
    await backend.submit_tasks(tasks)
    await wait_for_state(backend, "long", TaskState.EXECUTING)
    await wait_for_state(backend, "gate", TaskState.EXECUTING)
    assert await backend.cancel_task("long") is True  # while "gate" and the rest still run
    marker.touch()
    with pytest.raises(TaskError) as info:
        await backend.wait(timeout=120)
    by_uid = {task["uid"]: task for task in tasks}
    assert by_uid["long"]["state"] == TaskState.CANCELED
    assert seen["long"][-1] == "CANCELED"
    assert (by_uid["gate"]["state"], by_uid["gate"]["stdout"]) == (TaskState.COMPLETED, "through\n")
    for i in range(20):
        assert (by_uid[f"ok{i}"]["state"], by_uid[f"ok{i}"]["return_value"]) == (
            TaskState.COMPLETED, i)
    for i in range(5):
        error = by_uid[f"raise{i}"]["exception"]
        assert isinstance(error, ValueError)
        assert f"marker-{i}" in str(error)
        assert (by_uid[f"exit{i}"]["state"], by_uid[f"exit{i}"]["exit_code"]) == (
            TaskState.FAILED, 3)
    assert set(info.value.details["failed"]) == {
        *(f"raise{i}" for i in range(5)), *(f"exit{i}" for i in range(5))}
    for uid, states in seen.items():  # one terminal state each, EXECUTING before it
        assert sum(TaskState(s).is_terminal for s in states) == 1, (uid, states)
        if uid != "long":
            assert states[-2] == "EXECUTING", (uid, states)


async def test_retries_in_a_batch_get_fresh_keys(backend, tmp_path):
    tasks = [
        {"uid": f"flaky{i}", "function": record_key_and_fail_first,
         "args": [str(tmp_path), f"flaky{i}", i % 3], "retries": 2, "retry_delay": 0}
        for i in range(12)
    ] + [{"uid": f"plain{i}", "function": identity, "args": [i]} for i in range(12)]
    await backend.submit_tasks(tasks)
    await backend.wait(timeout=120)
    for i in range(12):
        keys = tasks[i]["return_value"]
        assert len(keys) == i % 3 + 1
        assert len(set(keys)) == len(keys)  # every attempt was a new Dask key
        for attempt, key in enumerate(keys, start=1):
            assert key.startswith(f"rhapsody-flaky{i}-{attempt}-"), key
        assert tasks[12 + i]["return_value"] == i


async def test_five_thousand_tasks_in_one_submit(backend):
    count = 5_000
    tasks = [{"uid": f"m{i}", "function": identity, "args": [i]} for i in range(count)]
    before = await update_graphs(backend)
    await backend.submit_tasks(tasks)
    for _ in range(100):  # until the launch reached Dask
        if backend.client.futures:
            break
        await asyncio.sleep(0.05)
    watching = await our_tasks_on_client_loop(backend)
    await backend.wait(timeout=240)
    assert await update_graphs(backend) - before == 1
    # one watcher for the batch (and its gather rounds), not one per task
    assert 1 <= watching <= 20, watching
    for i, task in enumerate(tasks):
        assert (task["state"], task["return_value"]) == (TaskState.COMPLETED, i), task["uid"]
