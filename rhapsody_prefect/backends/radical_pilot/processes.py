"""The processes a RADICAL-Pilot session starts: marking, finding and reaping them.

    environment = run_environment(run_id, run_dir, local=True)   # inherited by RP's helpers
    with patched_environ(environment):
        session = rp.Session(...)
    ...
    reap_run(run_id)       # kill what the run left: bridges, agent, raptor, tasks
    reap_orphans()         # and what runs of dead clients (SIGKILL, OOM) left
    guard.on_death(reap_argv(run_id))   # reaps the run if the client dies (core/guard.py)

    python -m rhapsody_prefect.backends.radical_pilot reap <run id>   # the same, by hand

RP's helpers rename themselves, so they are recognised by their working
directory (inside the run dir) or by the environment marker they inherit.
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
#: Helper executables RADICAL-Pilot starts by name from PATH.
RP_HELPERS = ("radical-pilot-bridge", "radical-pilot-component", "radical-pilot-agent_0")

_env_lock = threading.Lock()


def venv_bin() -> Path:
    return Path(sys.executable).parent


def helpers_missing() -> list[str]:
    path = os.pathsep.join([str(venv_bin()), os.environ.get("PATH", "")])
    return [name for name in RP_HELPERS if shutil.which(name, path=path) is None]


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


def reap_run(run_id: str) -> int:
    """Kill every process a backend's session started (agent, raptor, tasks, bridges)."""
    return _kill([process for process, _ in marked_processes(run_id)])


def reap_argv(run_id: str) -> list[str]:
    """The command that reaps `run_id`, for a watchdog to run when this process dies."""
    return [sys.executable, "-m", __package__ or "rhapsody_prefect.backends.radical_pilot",
            "reap", run_id]


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


def run_environment(run_id: str, run_dir: Path, local: bool) -> dict[str, str]:
    """Environment for RP's helpers: the venv's bin first, the run's marks and dirs."""
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
    if local:
        values["TMPDIR"] = str(run_dir / "tmp")
    return values


def main(argv: list[str] | None = None) -> int:
    """`reap <run id>`: kill every process of that run; prints how many (`__main__`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "reap":
        print(f"usage: python -m {__package__} reap <run id>", file=sys.stderr)
        return 2
    started = time.monotonic()
    reaped = reap_run(args[1])
    print(f"reaped {reaped} processes of {args[1]} in {time.monotonic() - started:.1f} s")
    return 0


__all__ = [
    "MARK",
    "MARK_PID",
    "availability",
    "helpers_missing",
    "marked_processes",
    "patched_environ",
    "reap_argv",
    "reap_orphans",
    "reap_run",
    "run_environment",
    "venv_bin",
]
