"""Small helpers shared by the test modules (no fakes of real components here)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

from rhapsody_prefect import TaskState


def record_states(backend) -> dict[str, list[str]]:
    """Register a callback on `backend`; returns uid -> list of states seen, in order."""
    seen: dict[str, list[str]] = {}
    backend.register_callback(
        lambda task, state: seen.setdefault(task["uid"], []).append(str(state))
    )
    return seen


def count_and_fail_first(counter_file: str, failures: int) -> str:
    """Fails the first `failures` calls (counted in a file, so it works across processes)."""
    path = pathlib.Path(counter_file)
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls <= failures:
        raise RuntimeError(f"planned failure {calls}")
    return f"ok after {calls} calls"


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def task_run_logs(task_run_id: Any, contains: str, timeout: float = 30.0) -> list[Any]:
    """A task run's logs from the Prefect API, polled until one message contains `contains`.

    The API stores logs a little after they are sent; returns what it has at the deadline.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    logs: list[Any] = []

    def found() -> bool:
        nonlocal logs
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id]))
            )
        return any(contains in log.message for log in logs)

    wait_until(found, timeout=timeout, interval=0.5)
    return logs


def poll(read: Callable[[], Any], ready: Callable[[Any], bool], timeout: float = 60.0) -> Any:
    """Read until `ready(value)`, or return the last value at the deadline (the API lags)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not ready(value) and time.monotonic() < deadline:
        time.sleep(1)
        value = read()
    return value


async def wait_for_state(backend, uid: str, state: TaskState, timeout: float = 60) -> None:
    """Poll the backend until task `uid` is in `state` (AssertionError after `timeout` s)."""
    for _ in range(int(timeout * 10)):
        if backend.get_task_state(uid) == state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{uid} never reached {state}: {backend.get_task_state(uid)}")


def signal_flow_script(
    script: pathlib.Path, body: str, bodies: int, signum: int, timeout: float = 240
) -> list[int]:
    """Run flow script `body` (it writes each body's pid to the file in argv[1]) until
    `bodies` pids are written, send `signum` to it, and return the pids. Prefect's
    ephemeral API server, which a signalled flow process leaves behind as its child
    (a real worker's flow runs have an API URL), is killed here."""
    import contextlib
    import subprocess
    import sys

    import psutil

    script.write_text(body)
    pid_file = script.parent / "pids"
    process = subprocess.Popen([sys.executable, str(script), str(pid_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api_servers: list[psutil.Process] = []
    try:
        assert wait_until(
            lambda: pid_file.exists() and len(pid_file.read_text().split()) == bodies,
            timeout=timeout,
        ), "the backend tasks never started"
        pids = [int(p) for p in pid_file.read_text().split()]
        assert all(pid_alive(p) for p in pids)
        api_servers = [child for child in psutil.Process(process.pid).children(recursive=True)
                       if "prefect.server" in " ".join(child.cmdline())]
        process.send_signal(signum)
        process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
        for server in api_servers:
            with contextlib.suppress(psutil.NoSuchProcess):
                server.kill()
    return pids
