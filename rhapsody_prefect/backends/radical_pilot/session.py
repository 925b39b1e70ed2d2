"""One RADICAL-Pilot session with its pilot and task manager (and raptor, on demand).

    run = PilotRun(pilot_config(resources), work_dir, keep_sandbox=False,
                   default_work_dir=True)
    run.attach(backend)                          # its notices, its break with the pilot
    run.start()                                  # session, managers, pilot (blocking)
    rp_uid = run.register(backend, attempt, function=False)
    run.submit([description], [])                # RP calls back on its listener thread
    run.close()                                  # session closed, processes reaped, files gone

A backend owns its run, or shares one with other backends of the same
configuration (`shared=True`, see `sharing`). RP's callbacks arrive here and are
dispatched to the backend that submitted the task. The run decides what the pilot's
end means: its monitor (`lifecycle.PilotMonitor`) reports what it sees, and a pilot
that cannot run tasks breaks every attached backend (`ExecutionBackend._break`).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import itertools
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ...core.attempt import Attempt
from ...core.constants import TaskState
from ...core.exceptions import BackendError, ConfigurationError
from ...core.guard import Guard
from ...core.notices import Notices
from ...core.outcome import Outcome
from . import bind_interface
from .batch_job import launcher_environment
from .bind_wrappers import InterfaceBinding, binding_for_run
from .config import PilotConfig, pilot_description, run_resource_entry
from .lifecycle import PilotEvents, PilotMonitor, remove_session_sandbox, sandbox_path
from .processes import (
    availability,
    helpers_missing,
    patched_environ,
    reap_argv,
    reap_orphans,
    reap_run,
    record_forks,
    run_environment,
    stop_recording_forks,
)
from .raptor import Raptor
from .resource_configs import write_run_configs
from .rp_import import rp
from .translate import (
    BACKEND_TYPE,
    RP_TO_TASK_STATE,
    client_path,
    rp_task_error,
    task_outcome,
)

logger = logging.getLogger("rhapsody_prefect.backends.radical_pilot")

#: Seconds `close()` waits for `session.close()` before reaping by force.
CLOSE_TIMEOUT = 60.0

_run_counter = itertools.count(1)
_live_runs: dict[str, PilotRun] = {}  # run id -> run, until closed


class PilotBackend(Protocol):
    """What a run needs of a backend that uses it (a `RadicalPilotBackend`)."""

    notices: Notices

    def _report(self, attempt: Attempt, report: TaskState | Outcome) -> None: ...

    def _break(self, error: BackendError) -> None: ...


class PilotRun:
    """One RP session with one pilot and task manager (and raptor, on demand)."""

    def __init__(
        self,
        config: PilotConfig,
        work_dir: Path,
        keep_sandbox: bool,
        default_work_dir: bool,
    ) -> None:
        self.config = config
        self.work_dir = work_dir
        self.keep_sandbox = keep_sandbox
        self.default_work_dir = default_work_dir
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_id = f"rhapsody.rp.{stamp}.{os.getpid()}.{next(_run_counter):03d}"
        self.run_dir = work_dir / self.run_id
        self.session: Any = None
        self.pmgr: Any = None
        self.pilot: Any = None
        self.tmgr: Any = None
        self.raptor = Raptor(config.raptor, self.run_id, self.run_dir, config.shape.local,
                             self.mark)
        self.binding: InterfaceBinding | None = None
        self.binding_installed = False
        self.pilot_error: BackendError | None = None
        #: Where RP stages executables' stdout/stderr back when this side cannot read the
        #: task sandboxes (None: read there; translate.full_output).
        self.output_copy: Path | None = None
        #: Follows the pilot and its batch job, tells the attached backends' notices and
        #: reports to this run, which decides (`_cannot_run`).
        self.monitor = PilotMonitor(
            config, self.run_id, self.run_dir / "client", lambda: self.pilot,
            PilotEvents(mark=self.mark, job_found=self._job_found, job_ended=self._job_ended,
                        cannot_run=self._cannot_run))
        #: Ends the run if this process dies, even by SIGKILL: the reap command (which
        #: also kills what RP forked from this process, see `processes`) is registered
        #: before RP starts anything; a batch pilot adds its job's cancel.
        self.guard = Guard(f"radical_pilot {self.run_id}")
        self._job_guard: int | None = None  # the guard's key of the job's cancel
        self.closing = False
        self.closed = False
        self.lock = threading.Lock()
        self.rp_counter = itertools.count(1)
        #: rp uid -> (backend, the attempt it runs, is function task)
        self.tasks: dict[str, tuple[PilotBackend, Attempt, bool]] = {}
        self.backends: set[PilotBackend] = set()
        self.t0 = time.monotonic()
        #: Seconds since start: session, pilot_submitted, pilot_active, raptor_*; close.
        self.timings: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.timings.setdefault(name, round(time.monotonic() - self.t0, 3))

    def start(self) -> None:
        """Blocking: session, managers, pilot. Cleans up after itself if it fails."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self.t0 = time.monotonic()
        if helpers_missing():
            raise ConfigurationError(availability()[1], config_key="PATH")
        with contextlib.suppress(Exception):
            reaped = reap_orphans()
            if reaped:
                logger.warning("Killed %d RADICAL-Pilot processes left by dead clients", reaped)
        for sub in ("tmp", "base", "client", "cancelled"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        config, local = self.config, self.config.shape.local
        environment = run_environment(self.run_id, self.run_dir)
        environment.update(launcher_environment(   # psij's ~/.psij, in the run dir
            config.resource_config, config.resources.get("access_schema"), self.run_dir))
        entry = run_resource_entry(config, self.run_dir)
        iface = config.network_interface
        if local or iface:  # RP's endpoints on one interface only (docs/network.md)
            self.binding, entry = binding_for_run(
                self.run_dir, entry or config.resource_config, environment, iface,
                batch=not local)
            self.raptor.binding = self.binding
        write_run_configs(self.run_dir, config.resources["resource"], entry)
        _live_runs[self.run_id] = self
        self.guard.on_death(reap_argv(self.run_id, self.run_dir))
        record_forks(self.run_dir)
        cfg = {"base": str(self.run_dir), "path": str(self.run_dir / "client"),
               "client_sandbox": str(self.run_dir / "client")}
        if self.binding is not None:
            # this process and what it forks: registry, proxy, pipes
            bind_interface.install(self.binding.address)
            self.binding_installed = True
        with patched_environ(environment):
            self.session = rp.Session(uid=self.run_id, cfg=cfg)
            self.mark("session")
            self.pmgr = rp.PilotManager(session=self.session)
            self.tmgr = rp.TaskManager(session=self.session)
            self.tmgr.register_callback(self.task_callback)
            # (Pilot.register_callback calls back with `[pilot]`, the manager's with
            # `(pilot, state)` as documented: use the manager's.)
            self.pmgr.register_callback(self.pilot_callback)
            self.pilot = self.pmgr.submit_pilots(
                pilot_description(config, self.run_id, self.run_dir)
            )
            self.tmgr.add_pilots(self.pilot)
        if client_path(self.pilot.pilot_sandbox) is None:  # stdout/stderr staged back here
            self.output_copy = self.run_dir / "outputs"
        self.mark("pilot_submitted")
        self.monitor.start()
        if not local and config.raptor is not None:
            # raptor holds its carved-out cores from the start (executables get the rest)
            self.raptor.master(self.pilot)

    def wait_active(self, timeout: float | None) -> None:
        """Block until the pilot is active; raises its error, or after `timeout` s."""
        active = self.monitor.wait_active(timeout)
        if self.pilot_error is not None:
            raise self.pilot_error
        if not active:
            raise BackendError(
                f"RADICAL-Pilot pilot {self.pilot.uid} on {self.config.resources['resource']} "
                f"is not active after {timeout} s: {self.monitor.status()}", BACKEND_TYPE)

    # ----------------------------------------------------------------- tasks
    def register(self, backend: PilotBackend, attempt: Attempt, function: bool) -> str:
        rp_uid = f"rh.{next(self.rp_counter):06d}"
        with self.lock:
            self.tasks[rp_uid] = (backend, attempt, function)
            self.backends.add(backend)
        return rp_uid

    def attach(self, backend: PilotBackend) -> None:
        """`backend` uses this run: it hears the pilot's notices and breaks with it."""
        with self.lock:
            self.backends.add(backend)
            error = self.pilot_error
        self.monitor.attach(backend.notices)
        if error is not None:
            backend._break(error)

    def forget(self, backend: PilotBackend) -> None:
        self.monitor.detach(backend.notices)
        with self.lock:
            self.backends.discard(backend)
            for rp_uid in [k for k, v in self.tasks.items() if v[0] is backend]:
                del self.tasks[rp_uid]

    def submit(self, executables: list[Any], functions: list[Any]) -> None:
        """Blocking: hand descriptions to RP in bulk."""
        if executables:
            self.tmgr.submit_tasks(executables)
        if functions:
            self.raptor.master(self.pilot).submit_tasks(functions)

    def cancel(self, rp_uids: list[str]) -> None:
        """Ask RP to cancel executables; stop function tasks ourselves (see above)."""
        executables, dropped = [], []
        with self.lock:
            for rp_uid in rp_uids:
                entry = self.tasks.get(rp_uid)
                if entry is None:
                    continue
                if entry[2]:
                    del self.tasks[rp_uid]
                    dropped.append((rp_uid, entry))
                else:
                    executables.append(rp_uid)
        try:
            self.raptor.stop_functions([rp_uid for rp_uid, _ in dropped])
        except Exception:
            logger.exception("radical_pilot: could not stop function tasks")
        for _, (backend, attempt, _) in dropped:
            backend._report(attempt, TaskState.CANCELED)
        if executables and self.tmgr is not None:
            self.tmgr.cancel_tasks(executables)

    # ------------------------------------------------------------- callbacks
    def task_callback(self, rp_task: Any, state: str) -> None:
        """RP's listener thread: translate and hand over; never blocks, never raises."""
        try:
            rp_uid = rp_task.uid
            if rp_uid in self.raptor.uids:
                error = self.raptor.on_state(rp_task, state, self.closing)
                if error is not None:
                    self.fail_tasks(error, functions_only=True)
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
            backend, attempt, _ = entry
            if mapped is TaskState.EXECUTING:
                backend._report(attempt, TaskState.EXECUTING)
            else:
                backend._report(attempt, task_outcome(
                    rp_task, mapped, attempt.task, self.output_copy,
                    lambda: self.lost_task_error(rp_task),
                ))
        except Exception:
            logger.exception("radical_pilot: failed to handle %s -> %s", rp_task.uid, state)

    def lost_task_error(self, rp_task: Any) -> BackendError:
        if self.pilot_error is not None:
            return self.pilot_error
        pilot_state = self.pilot.state if self.pilot is not None else None
        if pilot_state in rp.FINAL:
            return self.monitor.lost_error(pilot_state)
        if self.raptor.error is not None and rp_task.mode == rp.TASK_FUNCTION:
            return self.raptor.error
        return rp_task_error(rp_task)

    @property
    def pilot_sandbox(self) -> str | None:
        return sandbox_path(self.pilot)

    def break_all(self, error: BackendError) -> None:
        """The pilot cannot run tasks: every attached backend breaks (their tasks fail)."""
        with self.lock:
            if self.pilot_error is not None:
                return
            self.pilot_error = error
            backends = list(self.backends)
        self.monitor.failed(error)
        for backend in backends:
            backend._break(error)

    # ------------------------------------------------- the monitor's reports
    def _cannot_run(self, error: BackendError, cancel_job: bool) -> None:
        if cancel_job:
            self.monitor.cancel_job("that cannot run")
        if not self.closing:
            self.break_all(error)

    def _job_found(self, job_id: str, cancel: list[str], env: dict[str, str] | None) -> None:
        # If this process dies (even SIGKILL), the watchdog cancels the job (core/guard.py).
        self._job_guard = self.guard.on_death(cancel, env=env)

    def _job_ended(self, job_id: str) -> None:
        key, self._job_guard = self._job_guard, None
        self.guard.forget(key)  # nothing left to cancel

    def fail_tasks(self, error: BackendError, functions_only: bool = False) -> None:
        with self.lock:
            lost = [(k, v) for k, v in self.tasks.items() if v[2] or not functions_only]
            for rp_uid, _ in lost:
                del self.tasks[rp_uid]
        for _, (backend, attempt, _) in lost:
            backend._report(attempt, Outcome.failed(error))

    def pilot_callback(self, pilot: Any, state: str | None = None) -> None:
        try:
            if isinstance(pilot, list):  # RP's bulk callback mode
                for one in pilot:
                    self.pilot_callback(one, one.state)
                return
            state = state or pilot.state
            if state == rp.PMGR_ACTIVE:
                self.mark("pilot_active")
            if state in rp.FINAL and not self.closing and not self.monitor.following_job():
                self.break_all(self.monitor.lost_error(state))
            self.monitor.on_pilot_state(state)  # a followed batch job: the monitor tells why
        except Exception:
            logger.exception("radical_pilot: failed to handle pilot state %s", state)

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        """Blocking: close the session, reap every process, remove or keep the files."""
        if self.closed:
            return
        self.closing = True
        self.closed = True
        t0 = time.monotonic()
        self.monitor.stop()
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
        self.monitor.cancel_job("left by the session")  # or by a close that timed out
        stop_recording_forks(self.run_dir)
        self.guard.close(timeout=10.0)
        _live_runs.pop(self.run_id, None)
        if self.binding_installed:
            self.binding_installed = False
            bind_interface.uninstall()
        if self.binding is not None:
            self.binding.close()
        self.timings["close"] = round(time.monotonic() - t0, 3)
        remove_session_sandbox(self.pilot, keep=self.keep_sandbox)
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


@atexit.register
def _reap_at_exit() -> None:
    """Runs never closed are reaped when the program ends (shared pilots were closed
    before: `sharing` registers its exit hook after this one, so it runs first)."""
    for run in list(_live_runs.values()):
        with contextlib.suppress(Exception):
            reap_run(run.run_id)


__all__ = ["CLOSE_TIMEOUT", "PilotBackend", "PilotRun"]
