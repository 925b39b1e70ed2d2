"""A pilot's life from submission to its end: watched, told, bounded.

    watch = PilotWatch(run)              # run: a session.PilotRun
    watch.attach(backend.notices)        # notices reach the backend's user (the flow's log)
    watch.start()                        # after submit_pilots: a thread of its own
    watch.wait_active(timeout=600)       # True once active; raises the pilot's error
    watch.stop()                         # before the session closes
    watch.cancel_job()                   # a batch job RP's close left behind (scancel)
    error = pilot_lost(run, "FAILED")    # the BackendError that names why the pilot ended
    remove_session_sandbox(run.pilot)    # a file:// pilot sandbox, removed from the client

While the pilot waits in the batch queue, RADICAL-Pilot only says
`PMGR_ACTIVE_PENDING`. The watch finds the pilot's batch job (`batch_job`), and
posts a notice when what it sees changes: "Pilot pilot.0000 on mysite.slurm waits
in the batch queue: batch job 14 PENDING (reason Resources: ...)", the job running,
the pilot active. It gives up on the pilot, cancels its job and fails its tasks (the
shared engine's broken backend, through `PilotRun.break_all`) when

* the job pends for a reason that waiting cannot clear (`PartitionConfig`, ...);
* it is still pending after `pending_timeout` seconds (a backend option);
* it ended (scancel, walltime, node failure): Slurm says so before RADICAL-Pilot's
  own batch-system poll (psij, every 30 s) does;
* the pilot is not active `STARTUP_TIMEOUT` s after its job started (after its
  submission, for a pilot with no batch system).

A job sbatch refused never reaches the queue: RADICAL-Pilot fails the pilot in
about 0.5 s, and `pilot_lost` quotes sbatch's message from RP's launcher log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from ...core.exceptions import BackendError
from ...core.notices import Notices
from .batch_job import BatchJob, batch_system, launch_error
from .rp_import import rp, ru
from .translate import BACKEND_TYPE

if TYPE_CHECKING:
    from .session import PilotRun

logger = logging.getLogger("rhapsody_prefect.backends.radical_pilot")

#: Seconds between looks at a queued or starting job, and at a running pilot's job.
POLL_WAITING = 5.0
POLL_ACTIVE = 15.0
#: Seconds a hopeless pending reason must persist before the pilot is given up.
HOPELESS_GRACE = 4.0
#: Seconds from the job's start (or the submission, without a batch system) to active.
STARTUP_TIMEOUT = 900.0
#: Default of the backend option `pending_timeout`: seconds a job may wait in the queue.
PENDING_TIMEOUT = 86400.0


class PilotWatch:
    """Watches one pilot and its batch job on a thread of its own (see the module)."""

    def __init__(self, run: PilotRun, pending_timeout: float = PENDING_TIMEOUT) -> None:
        self.run = run
        self.pending_timeout = pending_timeout
        self.batch = batch_system(run.config.resource_config, run.resources.get("access_schema"))
        self.job_id: str | None = None
        self.job: BatchJob | None = None
        self.active = threading.Event()
        self._settled = threading.Event()  # active, or given up
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Notices] = []
        self._lock = threading.Lock()
        self._guard_key: int | None = None
        self._last: str | None = None
        self._told_active = False
        self._submitted = time.monotonic()

    # ---------------------------------------------------------------- public
    def attach(self, notices: Notices) -> None:
        with self._lock:
            self._listeners.append(notices)
            last = self._last
        if last is not None:
            notices.post(logging.INFO, last, waiting=None if self._settled.is_set() else last)

    def detach(self, notices: Notices) -> None:
        with self._lock:
            if notices in self._listeners:
                self._listeners.remove(notices)

    def start(self) -> None:
        self._submitted = time.monotonic()
        what = f"batch job of {self.batch.name}" if self.batch else "agent"
        self._post(logging.INFO, f"{self._pilot_name()} submitted; waiting for its {what}")
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"rp-watch-{self.run.run_id}")
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._settled.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(POLL_ACTIVE + 5)

    def on_pilot_state(self, state: str) -> None:
        """RP's callback thread: the pilot changed state (never blocks)."""
        if state == rp.PMGR_ACTIVE:
            self._tell_active()
            self.active.set()
            self._settled.set()
        if state in rp.FINAL:
            self._settled.set()
        self._wake.set()

    def wait_active(self, timeout: float | None) -> bool:
        """Block until the pilot is active (True), given up (raises), or `timeout` (False)."""
        self._settled.wait(timeout)
        if self.run.pilot_error is not None:
            raise self.run.pilot_error
        return self.active.is_set()

    def failed(self, error: BaseException) -> None:
        """The pilot cannot run tasks (any thread): tell the attached backends' users.

        Nothing is logged when none is attached: the broken engine logs the error.
        """
        self._settled.set()
        self._wake.set()
        self._post(logging.ERROR, str(error), waiting=None, log_alone=False)

    def watching(self) -> bool:
        """True while the watch thread follows a batch job (it then reports the end)."""
        return (self.batch is not None and self._thread is not None
                and self._thread.is_alive() and not self._stopped.is_set())

    def status(self) -> str | None:
        """The last thing the watch told (e.g. 'batch job 14 PENDING (reason ...)')."""
        return self._last

    def cancel_job(self) -> None:
        """Cancel the pilot's batch job if it is still queued or running (at close)."""
        if self.batch is None or self.job_id is None:
            return
        job = self.batch.query(self.job_id)
        if job is not None and not job.final:
            logger.info("radical_pilot: cancelling batch job %s left by the session",
                        self.job_id)
            self.batch.cancel(self.job_id)
        self._forget_job()

    # --------------------------------------------------------------- the loop
    def _loop(self) -> None:
        try:
            while not self._stopped.is_set() and self.run.pilot_error is None:
                if self._step():
                    break
                interval = POLL_ACTIVE if self.active.is_set() else POLL_WAITING
                self._wake.wait(interval)
                self._wake.clear()
        except Exception:
            logger.exception("radical_pilot: the pilot watch failed")

    def _step(self) -> bool:
        """One look; True when there is nothing left to watch."""
        pilot = self.run.pilot
        state = getattr(pilot, "state", None)
        if state in rp.FINAL:  # RP saw the end first: say what the batch system says
            if self.run.pilot_error is None and not self.run.closing:
                job = self.batch.query(self.job_id) if self.batch and self.job_id else None
                self.job = job or self.job
                self.run.break_all(pilot_lost(self.run, state))
            return True
        if state == rp.PMGR_ACTIVE and not self.active.is_set():
            self.on_pilot_state(state)
        if self.batch is not None:
            if self.job_id is None:
                self._find_job(pilot)
            if self.job_id is not None:
                job = self.batch.query(self.job_id)
                if job is not None and self._judge(job):
                    return True
        if self.active.is_set():
            return self.batch is None  # nothing to watch beyond RP without a batch system
        started = self.run.timings.get("batch_job_running")
        since = self.run.t0 + started if started is not None else (
            None if self.batch is not None else self._submitted)
        if since is not None and time.monotonic() - since > STARTUP_TIMEOUT:
            self._give_up(f"it was not active {STARTUP_TIMEOUT:.0f} s after "
                          f"{'its batch job started' if self.batch else 'its submission'}; "
                          f"see the agent's logs in {self.run.pilot_sandbox or 'its sandbox'}")
            return True
        return False

    def _find_job(self, pilot: Any) -> None:
        assert self.batch is not None
        sandbox = self.run.pilot_sandbox
        job_id = self.batch.find(sandbox) if sandbox else None
        if job_id is None:
            return
        self.job_id = job_id
        self.run.mark("batch_job_found")
        # If this process dies (even SIGKILL), the watchdog cancels the job (core/guard.py).
        guard = getattr(self.run, "guard", None)
        if guard is not None:
            env = {"SLURM_CONF": os.environ["SLURM_CONF"]} if os.environ.get("SLURM_CONF") else None
            self._guard_key = guard.on_death(self.batch.cancel_argv(job_id), env=env)

    def _judge(self, job: BatchJob) -> bool:
        """Tell what changed; give up on a job that ended or cannot run. True: stop."""
        previous, self.job = self.job, job
        if job.final:
            self._forget_job()
            if self.run.closing or self.run.pilot_error is not None:
                return True
            runtime = self.run.resources.get("runtime")
            hint = {
                "TIMEOUT": f": it ran out of its walltime of {runtime} min "
                           "(resources={'runtime': ...})",
                "COMPLETED": f": the pilot's agent ended (its runtime of {runtime} min used "
                             f"up?); see its logs in {self.run.pilot_sandbox or 'its sandbox'}",
            }.get(job.state, "")
            self._give_up(f"its {job.describe()}{hint}")
            return True
        if job.state == "RUNNING":
            self.run.mark("batch_job_running")
        changed = previous is None or (previous.state, previous.reason) != (job.state, job.reason)
        if job.pending:
            waited = time.monotonic() - self._submitted
            if job.hopeless and previous is not None and previous.hopeless and \
                    previous.reason == job.reason and waited >= HOPELESS_GRACE:
                self.batch.cancel(job.id)  # type: ignore[union-attr]
                self._give_up(f"its {job.describe()}; waiting cannot help, so it was cancelled")
                return True
            if waited > self.pending_timeout:
                self.batch.cancel(job.id)  # type: ignore[union-attr]
                self._give_up(f"its {job.describe()} for more than pending_timeout="
                              f"{self.pending_timeout:g} s, so it was cancelled")
                return True
            if changed:
                self._post(logging.INFO, f"{self._pilot_name()} waits in the batch queue: "
                           f"{job.describe()}")
        elif changed and not self.active.is_set():
            self._post(logging.INFO, f"{self._pilot_name()}: {job.describe()}; "
                       "the pilot's agent is starting")
        return False

    def _give_up(self, why: str) -> None:
        error = BackendError(
            f"RADICAL-Pilot pilot {self._pilot_uid()} on {self.run.resources['resource']} "
            f"cannot run tasks: {why}. Its unfinished tasks failed",
            BACKEND_TYPE,
            details={"batch_job": self.job_id, "job_state": getattr(self.job, "state", None),
                     "job_reason": getattr(self.job, "reason", None)},
        )
        self.run.break_all(error)  # which tells (`failed`)

    def _forget_job(self) -> None:
        key, self._guard_key = self._guard_key, None
        if key is not None:
            self.run.guard.forget(key)  # the job ended: nothing to cancel

    # ---------------------------------------------------------------- notices
    def _tell_active(self) -> None:
        with self._lock:
            if self._told_active:
                return
            self._told_active = True
        job = f" (batch job {self.job_id})" if self.job_id else ""
        self._post(logging.INFO, f"{self._pilot_name()}{job} is active", waiting=None)

    def _pilot_uid(self) -> str:
        return str(getattr(self.run.pilot, "uid", "?"))

    def _pilot_name(self) -> str:
        return f"Pilot {self._pilot_uid()} on {self.run.resources['resource']}"

    def _post(self, level: int, message: str, waiting: object = "",
              log_alone: bool = True) -> None:
        """Post to every attached backend's notices; waiting '' means: this message."""
        with self._lock:
            if message == self._last:
                return
            self._last = message
            listeners = list(self._listeners)
        state = message if waiting == "" else waiting
        if not listeners and log_alone:
            logger.log(level, message)
        for notices in listeners:
            notices.post(level, message, waiting=state, log_alone=log_alone)


