"""The watchdog protocol (core/watchdog.py) and its client (core/guard.py), with real processes.

A bye ends nothing; a pipe closed without a bye, a SIGKILL of the owning
process (also while a leaked copy of the pipe keeps it open), or a SIGTERM of
the watchdog ends every registered group, tree and command, and nothing forgotten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rhapsody_prefect.core.guard import LOG_ENV, Guard
from rhapsody_prefect.core.watchdog import Registry
from tests.helpers import pid_alive, wait_until

DEADLINE = 30.0  # the guarantee


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever is left is killed at teardown."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


def sleeper(started: list[subprocess.Popen[bytes]], group: bool = True) -> subprocess.Popen[bytes]:
    """`sh` leading a group (or not) with a `sleep` child: a command that started another."""
    process = subprocess.Popen(["/bin/sh", "-c", "sleep 300 & wait"], start_new_session=group)
    started.append(process)
    wait_until(lambda: len(psutil.Process(process.pid).children()) == 1, timeout=10)
    return process


def tree(process: subprocess.Popen[bytes]) -> list[int]:
    return [process.pid, *(p.pid for p in psutil.Process(process.pid).children(recursive=True))]


def all_dead(pids: list[int]) -> bool:
    return not any(pid_alive(pid) for pid in pids)


def test_registry_applies_complete_lines_only() -> None:
    registry = Registry()
    registry.feed(b'{"op":"group","key":1,"pid":999999999}\n{"op":"run","key":2,"ar')
    assert list(registry.entries) == [1]
    registry.feed(b'gv":["true"]}\nnot json\n{"op":"forget","key":1}\n')
    assert list(registry.entries) == [2]
    assert registry.entries[2]["argv"] == ["true"]
    assert not registry.bye
    registry.feed(b'{"op":"bye"}\n')
    assert registry.bye


def test_bye_ends_nothing_and_the_watchdog_exits(started) -> None:
    guard = Guard("test")
    command = sleeper(started)
    guard.kill_group(command.pid)
    watchdog = psutil.Process(guard.pid)
    assert watchdog.ppid() == os.getpid()
    assert os.getsid(watchdog.pid) != os.getsid(0), "the watchdog needs a session of its own"
    guard.close()
    assert wait_until(lambda: not pid_alive(watchdog.pid), timeout=DEADLINE)
    assert all(pid_alive(pid) for pid in tree(command))


def test_eof_without_bye_ends_groups_trees_and_runs_commands(started, tmp_path: Path) -> None:
    guard = Guard("test")
    group, other, forgotten = sleeper(started), sleeper(started, group=False), sleeper(started)
    pids = tree(group) + tree(other)
    guard.kill_group(group.pid)
    guard.kill_tree(other.pid)
    key = guard.kill_group(forgotten.pid)
    guard.forget(key)
    marker = tmp_path / "ran"
    guard.on_death(["/bin/sh", "-c", f'echo "$WHO" > {marker}'], env={"WHO": "watchdog"})
    watchdog = guard.pid
    guard.close(clean=False)
    assert wait_until(lambda: all_dead(pids), timeout=DEADLINE)
    assert wait_until(lambda: marker.exists() and marker.read_text() == "watchdog\n")
    assert all(pid_alive(pid) for pid in tree(forgotten))
    assert wait_until(lambda: not pid_alive(watchdog), timeout=DEADLINE)


def test_sigterm_of_the_watchdog_ends_what_is_registered(
    started, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a batch system does at a job's end: SIGTERM every process, the watchdog too."""
    log = tmp_path / "watchdog.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    guard = Guard("test")
    command = sleeper(started)
    pids = tree(command)
    guard.kill_group(command.pid)
    assert wait_until(lambda: log.exists() and "watching" in log.read_text())
    os.kill(guard.pid, signal.SIGTERM)
    assert wait_until(lambda: all_dead(pids), timeout=DEADLINE), log.read_text()
    assert "stopped by a signal" in log.read_text()
    guard.close()


OWNER = textwrap.dedent("""
    import os, signal, subprocess, sys
    from rhapsody_prefect.core.guard import Guard

    guard = Guard("owner")
    command = subprocess.Popen(["/bin/sh", "-c", "sleep 300 & wait"], start_new_session=True)
    guard.kill_group(command.pid)
    more = []
    if sys.argv[1] == "leak":  # another process holds the pipe open: no EOF, the pidfd tells
        fd = guard._fd
        more = [subprocess.Popen(["/bin/sleep", "300"], pass_fds=(fd,), start_new_session=True)]
        more = [p.pid for p in more]
    print(command.pid, guard.pid, *more, flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("mode", ["plain", "leak"])
def test_sigkill_of_the_owner_ends_what_it_registered(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    log = tmp_path / "watchdog.log"
    owner = subprocess.Popen(
        [sys.executable, str(script), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, LOG_ENV: str(log)}, text=True,
    )
    assert owner.stdout is not None and owner.stdin is not None
    command, watchdog, *more = (int(p) for p in owner.stdout.readline().split())
    try:
        pids = [command, *(p.pid for p in psutil.Process(command).children())]
        assert wait_until(lambda: log.exists() and "watching" in log.read_text())
        owner.stdin.write("\n")
        owner.stdin.flush()
        assert owner.wait(30) == -signal.SIGKILL
        assert wait_until(lambda: all_dead(pids), timeout=DEADLINE), log.read_text()
        assert wait_until(lambda: not pid_alive(watchdog), timeout=DEADLINE)
        if mode == "leak":
            assert pid_alive(more[0]), "the leaked pipe must have been held open meanwhile"
            assert "exited" in log.read_text()
    finally:
        for pid in [command, *more]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def test_a_forked_child_does_not_hold_the_pipe_open(started) -> None:
    guard = Guard("test")
    command = sleeper(started)
    pids = tree(command)
    guard.kill_group(command.pid)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only sleeps until it is killed
        time.sleep(300)
        os._exit(0)
    try:
        guard.close(clean=False)
        assert wait_until(lambda: all_dead(pids), timeout=DEADLINE)
        assert pid_alive(child), "EOF came while the forked child was alive"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_guard_whose_watchdog_is_gone_does_not_raise(
    started, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard("test")
    command = sleeper(started)
    guard.kill_group(command.pid)
    watchdog = psutil.Process(guard.pid)
    watchdog.kill()
    watchdog.wait(10)
    with caplog.at_level(logging.WARNING, logger="rhapsody_prefect.guard"):
        guard.kill_group(command.pid)  # EPIPE: logged, not raised
        guard.forget(1)
        guard.kill_tree(command.pid)
        guard.close()
    warnings = [r for r in caplog.records if r.name == "rhapsody_prefect.guard"]
    assert [r.levelno for r in warnings] == [logging.WARNING], caplog.text
    message = warnings[0].getMessage()
    assert message.startswith("The test watchdog is gone (") and "Broken pipe" in message
    assert "are not ended if this process dies" in message
    assert pid_alive(command.pid), "a broken guard must not end what it guarded"
