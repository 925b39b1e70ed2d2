"""The `radical_pilot` backend: RHAPSODY tasks on a RADICAL-Pilot pilot.

One RADICAL-Pilot session, one pilot and one task manager per backend, started
lazily on the first submit. Executable tasks (with ranks, cores, GPUs, environment,
pre_exec; `ranks > 1` runs under the machine's MPI launcher) go to the pilot's
agent directly. Python function tasks go to a raptor master and worker that are
started on demand, when the first function task arrives.

    import asyncio
    import rhapsody_prefect as rhapsody

    async def main():
        # local.localhost, sized to this machine; files under ./.rhapsody/radical_pilot
        async with rhapsody.get_backend("radical_pilot") as backend:
            await backend.submit_tasks([
                {"uid": "hello", "executable": "/bin/echo", "arguments": ["hi"]},
                {"uid": "mpi", "executable": "hostname", "ranks": 2},
                {"uid": "sum", "function": sum, "args": ([1, 2, 3],)},
            ])
            await backend.wait()
            print(backend.get_task("sum")["return_value"])   # 6

    asyncio.run(main())

A real machine RADICAL-Pilot knows (Slurm, PBS, ...), from its login node:

    get_backend("radical_pilot", resources={
        "resource": "ornl.frontier", "project": "ABC123", "queue": "batch",
        "nodes": 2, "runtime": 60})

`resources` takes RADICAL-Pilot pilot description keys; a bad key or value raises
`ConfigurationError` (with `config_key`) in the constructor. `shared=True` lets
backends of the same configuration in one process reuse one pilot (closed by
`close_shared_pilots()` or at exit). See docs/radical_pilot.md.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import copy
import datetime
import itertools
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

with warnings.catch_warnings():
    # radical.utils warns when `logging` was imported first (Prefect, pytest do).
    warnings.filterwarnings("ignore", message=".*before `logging`")
    import radical.pilot as rp
    import radical.utils as ru

from ..constants import TaskState
from ..exceptions import BackendError, ConfigurationError
from ..tasks import TaskDict, is_function_task, task_slots
from . import _rp_call
from .base import ExecutionBackend

logger = logging.getLogger("rhapsody_prefect.backends.radical_pilot")

BACKEND_TYPE = "radical_pilot"
LOCAL_RESOURCE = "local.localhost"

#: RADICAL-Pilot task states -> RHAPSODY TaskState (the one place they are mapped).
#: The backend reports only EXECUTING and the terminal states; the base class
#: announces NEW, WAITING and READY itself.
RP_TO_TASK_STATE: dict[str, TaskState] = {
    rp.NEW: TaskState.READY,
    rp.TMGR_SCHEDULING_PENDING: TaskState.READY,
    rp.TMGR_SCHEDULING: TaskState.READY,
    rp.TMGR_STAGING_INPUT_PENDING: TaskState.READY,
    rp.TMGR_STAGING_INPUT: TaskState.READY,
    rp.AGENT_STAGING_INPUT_PENDING: TaskState.READY,
    rp.AGENT_STAGING_INPUT: TaskState.READY,
    rp.AGENT_SCHEDULING_PENDING: TaskState.READY,
    rp.AGENT_SCHEDULING: TaskState.READY,
    rp.AGENT_EXECUTING_PENDING: TaskState.READY,
    rp.AGENT_EXECUTING: TaskState.EXECUTING,
    rp.AGENT_STAGING_OUTPUT_PENDING: TaskState.EXECUTING,
    rp.AGENT_STAGING_OUTPUT: TaskState.EXECUTING,
    rp.TMGR_STAGING_OUTPUT_PENDING: TaskState.EXECUTING,
    rp.TMGR_STAGING_OUTPUT: TaskState.EXECUTING,
    rp.DONE: TaskState.COMPLETED,
    rp.FAILED: TaskState.FAILED,
    rp.CANCELED: TaskState.CANCELED,
}

#: The other direction: which RADICAL-Pilot states a TaskState stands for.
TASK_STATE_TO_RP: dict[TaskState, tuple[str, ...]] = {
    state: tuple(rp_state for rp_state, mapped in RP_TO_TASK_STATE.items() if mapped is state)
    for state in TaskState
}

#: Pilot description keys the backend sets itself.
_MANAGED_PILOT_KEYS = frozenset({"uid", "exit_on_error"})
#: TaskDescription keys `backend_kwargs` may not override (the backend owns them).
_MANAGED_TASK_KEYS = frozenset({
    "uid", "name", "mode", "executable", "arguments", "function", "args", "kwargs",
    "method", "code", "command", "raptor_id", "scheduler", "raptor_class", "raptor_file",
    "worker_class", "worker_file", "ranks", "cores_per_rank", "gpus_per_rank",
    "cpu_processes", "cpu_threads", "gpu_processes", "environment", "pre_exec", "pilot",
})
_RAPTOR_DEFAULTS: dict[str, int] = {"workers": 1, "cores_per_worker": 1, "gpus_per_worker": 0}
#: Env variables marking every process a backend's session starts (for reaping).
_MARK = "RHAPSODY_RP_RUN"
_MARK_PID = "RHAPSODY_RP_CLIENT_PID"
#: Helper executables RADICAL-Pilot starts by name from PATH.
_RP_HELPERS = ("radical-pilot-bridge", "radical-pilot-component", "radical-pilot-agent_0")
#: Seconds `terminate()` waits for `session.close()` before reaping by force.
CLOSE_TIMEOUT = 60.0

_env_lock = threading.Lock()
_run_counter = itertools.count(1)
_live_runs: dict[str, _Run] = {}  # run id -> run, until closed
_shared_runs: dict[str, _Run] = {}  # share key -> run
_shared_lock = threading.Lock()


# ----------------------------------------------------------------- availability
def _venv_bin() -> Path:
    return Path(sys.executable).parent


def _helpers_missing() -> list[str]:
    path = os.pathsep.join([str(_venv_bin()), os.environ.get("PATH", "")])
    return [name for name in _RP_HELPERS if shutil.which(name, path=path) is None]


def availability() -> tuple[bool, str]:
    """Whether this backend can run here, and why not. Starts nothing."""
    missing = _helpers_missing()
    if missing:
        return False, (
            f"RADICAL-Pilot's helper executables {missing} are neither next to "
            f"{sys.executable} nor on PATH; install radical.pilot into this Python "
            "environment (pip install 'rhapsody-prefect[radical_pilot]')"
        )
    return True, f"radical.pilot {rp.version} with helpers in {_venv_bin()}"


# ---------------------------------------------------------------- configuration
def _machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_resource_configs: dict[str, Any] | None = None


def _known_resources() -> dict[str, Any]:
    """RADICAL-Pilot's resource configs (built-in and the user's), read once."""
    global _resource_configs
    if _resource_configs is None:
        configs = ru.Config("radical.pilot.resource", name="*", expand=False)
        _resource_configs = {
            f"{site}.{name}": copy.deepcopy(dict(cfg))
            for site, entries in configs.items()
            for name, cfg in entries.items()
        }
    return _resource_configs


def _check_type(key: str, value: Any, expected: Any) -> None:
    def fail(what: str) -> ConfigurationError:
        return ConfigurationError(
            f"resources[{key!r}] must be {what}, got {value!r}", config_key=key
        )

    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail("an int >= 0")
    elif expected is bool:
        if not isinstance(value, bool):
            raise fail("a bool")
    elif expected is str:
        if not isinstance(value, str):
            raise fail("a str")
    elif isinstance(expected, list):
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
    elif isinstance(expected, dict) and not isinstance(value, dict):
        raise fail("a dict")


def validate_resources(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check pilot description keys and values; fill in the local defaults.

    Raises:
        ConfigurationError: unknown key, wrong type, unknown resource, bad sizes.
    """
    if resources is None:
        resources = {}
    if not isinstance(resources, Mapping):
        raise ConfigurationError(
            f"resources must be a dict of pilot description keys, got {resources!r}",
            config_key="resources",
        )
    schema = rp.PilotDescription._schema
    allowed = sorted(set(schema) - _MANAGED_PILOT_KEYS)
    for key, value in resources.items():
        if key not in schema or key in _MANAGED_PILOT_KEYS:
            raise ConfigurationError(
                f"Unknown or backend-managed pilot description key {key!r}; allowed: {allowed}",
                config_key=key,
            )
        _check_type(key, value, schema[key])
    result = dict(resources)
    resource = result.setdefault("resource", LOCAL_RESOURCE)
    known = _known_resources()
    if resource not in known:
        raise ConfigurationError(
            f"RADICAL-Pilot does not know resource {resource!r}; known: "
            f"{sorted(known)[:12]} ... ({len(known)} in all; `radical-pilot-resources` "
            "lists them, a user config in ~/.radical/pilot/configs adds one)",
            config_key="resource",
        )
    schemas = known[resource].get("schemas") or {}
    schema_name = result.get("access_schema")
    if schema_name is not None and schema_name not in schemas:
        raise ConfigurationError(
            f"Resource {resource!r} has no access schema {schema_name!r}; "
            f"known: {sorted(schemas)}",
            config_key="access_schema",
        )
    local = is_local(resource)
    if result.get("runtime", 1) < 1:
        raise ConfigurationError("resources['runtime'] is in minutes and must be >= 1",
                                 config_key="runtime")
    if not result.get("nodes") and not result.get("cores"):
        if not local:
            raise ConfigurationError(
                f"Say how big the pilot on {resource!r} is: resources['nodes'] or "
                "resources['cores']",
                config_key="cores",
            )
        result["cores"] = _machine_cores()
    result.setdefault("runtime", 1440 if local else 60)
    description = rp.PilotDescription(dict(result))
    try:
        description.verify()
    except ValueError as error:
        key = "nodes" if "nodes" in str(error) else "cores"
        raise ConfigurationError(f"Invalid pilot description: {error}", config_key=key) from error
    return result


