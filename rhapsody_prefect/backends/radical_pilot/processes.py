"""The processes a RADICAL-Pilot session starts: marking, finding and reaping them.

    environment = run_environment(run_id, run_dir)   # inherited by RP's helpers
    guard.on_death(reap_argv(run_id, run_dir))   # reaps the run if the client dies
    record_forks(run_dir)                        # what this process forks from now on
    with patched_environ(environment):
        session = rp.Session(...)
    ...
    reap_run(run_id)       # kill what the run left: bridges, agent, raptor, tasks
    stop_recording_forks(run_dir)
    reap_inside(sandbox)   # a batch pilot's sandbox on this machine: its agent
    reap_orphans()         # and what runs of dead clients (SIGKILL, OOM) left

    python -m rhapsody_prefect.backends.radical_pilot reap <run id> [<run dir>]   # by hand

This module is the one that kills RP's processes; the watchdog (`core/guard.py`) only
runs the reap command when the client dies. RP's helpers rename themselves, so they
are recognised by their working directory (inside the run dir) or by the environment
marker they inherit. What RP forks from the client without exec (its proxy's
per-session worker) has neither: while a run records forks, each `os.fork()` child of
this process writes its pid and start time to the run's `forks` file, and the reap
command kills those still running (with their descendants) as well.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil

from .rp_import import rp, unsupported_releases

#: Env variables marking every process a backend's session starts (for reaping).
MARK = "RHAPSODY_RP_RUN"
MARK_PID = "RHAPSODY_RP_CLIENT_PID"
#: Helper executables RADICAL-Pilot starts by name from PATH; it cannot run without these.
REQUIRED_HELPERS = ("radical-pilot-bridge", "radical-pilot-component", "radical-pilot-agent_0")
#: Every helper executable RP starts by name (not every release ships the last ones).
HELPERS = (*REQUIRED_HELPERS, "radical-pilot-agent_n", "radical-pilot-raptor-master",
           "radical-pilot-raptor-worker")
#: The file in a run directory that forks of the client are recorded in.
FORKS_FILE = "forks"

_env_lock = threading.Lock()
_fork_files: tuple[str, ...] = ()  # where a fork of this process records itself
_fork_lock = threading.Lock()


def venv_bin() -> Path:
    """The interpreter's `bin` directory, where RP's helper executables are installed."""
    return Path(sys.executable).parent


def helpers_missing() -> list[str]:
    path = os.pathsep.join([str(venv_bin()), os.environ.get("PATH", "")])
    return [name for name in REQUIRED_HELPERS if shutil.which(name, path=path) is None]


def availability() -> tuple[bool, str]:
    """Whether this backend can run here, and why not. Starts nothing."""
    unsupported = unsupported_releases()
    if unsupported:
        return False, unsupported
    missing = helpers_missing()
    if missing:
        return False, (
            f"RADICAL-Pilot's helper executables {missing} are neither next to "
            f"{sys.executable} nor on PATH; install radical.pilot into this Python "
            "environment (pip install 'rhapsody-prefect[radical_pilot]')"
        )
    return True, f"radical.pilot {rp.version} with helpers in {venv_bin()}"


_RUN_DIR_PATTERN = re.compile(r"/(rhapsody\.rp\.\d{8}-\d{6}\.(\d+)\.\d+)(/|$)")


def _process_run(process: psutil.Process) -> tuple[str, int] | None:
    """(run id, client pid) of a process a backend's session started, else None.

    RP's helpers rename themselves (setproctitle clobbers /proc/<pid>/environ), so
    they are recognised by their working directory, which is inside the run dir;
    task processes by the env marker they inherit.
    """
    with contextlib.suppress(psutil.Error, OSError):
        match = _RUN_DIR_PATTERN.search(process.cwd())
        if match:
            return match.group(1), int(match.group(2))
    with contextlib.suppress(psutil.Error, OSError):
        environ = process.environ()
        run_id, client = environ.get(MARK), environ.get(MARK_PID, "")
        if run_id:
            return run_id, int(client) if client.isdigit() else -1
    return None


def marked_processes(run_id: str | None = None) -> Iterator[tuple[psutil.Process, int]]:
    """Processes started by the backend run `run_id` (any run if None), with client pid."""
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        found = _process_run(process)
        if found and (run_id is None or found[0] == run_id):
            yield process, found[1]


def _kill(processes: list[psutil.Process], grace: float = 3.0) -> int:
    """SIGTERM, up to `grace` s, SIGKILL: the one way RP's processes are ended."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    alive = _wait_gone(processes, grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_gone(alive, grace)
    return len(processes)


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process is gone or a zombie (after its client's death nobody may
    reap it soon); reaps our own children. Returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        _, alive = psutil.wait_procs(processes, timeout=0.05)
        processes = [p for p in alive if _running(p)]
        if not processes or time.monotonic() >= deadline:
            return processes


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap_run(run_id: str, run_dir: Path | None = None) -> int:
    """Kill every process a backend's session started (agent, raptor, tasks, bridges).

    With `run_dir`, also the forks of the client recorded there (`record_forks`), with
    their descendants: what the reap command does once the client died. A client that
    lives does not pass it: a fork still running then may be another library's.
    """
    found = {process.pid: process for process, _ in marked_processes(run_id)}
    if run_dir is not None:
        for process in recorded_forks(run_dir):
            with contextlib.suppress(psutil.Error):
                for one in (process, *process.children(recursive=True)):
                    found.setdefault(one.pid, one)
    found.pop(os.getpid(), None)
    return _kill(list(found.values()))


