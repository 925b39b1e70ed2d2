"""The flow side of the watchdog: register what must end if this process dies.

Every `ExecutionBackend` owns one `Guard` (`self._guard`); its watchdog process
(`core/watchdog.py`) is started on first use and holds a pipe whose write end
only this process holds. When this process dies by any signal, SIGKILL
included, the watchdog ends what is still registered, within seconds.

    guard = Guard("concurrent")
    key = guard.kill_group(process.pid)          # a command started with start_new_session
    ...                                          # the command ran to its end
    guard.forget(key)
    guard.on_death(["scancel", job_id])          # a batch job: cancel it if we die
    guard.close()                                # clean end: the watchdog exits, kills nothing

`close(clean=False)` closes the pipe without the "bye": the watchdog then ends
whatever is still registered, as on a death. Registration calls never raise:
a guard whose watchdog is gone logs one warning and does nothing more.
Imports: the standard library only.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("rhapsody_prefect.guard")

#: The watchdog, run as a plain script (`-P`: its directory is not put on sys.path).
WATCHDOG = Path(__file__).with_name("watchdog.py")
#: Set to a file path to have every watchdog append what it does to that file.
LOG_ENV = "RHAPSODY_WATCHDOG_LOG"
#: Seconds between the watchdog's SIGTERM and SIGKILL.
GRACE_SECONDS = 3.0

_guards: weakref.WeakSet[Guard] = weakref.WeakSet()


class Guard:
    """One watchdog and what this process registered with it (thread-safe)."""

    def __init__(self, name: str = "", *, grace: float = GRACE_SECONDS) -> None:
        self.name = name
        self.grace = grace
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._owner = os.getpid()
        self._fd: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._broken = False
        _guards.add(self)

    # ---------------------------------------------------------------- public
    def start(self) -> Guard:
        """Start the watchdog now (otherwise it starts on the first registration)."""
        with self._lock:
            if self._usable() and self._fd is None:
                self._spawn()
        return self

    def kill_group(self, pgid: int) -> int:
        """End process group `pgid` (killpg) if this process dies; returns a key."""
        return self._register({"op": "group", "pid": int(pgid)})

    def kill_tree(self, pid: int) -> int:
        """End process `pid` and all its descendants if this process dies."""
        return self._register({"op": "tree", "pid": int(pid)})

    def on_death(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> int:
        """Run `argv` if this process dies (e.g. `["scancel", job_id]`).

        It runs with the environment this process had when the watchdog started,
        updated with `env`; it gets 20 s before it is killed.
        """
        return self._register({
            "op": "run", "argv": [str(a) for a in argv],
            "env": dict(env) if env else None, "cwd": str(cwd) if cwd else None,
        })

    def forget(self, key: int | None) -> None:
        """What `key` registered ended normally: leave it alone."""
        if key is not None:
            self._send({"op": "forget", "key": key}, start=False)

    def close(self, clean: bool = True, timeout: float = 0.5) -> None:
        """Say bye (if `clean`) and close the pipe.

        Waits up to `timeout` s for the watchdog to exit (milliseconds, unless it is
        still starting on a busy machine); then a daemon thread reaps it.
        """
        with self._lock:
            if self._closed or os.getpid() != self._owner:
                return
            self._closed = True
            fd, self._fd = self._fd, None
            if fd is None:
                return
            if clean and not self._broken:
                self._write(fd, {"op": "bye"})
            os.close(fd)
        process = self._process
        if process is not None:
            try:
                process.wait(timeout if clean else 0)
            except subprocess.TimeoutExpired:
                threading.Thread(target=process.wait, daemon=True,
                                 name=f"reap watchdog {process.pid}").start()

    @property
    def pid(self) -> int | None:
        """The watchdog's pid, once started."""
        return None if self._process is None else self._process.pid

    # -------------------------------------------------------------- internals
    def _usable(self) -> bool:
        return not (self._closed or self._broken) and os.getpid() == self._owner

    def _register(self, message: dict[str, Any]) -> int:
        key = next(self._keys)
        self._send({**message, "key": key}, start=True)
        return key

    def _send(self, message: dict[str, Any], start: bool) -> None:
        with self._lock:
            if not self._usable():
                return
            if self._fd is None:
                if not start:
                    return
                self._spawn()
            if self._fd is not None:
                self._write(self._fd, message)

    def _write(self, fd: int, message: dict[str, Any]) -> None:
        data = _line(message)
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as error:
            self._broken = True
            logger.warning("The %s watchdog is gone (%s): processes started from now on "
                           "are not ended if this process dies", self.name, error)

    def _spawn(self) -> None:
        read_end, write_end = os.pipe()  # both not inherited by other children
        argv = [sys.executable, "-P", str(WATCHDOG), str(read_end), str(os.getpid()),
                "--grace", str(self.grace)]
        if os.environ.get(LOG_ENV):
            argv += ["--log", os.environ[LOG_ENV]]
        env = dict(os.environ)
        env["PYTHONPATH"] = _pythonpath()
        try:
            self._process = subprocess.Popen(
                argv, pass_fds=(read_end,), env=env, cwd="/", start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError as error:
            os.close(write_end)
            self._broken = True
            logger.warning("Could not start the %s watchdog (%s): processes are not ended "
                           "if this process dies", self.name, error)
            return
        finally:
            os.close(read_end)
        self._fd = write_end

    def _after_fork(self) -> None:
        # A forked child must neither hold the pipe open nor speak for its parent.
        fd, self._fd = self._fd, None
        self._lock = threading.Lock()
        if fd is not None:
            os.close(fd)


def _pythonpath() -> str:
    """Where this process finds psutil (for the watchdog) and this package (for commands
    such as RADICAL-Pilot's reap), ahead of PYTHONPATH; not the flow's whole sys.path,
    whose directories could shadow the standard library in the watchdog."""
    found = [str(Path(__file__).resolve().parents[2])]
    spec = importlib.util.find_spec("psutil")
    if spec is not None and spec.origin:
        found.append(str(Path(spec.origin).resolve().parents[1]))
    found.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    return os.pathsep.join(dict.fromkeys(found))


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def _close_in_child() -> None:
    for guard in list(_guards):
        guard._after_fork()


os.register_at_fork(after_in_child=_close_in_child)

__all__ = ["GRACE_SECONDS", "LOG_ENV", "WATCHDOG", "Guard"]