def validate_raptor(
    raptor: bool | Mapping[str, Any] | None, default_cores: int = 1
) -> dict[str, int] | None:
    """None (function tasks disabled) or the raptor sizing with defaults filled in.

    `default_cores` sizes the default worker: on a local pilot the backend passes the
    pilot's task cores, so function tasks run as parallel as executables (a 1-core
    worker runs them one at a time).
    """
    defaults = {**_RAPTOR_DEFAULTS, "cores_per_worker": default_cores}
    if raptor is None or raptor is True:
        return defaults
    if raptor is False:
        return None
    if not isinstance(raptor, Mapping):
        raise ConfigurationError(
            f"raptor must be True, False or a dict with keys {sorted(_RAPTOR_DEFAULTS)}, "
            f"got {raptor!r}",
            config_key="raptor",
        )
    result = defaults
    for key, value in raptor.items():
        if key not in _RAPTOR_DEFAULTS:
            raise ConfigurationError(
                f"Unknown raptor option {key!r}; allowed: {sorted(_RAPTOR_DEFAULTS)}",
                config_key=f"raptor.{key}",
            )
        minimum = 0 if key == "gpus_per_worker" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(
                f"raptor[{key!r}] must be an int >= {minimum}, got {value!r}",
                config_key=f"raptor.{key}",
            )
        result[key] = value
    return result


