"""The watchdog: a tiny process that ends what a flow process started, once that process dies.

A `Guard` (`core/guard.py`) starts it and is the only holder of the write end of
a pipe; the watchdog holds the read end and a pidfd of the flow process. The
flow side registers what to end, one JSON object per line:

    {"op": "group", "key": 1, "pid": 4242}          # killpg(4242): a command's process group
    {"op": "tree", "key": 2, "pid": 4343}           # a process and all its descendants
    {"op": "run", "key": 3, "argv": ["scancel", "77"], "env": {...}, "cwd": null}
    {"op": "forget", "key": 1}                      # it ended normally
    {"op": "bye"}                                   # the backend terminated cleanly

When the pipe reaches EOF, or the flow process's pidfd becomes readable (it
exited: any signal, SIGKILL included), without a "bye" first, the watchdog
starts the registered commands, sends SIGTERM to the registered groups and
trees, waits up to `--grace` seconds, sends SIGKILL to what is left, waits for
the commands (at most `--command-timeout` seconds) and exits. SIGTERM or SIGHUP
sent to the watchdog itself does the same (a batch job's end). After a "bye" it
exits without killing anything.

    python -m rhapsody_prefect.core.watchdog <read fd> <flow pid> [--grace 3] [--log FILE]

It runs in a session of its own (a signal to the flow's process group does not
reach it), with cwd `/` and stdin/stdout/stderr on /dev/null. Imports: the
standard library and psutil only, so the Guard can run it as a plain script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

import psutil

#: Seconds between SIGTERM and SIGKILL.
DEFAULT_GRACE = 3.0
#: Seconds the registered commands get before they are killed.
DEFAULT_COMMAND_TIMEOUT = 20.0


class Registry:
    """What the flow registered and has not forgotten, in registration order."""

    def __init__(self, log: Any = None) -> None:
        self.entries: dict[Any, dict[str, Any]] = {}
        self.bye = False
        self.log = log
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Apply the complete lines in `data` (a trailing partial line waits)."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self.apply(line)

    def apply(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            self.note(f"ignoring malformed line {line[:200]!r}")
            return
        if op == "bye":
            self.bye = True
        elif op == "forget":
            self.entries.pop(message.get("key"), None)
        elif op in ("group", "tree", "run"):
            if op != "run":  # remember who it was, to tell a reused pid later
                message["ctime"] = _create_time(int(message["pid"]))
            self.entries[message.get("key")] = message
        else:
            self.note(f"ignoring unknown op {op!r}")

    def note(self, text: str) -> None:
        if self.log is not None:
            self.log.write(f"{time.time():.3f} watchdog {os.getpid()}: {text}\n")
            self.log.flush()


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, ctime: float | None) -> psutil.Process | None:
    """The process `pid` if it is provably the one registered (not a reused pid)."""
    try:
        process = psutil.Process(pid)
        return process if ctime is not None and process.create_time() == ctime else None
    except psutil.Error:
        return None


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of the flow process (readable once it exits); -1 if it is gone already,
    None if this kernel has no pidfds (then the pipe's EOF alone tells)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return -1
    except (AttributeError, OSError):
        return None
    if os.getppid() != pid:  # it died before we looked: the pidfd may name another process
        os.close(fd)
        return -1
    return fd


def _drain(fd: int, registry: Registry) -> bool:
    """Read what the pipe holds; True at EOF (every writer is gone)."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except InterruptedError:
            continue
        if not data:
            return True
        registry.feed(data)


def watch(fd: int, flow_pid: int, registry: Registry, wakeup: int | None = None) -> None:
    """Return when the flow process is gone, said bye, or `wakeup` (a signal) is readable."""
    pidfd = _open_pidfd(flow_pid)
    if pidfd == -1:
        _drain(fd, registry)
        registry.note(f"flow process {flow_pid} was gone at start")
        return
    poller = select.poll()
    for watched in (fd, pidfd, wakeup):
        if watched is not None:
            poller.register(watched, select.POLLIN | select.POLLHUP)
    while not registry.bye:
        for ready, _ in poller.poll():
            if ready == fd and _drain(fd, registry):
                registry.note("pipe closed")
                return
            if ready in (pidfd, wakeup):
                _drain(fd, registry)  # a last "bye" or "forget" may still be in the pipe
                registry.note("stopped by a signal" if ready == wakeup
                              else f"flow process {flow_pid} exited")
                return


def _start_commands(entries: Iterable[dict[str, Any]], registry: Registry) -> list[Any]:
    started = []
    for entry in entries:
        env = dict(os.environ)
        env.update(entry.get("env") or {})
        output = registry.log or subprocess.DEVNULL  # the command's output goes to the log
        try:
            started.append(subprocess.Popen(
                entry["argv"], env=env, cwd=entry.get("cwd") or "/",
                stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True,
            ))
            registry.note(f"started {entry['argv']}")
        except (OSError, ValueError, TypeError) as error:
            registry.note(f"could not start {entry.get('argv')}: {error!r}")
    return started


def _group_alive(pgid: int) -> bool:
    """Whether the group has a member that is not a zombie (a zombie waits for its parent)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _targets(entries: Iterable[dict[str, Any]]) -> tuple[list[int], list[psutil.Process]]:
    """Process groups and processes to end; trees are expanded now, before any kill."""
    groups: list[int] = []
    processes: list[psutil.Process] = []
    for entry in entries:
        pid = int(entry["pid"])
        ours = _same_process(pid, entry.get("ctime"))
        if entry["op"] == "group":
            # A leader that is gone leaves the group to its members (the kernel does not
            # reuse a pid still naming a group): ours, or empty. Another process with
            # that pid means the group ended and its number was reused.
            if ours is not None or _create_time(pid) is None:
                groups.append(pid)
        elif ours is not None:
            with contextlib.suppress(psutil.Error):
                processes.extend([ours, *ours.children(recursive=True)])
    return groups, processes


def clean_up(registry: Registry, grace: float, command_timeout: float) -> None:
    """End everything registered: commands started, SIGTERM, grace, SIGKILL."""
    entries = list(registry.entries.values())
    commands = _start_commands([e for e in entries if e["op"] == "run"], registry)
    groups, processes = _targets([e for e in entries if e["op"] != "run"])
    registry.note(f"ending {len(groups)} group(s), {len(processes)} process(es)")
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        groups = [g for g in groups if _group_alive(g)]
        processes = [p for p in processes if p.is_running() and _not_zombie(p)]
        if not groups and not processes:
            break
        time.sleep(0.05)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    deadline = time.monotonic() + command_timeout
    for command in commands:
        try:
            command.wait(max(deadline - time.monotonic(), 0.01))
            registry.note(f"{command.args} exited {command.returncode}")
        except subprocess.TimeoutExpired:
            _signal_group(command.pid, signal.SIGKILL)
            registry.note(f"killed {command.args} after {command_timeout}s")
    registry.note("done")


def _not_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP of the watchdog: the wakeup fd ends `watch`; clean up then."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rhapsody_prefect.core.watchdog")
    parser.add_argument("fd", type=int, help="read end of the flow's pipe")
    parser.add_argument("pid", type=int, help="the flow process")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE)
    parser.add_argument("--command-timeout", type=float, default=DEFAULT_COMMAND_TIMEOUT)
    parser.add_argument("--log", help="append what the watchdog does to this file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115
    registry = Registry(log)
    os.set_blocking(args.fd, False)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    registry.note(f"watching flow process {args.pid}")
    watch(args.fd, args.pid, registry, wakeup_read)
    if registry.bye:
        registry.note("bye: nothing to end")
    else:
        clean_up(registry, args.grace, args.command_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
