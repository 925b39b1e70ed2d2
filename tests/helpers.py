"""Small helpers shared by the test modules (no fakes of real components here)."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable


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