def pilot_lost(run: PilotRun, state: str | None) -> BackendError:
    """The error for a pilot that ended in `state`: why, as far as anyone said."""
    resource = run.resources["resource"]
    uid = getattr(run.pilot, "uid", "?")
    refused = launch_error(getattr(run.session, "path", None)) if state == rp.FAILED else None
    watch = getattr(run, "watch", None)
    job = getattr(watch, "job", None)
    if refused:
        return BackendError(
            f"RADICAL-Pilot pilot {uid} on {resource} could not be submitted; the batch "
            f"system said:\n{refused}",
            BACKEND_TYPE, details={"pilot_state": state, "batch_message": refused},
        )
    runtime = run.resources.get("runtime")
    reason = ""
    with contextlib.suppress(Exception):
        reason = (run.pilot.stderr or "").strip()[-500:]
    if state == rp.DONE or getattr(job, "state", None) == "TIMEOUT":
        hint = f"it ran out of its runtime of {runtime} min (resources={{'runtime': ...}})"
    elif job is not None and job.final:
        hint = f"its {job.describe()}"
    else:
        hint = f"see the pilot's logs in {run.pilot_sandbox or 'its sandbox'}"
    return BackendError(
        f"RADICAL-Pilot pilot {uid} on {resource} ended in state {state}: {hint}; its "
        f"unfinished tasks failed" + (f"\n{reason}" if reason else ""),
        BACKEND_TYPE,
        details={"pilot_state": state},
    )


