"""The one reaper of RADICAL-Pilot's processes (`processes`), with real processes, no pilot.

What RP forks from the client without exec (its proxy's per-session worker) carries
neither the run's working directory nor its environment marker: a run records its
forks, and the reap command the watchdog runs after the client's death kills them
(tests/system/test_orphans.py checks the whole SIGKILL path with a real pilot). A batch
pilot's agent left on this machine is found by its working directory (`reap_inside`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time

import psutil
import pytest

processes = pytest.importorskip("rhapsody_prefect.backends.radical_pilot.processes")

from tests.helpers import pid_alive, wait_until  # noqa: E402

NO_RUN = "rhapsody.rp.20000101-000000.1.001"  # a run id no process carries


def fork_sleeper(also_child: bool = False) -> tuple[int, int | None]:
    """os.fork() a child that sleeps (and, if asked, starts a `sleep` of its own)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest code from here on
        try:
            os.close(read_end)
            grandchild = subprocess.Popen(["/bin/sleep", "60"]).pid if also_child else 0
            os.write(write_end, f"{grandchild}\n".encode())
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        grandchild = int(pipe.readline())
    return pid, grandchild or None


def gone(pid: int | None) -> bool:
    return pid is None or not pid_alive(pid)


def end(pids: list[int | None], children: list[int]) -> None:
    for pid in pids:
        if pid is not None and pid_alive(pid):
            os.kill(pid, 9)
    for pid in children:
        with contextlib.suppress(ChildProcessError):  # the reaper may have waited for it
            os.waitpid(pid, 0)


def test_forks_are_recorded_while_a_run_records(tmp_path: pathlib.Path) -> None:
    processes.record_forks(tmp_path)
    try:
        recorded, grandchild = fork_sleeper(also_child=True)
    finally:
        processes.stop_recording_forks(tmp_path)
    unrecorded, _ = fork_sleeper()
    try:
        assert [p.pid for p in processes.recorded_forks(tmp_path)] == [recorded]
        # the client lives: reap_run leaves forks alone (they may be another library's)
        assert processes.reap_run(NO_RUN) == 0 and pid_alive(recorded)
        assert processes.reap_run(NO_RUN, tmp_path) == 2  # the fork and its child
        assert wait_until(lambda: gone(recorded) and gone(grandchild), timeout=10)
        assert pid_alive(unrecorded)
        assert processes.recorded_forks(tmp_path) == []
    finally:
        end([recorded, unrecorded, grandchild], [recorded, unrecorded])


def test_a_recorded_pid_taken_by_another_process_is_left_alone(
    tmp_path: pathlib.Path,
) -> None:
    other = subprocess.Popen(["/bin/sleep", "60"])
    try:
        started = psutil.Process(other.pid).create_time()
        (tmp_path / processes.FORKS_FILE).write_text(f"{other.pid} {started - 5!r}\n")
        assert processes.recorded_forks(tmp_path) == []
        assert processes.reap_run(NO_RUN, tmp_path) == 0 and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_the_reap_command_kills_the_recorded_forks(tmp_path: pathlib.Path) -> None:
    """What the watchdog runs once the client died: `reap <run id> <run dir>`."""
    processes.record_forks(tmp_path)
    try:
        pid, _ = fork_sleeper()
    finally:
        processes.stop_recording_forks(tmp_path)
    try:
        argv = processes.reap_argv(NO_RUN, tmp_path)
        assert argv[-3:] == ["reap", NO_RUN, str(tmp_path)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"reaped 1 processes of {NO_RUN}")
        assert wait_until(lambda: gone(pid), timeout=10)
    finally:
        end([pid], [pid])


def test_reap_inside_kills_what_runs_in_a_directory(tmp_path: pathlib.Path) -> None:
    inside = tmp_path / "radical.pilot.sandbox" / "session" / "pilot.0000"
    inside.mkdir(parents=True)
    agent = subprocess.Popen(["/bin/sleep", "60"], cwd=inside)
    elsewhere = subprocess.Popen(["/bin/sleep", "60"], cwd=tmp_path)
    try:
        assert processes.reap_inside(inside.parent) == 1
        assert agent.wait(10) is not None
        assert elsewhere.poll() is None
    finally:
        for process in (agent, elsewhere):
            process.kill()
            process.wait()