def is_local(resource: str) -> bool:
    return resource.startswith("local.")


# ------------------------------------------------------------------- processes
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
        run_id, client = environ.get(_MARK), environ.get(_MARK_PID, "")
        if run_id:
            return run_id, int(client) if client.isdigit() else -1
    return None


def _marked_processes(run_id: str | None = None) -> Iterator[tuple[psutil.Process, int]]:
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
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)
    return len(processes)


def reap_run(run_id: str) -> int:
    """Kill every process a backend's session started (agent, raptor, tasks, bridges)."""
    return _kill([process for process, _ in _marked_processes(run_id)])


def reap_orphans() -> int:
    """Kill leftovers of backends whose client process died (SIGKILL, OOM)."""
    orphans = [
        process
        for process, client in _marked_processes()
        if client > 0 and client != os.getpid() and not psutil.pid_exists(client)
    ]
    return _kill(orphans) if orphans else 0


@contextlib.contextmanager
def _patched_environ(values: Mapping[str, str]) -> Iterator[None]:
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


# ------------------------------------------------------------------------ runs
class _Run:
    """One RP session with one pilot and task manager (and raptor, on demand).

    A backend owns its run, or shares one with other backends of the same
    configuration (`shared=True`). RP's callbacks arrive here, on RP's listener
    thread, and are dispatched to the backend that submitted the task.
    """

    def __init__(
        self,
        resources: dict[str, Any],
        raptor_config: dict[str, int] | None,
        work_dir: Path,
        keep_sandbox: bool,
        default_work_dir: bool,
        shared: bool,
    ) -> None:
        self.resources = resources
        self.raptor_config = raptor_config
        self.work_dir = work_dir
        self.keep_sandbox = keep_sandbox
        self.default_work_dir = default_work_dir
        self.shared = shared
        self.local = is_local(resources["resource"])
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_id = f"rhapsody.rp.{stamp}.{os.getpid()}.{next(_run_counter):03d}"
        self.run_dir = work_dir / self.run_id
        self.session: Any = None
        self.pmgr: Any = None
        self.pilot: Any = None
        self.tmgr: Any = None
        self.master: Any = None
        self.workers: list[Any] = []
        self.raptor_uids: set[str] = set()
        self.raptor_error: BackendError | None = None
        self.pilot_error: BackendError | None = None
        self.closing = False
        self.closed = False
        self.lock = threading.Lock()
        self.raptor_lock = threading.Lock()
        self.rp_counter = itertools.count(1)
        #: rp uid -> (backend, uid, attempt, is function task)
        self.tasks: dict[str, tuple[RadicalPilotBackend, str, int, bool]] = {}
        self.t0 = time.monotonic()
        #: Seconds since start: session, pilot_submitted, pilot_active, raptor_*; close.
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- sizing
    def raptor_cores(self) -> int:
        config = self.raptor_config
        return 0 if config is None else 1 + config["workers"] * config["cores_per_worker"]

    def cores_for_tasks(self) -> int:
        """Cores executable tasks may use (on a local pilot: the machine's)."""
        if self.resources.get("cores"):
            return int(self.resources["cores"])
        rcfg = _known_resources()[self.resources["resource"]]
        return int(self.resources.get("nodes", 1)) * int(rcfg.get("cores_per_node") or 1)

    def mark(self, name: str) -> None:
        self.timings.setdefault(name, round(time.monotonic() - self.t0, 3))

    # ----------------------------------------------------------------- start
    def environment(self) -> dict[str, str]:
        bin_dir = str(_venv_bin())
        path = os.environ.get("PATH", "")
        if path.split(os.pathsep)[0] != bin_dir:
            path = f"{bin_dir}{os.pathsep}{path}"
        values = {
            "PATH": path,
            _MARK: self.run_id,
            _MARK_PID: str(os.getpid()),
            "RADICAL_REPORT": os.environ.get("RADICAL_REPORT", "False"),
            "RADICAL_BASE": str(self.run_dir / "base"),
        }
        if sys.prefix != sys.base_prefix:
            values["VIRTUAL_ENV"] = sys.prefix
        if self.local:
            values["TMPDIR"] = str(self.run_dir / "tmp")
            values["RADICAL_CONFIG_USER_DIR"] = str(self.run_dir / "config")
        return values

    def write_local_config(self) -> None:
        """A user resource config sizing local.localhost to this machine (+ raptor)."""
        user_home = os.environ.get("RADICAL_CONFIG_USER_DIR") or os.environ.get("HOME", "")
        user_dir = Path(user_home) / ".radical" / "pilot" / "configs"
        ours = self.run_dir / "config" / ".radical" / "pilot" / "configs"
        ours.mkdir(parents=True, exist_ok=True)
        local_cfg: dict[str, Any] = {}
        if user_dir.is_dir():  # keep the user's own resource configs visible
            for path in user_dir.glob("resource_*.json"):
                if path.name == "resource_local.json":
                    with contextlib.suppress(Exception):
                        local_cfg = dict(ru.read_json(str(path)))
                else:
                    with contextlib.suppress(OSError):
                        (ours / path.name).symlink_to(path)
        site, name = self.resources["resource"].split(".", 1)
        entry = dict(local_cfg.get(name) or {})
        cores = int(self.resources.get("cores") or _machine_cores())
        entry.update({
            "cores_per_node": cores + self.raptor_cores(),
            "gpus_per_node": int(self.resources.get("gpus") or 0),
            "fake_resources": True,
            "default_remote_workdir": str(self.run_dir / "sandbox"),
        })
        local_cfg[name] = entry
        with open(ours / f"resource_{site}.json", "w") as stream:
            json.dump(local_cfg, stream, indent=1)

    def pilot_description(self) -> Any:
        values = dict(self.resources)
        values["exit_on_error"] = False
        if self.local:
            values["cores"] = int(values.get("cores") or _machine_cores()) + self.raptor_cores()
            values.setdefault("sandbox", str(self.run_dir / "sandbox"))
        values.setdefault("job_name", self.run_id)
        return rp.PilotDescription(values)

    def start(self) -> None:
        """Blocking: session, managers, pilot. Cleans up after itself if it fails."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self.t0 = time.monotonic()
        if _helpers_missing():
            raise ConfigurationError(availability()[1], config_key="PATH")
        with contextlib.suppress(Exception):
            reaped = reap_orphans()
            if reaped:
                logger.warning("Killed %d RADICAL-Pilot processes left by dead clients", reaped)
        for sub in ("tmp", "base", "client", "cancelled"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.local:
            self.write_local_config()
        _live_runs[self.run_id] = self
        cfg = {"base": str(self.run_dir), "path": str(self.run_dir / "client"),
               "client_sandbox": str(self.run_dir / "client")}
        with _patched_environ(self.environment()):
            self.session = rp.Session(uid=self.run_id, cfg=cfg)
            self.mark("session")
            self.pmgr = rp.PilotManager(session=self.session)
            self.tmgr = rp.TaskManager(session=self.session)
            self.tmgr.register_callback(self.task_callback)
            # (Pilot.register_callback calls back with `[pilot]`, the manager's with
            # `(pilot, state)` as documented: use the manager's.)
            self.pmgr.register_callback(self.pilot_callback)
            self.pilot = self.pmgr.submit_pilots(self.pilot_description())
            self.tmgr.add_pilots(self.pilot)
        self.mark("pilot_submitted")

    def wait_active(self, timeout: float | None) -> None:
        state = self.pilot.wait([rp.PMGR_ACTIVE, *rp.FINAL], timeout)
        if state != rp.PMGR_ACTIVE:
            raise self.pilot_error or self.pilot_lost(state)

    # ---------------------------------------------------------------- raptor
    def ensure_raptor(self) -> Any:
        """Blocking: the raptor master, started with its workers on first use."""
        with self.raptor_lock:
            if self.raptor_error is not None:
                raise self.raptor_error
            if self.master is None:
                self.master = self._start_raptor()
            return self.master

    def _pythonpath(self) -> str:
        """The client's import path, so the worker can unpickle the client's functions."""
        entries = [entry or os.getcwd() for entry in sys.path]
        return os.pathsep.join(dict.fromkeys(e for e in entries if os.path.isdir(e)))

    def _start_raptor(self) -> Any:
        config = self.raptor_config
        assert config is not None
        environment = {"PYTHONPATH": self._pythonpath()} if self.local else {}
        master_uid = f"raptor.{self.run_id}"
        worker_uids = [f"{master_uid}.worker.{i}" for i in range(config["workers"])]
        with self.lock:
            self.raptor_uids.update([master_uid, *worker_uids])
        master = self.pilot.submit_raptors([rp.TaskDescription({
            "uid": master_uid, "mode": rp.RAPTOR_MASTER,
            "ranks": 1, "cores_per_rank": 1, "environment": dict(environment),
        })])[0]
        worker_class: dict[str, str] = {"raptor_class": "DefaultWorker"}
        if self.local and os.environ.get("RHAPSODY_RP_DEFAULT_WORKER") != "1":
            worker_class = {"raptor_class": "RhapsodyWorker",
                            "raptor_file": str(Path(__file__).with_name("_rp_worker.py"))}
        self.workers = master.submit_workers([
            rp.TaskDescription({
                **worker_class, "uid": uid, "mode": rp.RAPTOR_WORKER,
                "ranks": 1, "cores_per_rank": config["cores_per_worker"],
                "gpus_per_rank": config["gpus_per_worker"], "environment": dict(environment),
            })
            for uid in worker_uids
        ])
        self.mark("raptor_submitted")
        return master

    # ----------------------------------------------------------------- tasks
    def register(self, backend: RadicalPilotBackend, uid: str, function: bool) -> str:
        rp_uid = f"rh.{next(self.rp_counter):06d}"
        with self.lock:
            self.tasks[rp_uid] = (backend, uid, backend.attempt_of(uid), function)
        return rp_uid

    def forget(self, backend: RadicalPilotBackend) -> None:
        with self.lock:
            for rp_uid in [k for k, v in self.tasks.items() if v[0] is backend]:
                del self.tasks[rp_uid]

    def submit(self, executables: list[Any], functions: list[Any]) -> None:
        """Blocking: hand descriptions to RP in bulk."""
        if executables:
            self.tmgr.submit_tasks(executables)
        if functions:
            self.ensure_raptor().submit_tasks(functions)

    def cancel_marker(self, rp_uid: str) -> str | None:
        """File whose existence tells a function task it was cancelled (local pilots)."""
        return str(self.run_dir / "cancelled" / rp_uid) if self.local else None

    def _stop_functions(self, rp_uids: list[str]) -> None:
        """Raptor cannot cancel function tasks: mark them, and SIGTERM running ones.

        The marker is created first and the pid read after it: a task announces its
        pid only once its SIGTERM handler is installed, and checks the marker after
        that, so every cancelled call either sees the marker or gets the signal.
        """
        if not self.local or not rp_uids:
            return
        for rp_uid in rp_uids:
            marker = self.cancel_marker(rp_uid)
            assert marker is not None
            Path(marker).touch()
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                pid_file = Path(f"{marker}.pid")
                process = psutil.Process(int(pid_file.read_text()))
                # A process started after the pid file was written reuses the pid.
                if process.create_time() <= pid_file.stat().st_mtime + 0.01:
                    process.send_signal(signal.SIGTERM)

    def cancel(self, rp_uids: list[str]) -> None:
        """Ask RP to cancel executables; stop function tasks ourselves (see above)."""
        executables, dropped = [], []
        with self.lock:
            for rp_uid in rp_uids:
                entry = self.tasks.get(rp_uid)
                if entry is None:
                    continue
                if entry[3]:
                    del self.tasks[rp_uid]
                    dropped.append((rp_uid, entry))
                else:
                    executables.append(rp_uid)
        try:
            self._stop_functions([rp_uid for rp_uid, _ in dropped])
        except Exception:
            logger.exception("radical_pilot: could not stop function tasks")
        for _, (backend, uid, _, _) in dropped:
            backend._report(uid, TaskState.CANCELED)
        if executables and self.tmgr is not None:
            self.tmgr.cancel_tasks(executables)

    # ------------------------------------------------------------- callbacks
    def task_callback(self, rp_task: Any, state: str) -> None:
        """RP's listener thread: translate and hand over; never blocks, never raises."""
        try:
            rp_uid = rp_task.uid
            if rp_uid in self.raptor_uids:
                self.raptor_callback(rp_task, state)
                return
            mapped = RP_TO_TASK_STATE.get(state)
            if mapped is None or not (mapped is TaskState.EXECUTING or mapped.is_terminal):
                return
            with self.lock:
                entry = self.tasks.get(rp_uid)
                if entry is None:
                    return
                if mapped.is_terminal:
                    del self.tasks[rp_uid]
            backend, uid, attempt, function = entry
            if backend.attempt_of(uid) != attempt:
                return  # a late report of an earlier attempt
            if mapped is TaskState.EXECUTING:
                backend._report(uid, TaskState.EXECUTING)
            else:
                state_out, results = self.results(rp_task, mapped, function)
                backend._report(uid, state_out, **results)
        except Exception:
            logger.exception("radical_pilot: failed to handle %s -> %s", rp_task.uid, state)

    def results(self, rp_task: Any, state: TaskState, function: bool) -> tuple[TaskState, dict]:
        if state is TaskState.CANCELED:
            return state, {}
        stdout = self.full_output(rp_task, "out", rp_task.stdout)
        stderr = self.full_output(rp_task, "err", rp_task.stderr)
        exit_code = rp_task.exit_code
        results: dict[str, Any] = {"stdout": stdout, "stderr": stderr, "exit_code": exit_code}
        if function:
            results.pop("exit_code")
            if state is TaskState.COMPLETED and isinstance(rp_task.return_value, str):
                try:
                    ok, value = _rp_call.decode_result(rp_task.return_value)
                except Exception as error:
                    return TaskState.FAILED, {**results, "exception": BackendError(
                        f"Could not unpickle the result of {rp_task.uid}: {error!r}",
                        BACKEND_TYPE)}
                if ok:
                    return TaskState.COMPLETED, {**results, "return_value": value}
                return TaskState.FAILED, {**results, "exception": value}
        if state is TaskState.COMPLETED and not function:
            return state, results
        # FAILED (or a function without a result): RP lost the task (pilot, worker)
        # unless an exit code says enough.
        if exit_code in (None, 0) or function:
            results["exception"] = self.lost_task_error(rp_task)
        return TaskState.FAILED, results

    def full_output(self, rp_task: Any, suffix: str, fallback: str | None) -> str:
        """RP keeps the last 1024 chars; read the whole file from a local sandbox."""
        if self.local and rp_task.mode == rp.TASK_EXECUTABLE:
            with contextlib.suppress(Exception):
                sandbox = ru.Url(rp_task.sandbox).path
                path = Path(sandbox) / f"{rp_task.uid}.{suffix}"
                if path.is_file():
                    return path.read_text(errors="replace")
        return fallback or ""

    def lost_task_error(self, rp_task: Any) -> BackendError:
        if self.pilot_error is not None:
            return self.pilot_error
        pilot_state = self.pilot.state if self.pilot is not None else None
        if pilot_state in rp.FINAL:
            return self.pilot_lost(pilot_state)
        if self.raptor_error is not None and rp_task.mode == rp.TASK_FUNCTION:
            return self.raptor_error
        return BackendError(
            f"RADICAL-Pilot failed task {rp_task.uid} ({rp_task.name}): "
            f"{rp_task.exception or 'no reason given'}",
            BACKEND_TYPE,
            details={"rp_uid": rp_task.uid, "exception_detail": rp_task.exception_detail},
        )

    @property
    def pilot_sandbox(self) -> str | None:
        return None if self.pilot is None else ru.Url(self.pilot.pilot_sandbox).path

    def pilot_lost(self, state: str | None) -> BackendError:
        runtime = self.resources.get("runtime")
        reason = ""
        with contextlib.suppress(Exception):
            reason = (self.pilot.stderr or "").strip()[-500:]
        hint = (
            f"it ran out of its runtime of {runtime} min (resources={{'runtime': ...}})"
            if state == rp.DONE
            else f"see the pilot's logs in {self.pilot_sandbox or 'its sandbox'}"
        )
        return BackendError(
            f"RADICAL-Pilot pilot {getattr(self.pilot, 'uid', '?')} on "
            f"{self.resources['resource']} ended in state {state}: {hint}; its unfinished "
            f"tasks failed" + (f"\n{reason}" if reason else ""),
            BACKEND_TYPE,
            details={"pilot_state": state},
        )

    def fail_tasks(self, error: BackendError, functions_only: bool = False) -> None:
        with self.lock:
            lost = [(k, v) for k, v in self.tasks.items() if v[3] or not functions_only]
            for rp_uid, _ in lost:
                del self.tasks[rp_uid]
        for _, (backend, uid, _, _) in lost:
            backend._report(uid, TaskState.FAILED, exception=error)

    def pilot_callback(self, pilot: Any, state: str | None = None) -> None:
        try:
            if isinstance(pilot, list):  # RP's bulk callback mode
                for one in pilot:
                    self.pilot_callback(one, one.state)
                return
            state = state or pilot.state
            if state == rp.PMGR_ACTIVE:
                self.mark("pilot_active")
            if state not in rp.FINAL or self.closing or self.pilot_error is not None:
                return
            self.pilot_error = self.pilot_lost(state)
            logger.error("%s", self.pilot_error.message)
            self.fail_tasks(self.pilot_error)
        except Exception:
            logger.exception("radical_pilot: failed to handle pilot state %s", state)

    def raptor_callback(self, rp_task: Any, state: str) -> None:
        is_master = rp_task.mode == rp.RAPTOR_MASTER
        if state == rp.AGENT_EXECUTING:
            self.mark("raptor_master_running" if is_master else "raptor_worker_running")
        if state not in rp.FINAL or self.closing:
            return
        detail = (rp_task.stderr or rp_task.stdout or "").strip()[-500:]
        self.raptor_error = BackendError(
            f"The raptor {'master' if is_master else 'worker'} {rp_task.uid} ended in "
            f"state {state}; function tasks cannot run" + (f"\n{detail}" if detail else ""),
            BACKEND_TYPE,
        )
        self.fail_tasks(self.raptor_error, functions_only=True)

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        """Blocking: close the session, reap every process, remove or keep the files."""
        if self.closed:
            return
        self.closing = True
        self.closed = True
        t0 = time.monotonic()
        if self.session is not None:
            closer = threading.Thread(target=self._close_session, daemon=True, name="rp-close")
            closer.start()
            closer.join(CLOSE_TIMEOUT)
            if closer.is_alive():
                logger.warning("radical_pilot: session.close() still busy after %ss; "
                               "killing its processes", CLOSE_TIMEOUT)
        with contextlib.suppress(Exception):
            reaped = reap_run(self.run_id)
            if reaped:
                logger.debug("radical_pilot: reaped %d leftover processes", reaped)
        _live_runs.pop(self.run_id, None)
        self.timings["close"] = round(time.monotonic() - t0, 3)
        if not self.keep_sandbox:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if self.default_work_dir:  # leave no empty ./.rhapsody behind
                for directory in (self.work_dir, self.work_dir.parent):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
        else:
            logger.info("radical_pilot: kept session and sandboxes in %s", self.run_dir)

    def _close_session(self) -> None:
        try:
            self.session.close(download=False, terminate=True)
        except Exception:
            logger.exception("radical_pilot: session.close() failed")