def remove_session_sandbox(pilot: Any, keep: bool = False,
                           log: Callable[[str], None] = logger.debug) -> None:
    """Clear the pilot's session sandbox when the client can reach it (file://).

    Processes still running in it on this machine (an agent that outlived its job on
    a Slurm whose nodes are this machine) are killed; then, unless `keep`, it is
    removed. RP leaves `<remote workdir>/radical.pilot.sandbox/<session>/` behind (its
    bootstrapper cleans only at a normal end, never after scancel or a walltime
    kill), and the agent's id counters in `radical.pilot.sandbox/.radical/utils/
    <session>/`; directories left empty go too.
    """
    if pilot is None:
        return
    with contextlib.suppress(Exception):
        url = ru.Url(str(pilot.session_sandbox))
        if url.schema not in ("file", "local") or url.host not in (None, "", "localhost"):
            return
        session_dir = Path(url.path)
        if session_dir.parent.name != "radical.pilot.sandbox" or not session_dir.is_dir():
            return
        _kill_inside(session_dir)
        if keep:
            return
        shutil.rmtree(session_dir, ignore_errors=True)
        # the agent's id counters: <remote workdir>/radical.pilot.sandbox/.radical/utils/<sid>
        counters = session_dir.parent / ".radical" / "utils" / session_dir.name
        shutil.rmtree(counters, ignore_errors=True)
        log(f"radical_pilot: removed the pilot sandbox {session_dir}")
        for empty in (counters.parent, counters.parent.parent, session_dir.parent):
            with contextlib.suppress(OSError):
                empty.rmdir()


def _kill_inside(directory: Path) -> None:
    """Kill this machine's processes whose working directory is inside `directory`."""
    inside = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if Path(process.cwd()).is_relative_to(directory):
                inside.append(process)
    for process in inside:
        with contextlib.suppress(psutil.Error):
            process.kill()
    if inside:
        psutil.wait_procs(inside, timeout=5)
        logger.debug("radical_pilot: killed %d processes left in %s", len(inside), directory)


__all__ = [
    "PENDING_TIMEOUT",
    "STARTUP_TIMEOUT",
    "PilotWatch",
    "pilot_lost",
    "remove_session_sandbox",
]
