"""A pilot's life from submission to its end: followed, told, bounded.

    events = PilotEvents(mark=run.mark, job_found=..., job_ended=..., cannot_run=...)
    session_dir = run_dir / "client"       # the RP session's directory (its logs)
    monitor = PilotMonitor(config, run_id, session_dir, lambda: run.pilot, events)
    monitor.attach(backend.notices)        # notices reach the backend's user (the flow's log)
    monitor.start()                        # after submit_pilots: a thread of its own
    monitor.wait_active(timeout=600)       # True once active; False: given up or timed out
    monitor.stop()                         # before the session closes
    monitor.cancel_job("left by the session")   # the pilot's batch job, if it still runs
    error = monitor.lost_error("FAILED")   # the BackendError that names why the pilot ended
    remove_session_sandbox(pilot)          # a file:// pilot sandbox, removed from the client

While the pilot waits in the batch queue, RADICAL-Pilot only says
`PMGR_ACTIVE_PENDING`. The monitor finds the pilot's batch job (`batch_job`), and
posts a notice when what it sees changes: "Pilot pilot.0000 on mysite.slurm waits
in the batch queue: batch job 14 PENDING (reason Resources: ...)", the job running,
the pilot active. It observes and tells; what to do is the run's (`session.PilotRun`,
through `PilotEvents`): it reports that the pilot cannot run tasks (and whether its
job should be cancelled) when

* the job pends for a reason that waiting cannot clear (`PartitionConfig`, ...):
  cancel;
* it is still pending after `pending_timeout` seconds (a backend option): cancel;
* it ended (scancel, walltime, node failure): Slurm says so before RADICAL-Pilot's
  own batch-system poll (psij, every 30 s) does;
* the pilot is not active `STARTUP_TIMEOUT` s after its job started (after its
  submission, for a pilot with no batch system).

A job sbatch refused never reaches the queue: RADICAL-Pilot fails the pilot in
about 0.5 s, and `lost_error` quotes sbatch's message from RP's launcher log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...core.exceptions import BackendError
from ...core.notices import Notices
from .batch_job import BatchJob, batch_system, launch_error
from .config import PilotConfig
from .processes import reap_inside
from .rp_import import rp, ru
from .translate import BACKEND_TYPE

logger = logging.getLogger("rhapsody_prefect.backends.radical_pilot")

#: Seconds between looks at a queued or starting job, and at a running pilot's job.
POLL_WAITING = 5.0
POLL_ACTIVE = 15.0
#: Seconds a hopeless pending reason must persist before the pilot is given up.
HOPELESS_GRACE = 4.0
#: Seconds from the job's start (or the submission, without a batch system) to active.
STARTUP_TIMEOUT = 900.0


@dataclasses.dataclass(frozen=True)
class PilotEvents:
    """What a `PilotMonitor` reports, to the run that decides (called on any thread)."""

    #: A milestone for the run's timings: 'batch_job_found', 'batch_job_running'.
    mark: Callable[[str], None]
    #: The pilot's batch job is known: (job id, the command that cancels it, its env).
    job_found: Callable[[str, list[str], dict[str, str] | None], None]
    #: That job ended (or was cancelled): nothing of it is left to cancel.
    job_ended: Callable[[str], None]
    #: The pilot cannot run tasks (the error says why); True: its job should be
    #: cancelled (it is still queued).
    cannot_run: Callable[[BackendError, bool], None]


def sandbox_path(pilot: Any) -> str | None:
    """The pilot sandbox's path (None before the pilot is submitted)."""
    return None if pilot is None else ru.Url(pilot.pilot_sandbox).path