def close_shared_pilots() -> None:
    """Close every pilot shared by `shared=True` backends (also done at exit)."""
    with _shared_lock:
        runs = list(_shared_runs.values())
        _shared_runs.clear()
    for run in runs:
        run.close()


@atexit.register
def _close_at_exit() -> None:
    """Shared pilots end with the program; runs never terminated are reaped."""
    with contextlib.suppress(Exception):
        close_shared_pilots()
    for run in list(_live_runs.values()):
        with contextlib.suppress(Exception):
            reap_run(run.run_id)


# --------------------------------------------------------------------- backend
class RadicalPilotBackend(ExecutionBackend):
    """RHAPSODY tasks on one RADICAL-Pilot pilot (see the module docstring).

    Args:
        resources: pilot description keys (resource, cores, nodes, gpus, runtime [min],
            queue, project, access_schema, sandbox, ...). Default: `local.localhost`
            with this machine's cores, runtime 1440 min.
        work_dir: directory for the session, sandbox, RP config and temp files
            (default `./.rhapsody/radical_pilot`); each run uses a subdirectory.
        keep_sandbox: keep that subdirectory (logs, task sandboxes) after the run.
        raptor: True (default sizing), False (no function tasks) or a dict with
            `workers`, `cores_per_worker`, `gpus_per_worker`. On `local.localhost` the
            raptor master and workers get cores on top of the machine's.
        shared: share one session and pilot with every other `shared=True` backend of
            the same configuration in this process: the first one starts it,
            `terminate()` only detaches, and the pilot is closed by
            `close_shared_pilots()` or at exit. Saves the pilot start (20-30 s) for
            each flow run or test.
    """

    backend_type = BACKEND_TYPE
    # RP's submit call is costly per call: collect a Prefect flow's submissions in bulk.
    launch_batch_delay = 0.05

    def __init__(
        self,
        resources: Mapping[str, Any] | None = None,
        *,
        work_dir: str | os.PathLike[str] | None = None,
        keep_sandbox: bool = False,
        raptor: bool | Mapping[str, Any] | None = True,
        shared: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.resources = validate_resources(resources)
        self.local = is_local(self.resources["resource"])
        self.raptor_config = validate_raptor(
            raptor, int(self.resources.get("cores") or 1) if self.local else 1
        )
        if work_dir is not None and not isinstance(work_dir, (str, os.PathLike)):
            raise ConfigurationError(f"work_dir must be a path, got {work_dir!r}", "work_dir")
        for name, flag in (("keep_sandbox", keep_sandbox), ("shared", shared)):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"{name} must be a bool, got {flag!r}", name)
        self._default_work_dir = work_dir is None
        self.work_dir = Path(work_dir or Path.cwd() / ".rhapsody" / "radical_pilot").absolute()
        self.keep_sandbox = keep_sandbox
        self.shared = shared
        self._run: _Run | None = None if shared else self._new_run()
        self._current: dict[str, str] = {}  # uid -> rp uid of its latest attempt
        self.exec_cores: int | None = None  # cores an executable task may use

    def _new_run(self) -> _Run:
        return _Run(self.resources, self.raptor_config, self.work_dir, self.keep_sandbox,
                    self._default_work_dir, self.shared)

    def _share_key(self) -> str:
        return json.dumps([self.resources, self.raptor_config, str(self.work_dir),
                           self.keep_sandbox], sort_keys=True, default=str)

    @property
    def run_id(self) -> str | None:
        """Name of the run directory (and RP session uid); None before a shared start."""
        return None if self._run is None else self._run.run_id

    @property
    def run_dir(self) -> Path | None:
        return None if self._run is None else self._run.run_dir

    @property
    def timings(self) -> dict[str, float]:
        """Seconds since the run started: session, pilot_submitted, pilot_active, ..."""
        return {} if self._run is None else dict(self._run.timings)

    @property
    def pilot_sandbox(self) -> str | None:
        return None if self._run is None else self._run.pilot_sandbox

    # ------------------------------------------------------------------ start
    async def _start(self) -> None:
        if self.shared:
            self._run = await asyncio.to_thread(self._shared_run)
        else:
            assert self._run is not None
            await asyncio.to_thread(self._run.start)
        self.exec_cores = self._run.cores_for_tasks()

    def _shared_run(self) -> _Run:
        key = self._share_key()
        with _shared_lock:
            run = _shared_runs.get(key)
            if run is not None and (run.pilot_error is not None or run.closed):
                del _shared_runs[key]
                run.close()
                run = None
            if run is None:
                run = self._new_run()
                run.start()
                _shared_runs[key] = run
            return run

    async def wait_active(self, timeout: float | None = None) -> None:
        """Start the backend and wait until its pilot runs (handy before timing)."""
        await self.start()
        assert self._run is not None
        await asyncio.to_thread(self._run.wait_active, timeout)

    # ------------------------------------------------------------ validation
    def _check_task(self, task: TaskDict) -> None:
        uid = task["uid"]
        extra = task.get("backend_kwargs") or {}
        schema = rp.TaskDescription._schema
        for key in extra:
            if key not in schema or key in _MANAGED_TASK_KEYS:
                raise ConfigurationError(
                    f"Task '{uid}': backend_kwargs key {key!r} is not a RADICAL-Pilot "
                    "TaskDescription field this backend lets you set; task keys cover "
                    f"{sorted(_MANAGED_TASK_KEYS & set(schema))}",
                    config_key=f"backend_kwargs.{key}",
                )
        gpus = task["gpus_per_rank"]
        total_gpus = int(self.resources.get("gpus") or 0)
        if is_function_task(task):
            self._check_function_task(task)
            return
        if self.exec_cores is not None and task_slots(task) > self.exec_cores:
            raise ConfigurationError(
                f"Task '{uid}' needs {task_slots(task)} cores (ranks * cores_per_rank) but "
                f"the pilot has {self.exec_cores}",
                config_key="cores_per_rank" if task["cores_per_rank"] > 1 else "ranks",
            )
        if gpus and self.local and task["ranks"] * gpus > total_gpus:
            raise ConfigurationError(
                f"Task '{uid}' needs {task['ranks'] * gpus} GPUs but the pilot has "
                f"{total_gpus} (resources={{'gpus': ...}})",
                config_key="gpus_per_rank",
            )
        if task["ranks"] > 1 and self.local and not (
            shutil.which("mpiexec") or shutil.which("mpirun")
        ):
            raise ConfigurationError(
                f"Task '{uid}' has ranks={task['ranks']} but no MPI launcher (mpiexec, "
                "mpirun) is on PATH; install one (Debian: apt-get install mpich)",
                config_key="ranks",
            )

    def _check_function_task(self, task: TaskDict) -> None:
        uid = task["uid"]
        raptor = self.raptor_config
        if raptor is None:
            raise ConfigurationError(
                f"Task '{uid}' is a function task, but this radical_pilot backend was "
                "created with raptor=False",
                config_key="raptor",
            )
        if task["ranks"] != 1:
            raise ConfigurationError(
                f"Task '{uid}': function tasks run in a raptor worker with ranks=1; "
                f"got ranks={task['ranks']} (run MPI programs as executable tasks)",
                config_key="ranks",
            )
        if task["cores_per_rank"] > raptor["cores_per_worker"]:
            raise ConfigurationError(
                f"Task '{uid}' needs {task['cores_per_rank']} cores but a raptor worker "
                f"has {raptor['cores_per_worker']} (raptor={{'cores_per_worker': ...}})",
                config_key="cores_per_rank",
            )
        if task["gpus_per_rank"] > raptor["gpus_per_worker"]:
            raise ConfigurationError(
                f"Task '{uid}' needs {task['gpus_per_rank']} GPUs but a raptor worker has "
                f"{raptor['gpus_per_worker']} (raptor={{'gpus_per_worker': ...}})",
                config_key="gpus_per_rank",
            )
        if task["pre_exec"]:
            raise ConfigurationError(
                f"Task '{uid}': pre_exec is not supported for function tasks "
                "(they run inside a raptor worker)",
                config_key="pre_exec",
            )

    # ---------------------------------------------------------- descriptions
    def _rp_uid(self, uid: str, function: bool) -> str:
        assert self._run is not None
        rp_uid = self._run.register(self, uid, function)
        self._current[uid] = rp_uid
        return rp_uid

    def _executable_description(self, task: TaskDict) -> Any:
        executable, arguments = task["executable"], list(task["arguments"])
        if task["shell"]:
            command = " ".join([executable, *map(shlex.quote, arguments)])
            executable, arguments = "/bin/sh", ["-c", command]
        pre_exec = list(task["pre_exec"])
        if task.get("cwd"):
            pre_exec.insert(0, f"cd {shlex.quote(task['cwd'])}")
        values: dict[str, Any] = {
            "uid": self._rp_uid(task["uid"], False),
            "name": task["uid"],
            "mode": rp.TASK_EXECUTABLE,
            # RP puts arguments in double quotes, so its shell would expand `$X` and
            # `$(...)` in them; the quoted command line keeps argv literal instead.
            "executable": shlex.join([executable, *arguments]),
            "arguments": [],
            "ranks": task["ranks"],
            "cores_per_rank": task["cores_per_rank"],
            "gpus_per_rank": task["gpus_per_rank"],
            "environment": dict(task["environment"]),
            "pre_exec": pre_exec,
        }
        values.update(task.get("backend_kwargs") or {})
        return rp.TaskDescription(values)

    def _function_description(self, task: TaskDict) -> Any:
        rp_uid = self._rp_uid(task["uid"], True)
        assert self._run is not None
        payload = _rp_call.encode_payload(
            task["function"], task["args"], task["kwargs"], task.get("cwd"),
            self._run.cancel_marker(rp_uid),
        )
        # The serialized form raptor's PythonTask uses: the call runs `run_payload`.
        wrapped = {"func": pickle.dumps(_rp_call.run_payload), "args": (payload,), "kwargs": {}}
        values: dict[str, Any] = {
            "uid": rp_uid,
            "name": task["uid"],
            "mode": rp.TASK_FUNCTION,
            "function": base64.b64encode(pickle.dumps(wrapped)).decode("ascii"),
            "ranks": 1,
            "cores_per_rank": task["cores_per_rank"],
            "gpus_per_rank": task["gpus_per_rank"],
            "environment": dict(task["environment"]),
        }
        values.update(task.get("backend_kwargs") or {})
        return rp.TaskDescription(values)

    # ------------------------------------------------------------------ hooks
    async def _launch(self, tasks: list[TaskDict]) -> None:
        run = self._run
        assert run is not None
        if run.pilot_error is not None:
            raise run.pilot_error
        executables, functions = [], []
        for task in tasks:
            try:
                if is_function_task(task):
                    functions.append(self._function_description(task))
                else:
                    executables.append(self._executable_description(task))
            except Exception as error:  # e.g. a function that cannot be pickled
                self._report(task["uid"], TaskState.FAILED, exception=error)
        await asyncio.to_thread(run.submit, executables, functions)

    async def _cancel(self, uids: list[str]) -> None:
        if self._run is not None:
            rp_uids = [self._current[uid] for uid in uids if uid in self._current]
            await asyncio.to_thread(self._run.cancel, rp_uids)

    async def _shutdown(self) -> None:
        run = self._run
        if run is None:
            return
        run.forget(self)
        if not self.shared:
            await asyncio.to_thread(run.close)

    def __repr__(self) -> str:
        return (f"RadicalPilotBackend(resource={self.resources['resource']!r}, "
                f"run_dir={str(self.run_dir)!r}, shared={self.shared})")


__all__ = [
    "RP_TO_TASK_STATE",
    "TASK_STATE_TO_RP",
    "RadicalPilotBackend",
    "availability",
    "close_shared_pilots",
    "reap_orphans",
    "validate_raptor",
    "validate_resources",
]
