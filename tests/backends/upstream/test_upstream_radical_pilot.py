"""Upstream RHAPSODY's radical_pilot backend on a real local pilot (radical.pilot 1.103.2).

One pilot on `local.localhost` with one raptor master and worker (upstream runs
function tasks only through raptor): commands with the RADICAL-Pilot keys the
adapter maps (environment, pre_exec, cwd as a `cd`, ranks and cores), functions,
a retry, and a cancel that stops the command.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys

import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect import TaskError, TaskState
from tests.helpers import pid_alive, record_states, wait_until

pytest.importorskip("rhapsody")
pytest.importorskip("radical.pilot")
pytestmark = [pytest.mark.slow, pytest.mark.radical_pilot]


@pytest.fixture
def rp_environment(tmp_path, monkeypatch) -> pathlib.Path:
    """Upstream writes its session directory into $RADICAL_PILOT_BASE (default: the
    shell's $PWD, not the process's cwd) and client files under $RADICAL_BASE; the pilot
    sandbox goes to ~/radical.pilot.sandbox unless `resources` names one. Its helpers
    must be on PATH."""
    venv_bin = str(pathlib.Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VIRTUAL_ENV", str(pathlib.Path(venv_bin).parent))
    monkeypatch.setenv("RADICAL_PILOT_BASE", str(tmp_path))
    monkeypatch.setenv("RADICAL_BASE", str(tmp_path / "base"))
    monkeypatch.setenv("RADICAL_REPORT", "False")
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def test_commands_functions_retry_and_cancel_on_a_pilot(rp_environment):
    work = rp_environment
    calls = work / "calls"
    pid_file = work / "sleeper.pid"

    def pid_plus(x: int) -> tuple[int, int]:
        return os.getpid(), x + 1

    def boom() -> None:
        raise KeyError("missing-on-the-pilot")

    def flaky() -> str:
        count = int(calls.read_text()) + 1 if calls.exists() else 1
        calls.write_text(str(count))
        if count == 1:
            raise RuntimeError("first call fails")
        return f"ok after {count}"

    tasks = [
        {"uid": "cmd", "executable": "/bin/sh",
         "arguments": ["-c", 'echo "$X" "$1"; pwd; cat pre', "sh", "$X"],
         "environment": {"X": "from-env"}, "cwd": str(work),
         "pre_exec": [f"echo pre-ran > {work / 'pre'}"]},
        {"uid": "two_cores", "executable": "/bin/true", "cores_per_rank": 2},
        {"uid": "exits", "executable": "/bin/sh", "arguments": ["-c", "echo no >&2; exit 3"]},
        {"uid": "fn", "function": pid_plus, "args": (1,)},
        {"uid": "raises", "function": boom},
        {"uid": "flaky", "function": flaky, "retries": 1, "retry_delay": 0},
        {"uid": "sleeper", "executable": "/bin/sh",
         "arguments": ["-c", f"echo $$ > {pid_file}; exec sleep 120"]},
    ]
    backend = rhapsody.get_backend(
        "upstream.radical_pilot",
        resources={"resource": "local.localhost", "runtime": 20, "cores": 4,
                   "sandbox": str(work / "sandbox")},
        raptor_config={"masters": [{"ranks": 1, "workers": [{"ranks": 1}]}]},
    )
    async with backend:
        states = record_states(backend)
        await backend.submit_tasks(tasks)
        assert await asyncio.to_thread(wait_until, pid_file.exists, 300, 0.5)
        pid = int(pid_file.read_text())
        assert await backend.cancel_task("sleeper") is True
        with pytest.raises(TaskError) as caught:
            await backend.wait(timeout=300)
    by_uid = {t["uid"]: t for t in tasks}
    assert by_uid["cmd"]["stdout"] == f"from-env $X\n{work}\npre-ran\n"
    assert by_uid["two_cores"]["state"] == TaskState.COMPLETED
    # upstream appends 'RuntimeError("task failed")' to stderr; the adapter takes it off
    assert (by_uid["exits"]["exit_code"], by_uid["exits"]["stderr"]) == (3, "no\n")
    assert by_uid["exits"]["exception"] is None
    worker_pid, value = by_uid["fn"]["return_value"]
    assert value == 2 and worker_pid != os.getpid()
    raised = by_uid["raises"]["exception"]
    assert isinstance(raised, KeyError) and "missing-on-the-pilot" in str(raised)
    assert by_uid["flaky"]["return_value"] == "ok after 2"
    assert states["flaky"].count("RETRYING") == 1
    assert by_uid["sleeper"]["state"] == TaskState.CANCELED
    assert wait_until(lambda: not pid_alive(pid), timeout=20)  # RP kills a cancelled task
    assert caught.value.details["failed"] == ["exits", "raises"]
    assert list(work.glob("rhapsody.session.*")), "no session directory in RADICAL_PILOT_BASE"
    assert list((work / "sandbox").glob("radical.pilot.sandbox/rhapsody.session.*/pilot.*"))