class PilotMonitor:
    """Follows one pilot and its batch job on a thread of its own (see the module)."""

    def __init__(self, config: PilotConfig, run_id: str, session_dir: Path,
                 pilot: Callable[[], Any], events: PilotEvents) -> None:
        self.config = config
        self.run_id = run_id
        #: The RP session's directory (its launcher log tells why sbatch refused a job).
        self.session_dir = session_dir
        #: Returns the RP pilot once submitted (None before): what is followed.
        self.pilot = pilot
        self.events = events
        self.batch = batch_system(config.resource_config,
                                  config.resources.get("access_schema"))
        self.job_id: str | None = None
        self.job: BatchJob | None = None
        self.active = threading.Event()
        self._settled = threading.Event()  # active, or given up
        self._stopped = threading.Event()  # stopped, or given up: nothing more to tell
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Notices] = []
        self._lock = threading.Lock()
        self._last: str | None = None
        self._told_active = False
        self._submitted = time.monotonic()
        self._job_running: float | None = None  # monotonic time the job was seen running

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
        """Follow the pilot (just submitted) on a thread of its own."""
        self._submitted = time.monotonic()
        what = f"batch job of {self.batch.name}" if self.batch else "agent"
        self._post(logging.INFO, f"{self._pilot_name()} submitted; waiting for its {what}")
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"rp-monitor-{self.run_id}")
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
        """Block until the pilot is active (True), given up or `timeout` (False)."""
        self._settled.wait(timeout)
        return self.active.is_set()

    def failed(self, error: BaseException) -> None:
        """The pilot cannot run tasks (any thread): stop, and tell the attached backends'
        users. Nothing is logged when none is attached: the broken engine logs the error.
        """
        self._stopped.set()
        self._settled.set()
        self._wake.set()
        self._post(logging.ERROR, str(error), waiting=None, log_alone=False)

    def following_job(self) -> bool:
        """True while the monitor follows a batch job (it then reports the end)."""
        return (self.batch is not None and self._thread is not None
                and self._thread.is_alive() and not self._stopped.is_set())

    def status(self) -> str | None:
        """The last thing the monitor told (e.g. 'batch job 14 PENDING (reason ...)')."""
        return self._last

    def cancel_job(self, why: str) -> None:
        """Cancel the pilot's batch job if it is still queued or running."""
        if self.batch is None or self.job_id is None:
            return
        job = self.batch.query(self.job_id)
        if job is not None and not job.final:
            logger.info("radical_pilot: cancelling batch job %s %s", self.job_id, why)
            self.batch.cancel(self.job_id)
        self._job_over()

    def lost_error(self, state: str | None) -> BackendError:
        """The error for a pilot that ended in `state`: why, as far as anyone said."""
        resource = self.config.resources["resource"]
        uid = self._pilot_uid()
        refused = launch_error(self.session_dir) if state == rp.FAILED else None
        job = self.job
        if refused:
            return BackendError(
                f"RADICAL-Pilot pilot {uid} on {resource} could not be submitted; the batch "
                f"system said:\n{refused}",
                BACKEND_TYPE, details={"pilot_state": state, "batch_message": refused},
            )
        runtime = self.config.resources.get("runtime")
        reason = ""
        with contextlib.suppress(Exception):
            reason = (self.pilot().stderr or "").strip()[-500:]
        if state == rp.DONE or getattr(job, "state", None) == "TIMEOUT":
            hint = f"it ran out of its runtime of {runtime} min (resources={{'runtime': ...}})"
        elif job is not None and job.final:
            hint = f"its {job.describe()}"
        else:
            hint = f"see the pilot's logs in {self._sandbox()}"
        return BackendError(
            f"RADICAL-Pilot pilot {uid} on {resource} ended in state {state}: {hint}; its "
            f"unfinished tasks failed" + (f"\n{reason}" if reason else ""),
            BACKEND_TYPE,
            details={"pilot_state": state},
        )

    # --------------------------------------------------------------- the loop
    def _loop(self) -> None:
        try:
            while not self._stopped.is_set():
                if self._step():
                    break
                interval = POLL_ACTIVE if self.active.is_set() else POLL_WAITING
                self._wake.wait(interval)
                self._wake.clear()
        except Exception:
            logger.exception("radical_pilot: the pilot monitor failed")

    def _step(self) -> bool:
        """One look; True when there is nothing left to follow."""
        state = getattr(self.pilot(), "state", None)
        if state in rp.FINAL:  # RP saw the end first: say what the batch system says
            if not self._stopped.is_set():
                job = self.batch.query(self.job_id) if self.batch and self.job_id else None
                self.job = job or self.job
                self.events.cannot_run(self.lost_error(state), False)
            return True
        if state == rp.PMGR_ACTIVE and not self.active.is_set():
            self.on_pilot_state(state)
        if self.batch is not None:
            if self.job_id is None:
                self._find_job()
            if self.job_id is not None:
                job = self.batch.query(self.job_id)
                if job is not None and self._judge(job):
                    return True
        if self.active.is_set():
            return self.batch is None  # nothing to follow beyond RP without a batch system
        since = self._job_running if self.batch is not None else self._submitted
        if since is not None and time.monotonic() - since > STARTUP_TIMEOUT:
            self._give_up(f"it was not active {STARTUP_TIMEOUT:.0f} s after "
                          f"{'its batch job started' if self.batch else 'its submission'}; "
                          f"see the agent's logs in {self._sandbox()}")
            return True
        return False

    def _find_job(self) -> None:
        assert self.batch is not None
        sandbox = sandbox_path(self.pilot())
        job_id = self.batch.find(sandbox) if sandbox else None
        if job_id is None:
            return
        self.job_id = job_id
        self.events.mark("batch_job_found")
        env = {"SLURM_CONF": os.environ["SLURM_CONF"]} if os.environ.get("SLURM_CONF") else None
        self.events.job_found(job_id, self.batch.cancel_argv(job_id), env)

    def _judge(self, job: BatchJob) -> bool:
        """Tell what changed; give up on a job that ended or cannot run. True: stop."""
        previous, self.job = self.job, job
        if job.final:
            self._job_over()
            if self._stopped.is_set():
                return True
            runtime = self.config.resources.get("runtime")
            hint = {
                "TIMEOUT": f": it ran out of its walltime of {runtime} min "
                           "(resources={'runtime': ...})",
                "COMPLETED": f": the pilot's agent ended (its runtime of {runtime} min used "
                             f"up?); see its logs in {self._sandbox()}",
            }.get(job.state, "")
            self._give_up(f"its {job.describe()}{hint}")
            return True
        if job.state == "RUNNING":
            self.events.mark("batch_job_running")
            if self._job_running is None:
                self._job_running = time.monotonic()
        changed = previous is None or (previous.state, previous.reason) != (job.state, job.reason)
        if job.pending:
            waited = time.monotonic() - self._submitted
            if job.hopeless and previous is not None and previous.hopeless and \
                    previous.reason == job.reason and waited >= HOPELESS_GRACE:
                self._give_up(f"its {job.describe()}; waiting cannot help, so it was cancelled",
                              cancel_job=True)
                return True
            pending_timeout = self.config.pending_timeout
            if waited > pending_timeout:
                self._give_up(f"its {job.describe()} for more than pending_timeout="
                              f"{pending_timeout:g} s, so it was cancelled", cancel_job=True)
                return True
            if changed:
                self._post(logging.INFO, f"{self._pilot_name()} waits in the batch queue: "
                           f"{job.describe()}")
        elif changed and not self.active.is_set():
            self._post(logging.INFO, f"{self._pilot_name()}: {job.describe()}; "
                       "the pilot's agent is starting")
        return False

    def _give_up(self, why: str, cancel_job: bool = False) -> None:
        error = BackendError(
            f"RADICAL-Pilot pilot {self._pilot_uid()} on {self.config.resources['resource']} "
            f"cannot run tasks: {why}. Its unfinished tasks failed",
            BACKEND_TYPE,
            details={"batch_job": self.job_id, "job_state": getattr(self.job, "state", None),
                     "job_reason": getattr(self.job, "reason", None)},
        )
        self.events.cannot_run(error, cancel_job)  # the run breaks, which tells (`failed`)

    def _job_over(self) -> None:
        if self.job_id is not None:
            self.events.job_ended(self.job_id)

    # ---------------------------------------------------------------- notices
    def _tell_active(self) -> None:
        with self._lock:
            if self._told_active:
                return
            self._told_active = True
        job = f" (batch job {self.job_id})" if self.job_id else ""
        self._post(logging.INFO, f"{self._pilot_name()}{job} is active", waiting=None)

    def _pilot_uid(self) -> str:
        return str(getattr(self.pilot(), "uid", "?"))

    def _pilot_name(self) -> str:
        return f"Pilot {self._pilot_uid()} on {self.config.resources['resource']}"

    def _sandbox(self) -> str:
        return sandbox_path(self.pilot()) or "its sandbox"

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
        killed = reap_inside(session_dir)
        if killed:
            log(f"radical_pilot: killed {killed} processes left in {session_dir}")
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


__all__ = [
    "STARTUP_TIMEOUT",
    "PilotEvents",
    "PilotMonitor",
    "remove_session_sandbox",
    "sandbox_path",
]