def reap_inside(directory: Path) -> int:
    """Kill this machine's processes whose working directory is inside `directory`."""
    inside = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process.pid != os.getpid() and Path(process.cwd()).is_relative_to(directory):
                inside.append(process)
    return _kill(inside) if inside else 0


def reap_argv(run_id: str, run_dir: Path | None = None) -> list[str]:
    """The command that reaps `run_id` (and the forks recorded in `run_dir`), for a
    watchdog to run when this process dies."""
    return [sys.executable, "-m", __package__ or "rhapsody_prefect.backends.radical_pilot",
            "reap", run_id, *([str(run_dir)] if run_dir is not None else [])]


def record_forks(run_dir: Path) -> None:
    """From now on, every `os.fork()` child of this process records itself in `run_dir`."""
    global _fork_files
    path = str(run_dir / FORKS_FILE)
    with _fork_lock:
        if path not in _fork_files:
            _fork_files = (*_fork_files, path)


def stop_recording_forks(run_dir: Path) -> None:
    global _fork_files
    path = str(run_dir / FORKS_FILE)
    with _fork_lock:
        _fork_files = tuple(p for p in _fork_files if p != path)


def _record_fork() -> None:
    """In a forked child: append "<pid> <start time>" to each recording run's file (one
    short append: atomic). Its own forks record themselves too."""
    if not _fork_files:
        return
    with contextlib.suppress(Exception):
        line = f"{os.getpid()} {psutil.Process().create_time()!r}\n".encode()
        for path in _fork_files:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)


os.register_at_fork(after_in_child=_record_fork)


def recorded_forks(run_dir: Path) -> list[psutil.Process]:
    """The recorded forks of `run_dir`'s client still running (same pid and start time)."""
    try:
        lines = (run_dir / FORKS_FILE).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError, psutil.Error):
            pid, started = line.split()
            process = psutil.Process(int(pid))
            if abs(process.create_time() - float(started)) < 0.01 and _running(process):
                found.append(process)
    return found


def reap_orphans() -> int:
    """Kill leftovers of backends whose client process died (SIGKILL, OOM)."""
    orphans = [
        process
        for process, client in marked_processes()
        if client > 0 and client != os.getpid() and not psutil.pid_exists(client)
    ]
    return _kill(orphans) if orphans else 0


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set env variables while RP spawns its helpers; they inherit them."""
    tempfile.gettempdir()  # pin this process's own temp dir before TMPDIR changes
    with _env_lock:
        saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def run_environment(run_id: str, run_dir: Path) -> dict[str, str]:
    """Environment for RP's helpers: the venv's bin first, the run's marks and dirs
    (`TMPDIR`: RP's `rp.agent_cfg.*` files go into the run's `tmp`)."""
    bin_dir = str(venv_bin())
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        path = f"{bin_dir}{os.pathsep}{path}"
    values = {
        "PATH": path,
        MARK: run_id,
        MARK_PID: str(os.getpid()),
        "RADICAL_REPORT": os.environ.get("RADICAL_REPORT", "False"),
        "RADICAL_BASE": str(run_dir / "base"),
    }
    if sys.prefix != sys.base_prefix:
        values["VIRTUAL_ENV"] = sys.prefix
    # The run's own config directory: the user's configs, linked, and the run's entry.
    values["RADICAL_CONFIG_USER_DIR"] = str(run_dir / "config")
    values["TMPDIR"] = str(run_dir / "tmp")
    return values


def main(argv: list[str] | None = None) -> int:
    """`reap <run id> [<run dir>]`: kill every process of that run (and the client's forks
    recorded in its run dir); prints how many (`__main__`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or args[0] != "reap":
        print(f"usage: python -m {__package__} reap <run id> [<run dir>]", file=sys.stderr)
        return 2
    started = time.monotonic()
    reaped = reap_run(args[1], Path(args[2]) if len(args) == 3 else None)
    print(f"reaped {reaped} processes of {args[1]} in {time.monotonic() - started:.1f} s")
    return 0


__all__ = [
    "FORKS_FILE",
    "HELPERS",
    "MARK",
    "MARK_PID",
    "REQUIRED_HELPERS",
    "availability",
    "helpers_missing",
    "marked_processes",
    "patched_environ",
    "reap_argv",
    "reap_inside",
    "reap_orphans",
    "reap_run",
    "record_forks",
    "recorded_forks",
    "run_environment",
    "stop_recording_forks",
    "venv_bin",
]
