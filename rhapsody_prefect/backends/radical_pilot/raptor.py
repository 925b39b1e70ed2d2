"""Raptor: the master and workers that run Python function tasks on a pilot.

    raptor = Raptor(config, run_id, run_dir, local=True, mark=timings_mark)
    raptor.master(pilot).submit_tasks(descriptions)   # started on first use (blocking)
    raptor.stop_functions(["rh.000007"])              # raptor cannot cancel: we do
    error = raptor.on_state(rp_task, state, closing)  # a BackendError once it ended

Raptor cannot cancel a function task, so the client does: it creates the task's
cancel marker (a task that has not started yet then returns at once) and sends
SIGTERM to the pid the task announced (see `body.raptor_call`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from ...body import raptor_worker
from ...core.exceptions import BackendError
from .rp_import import rp
from .translate import BACKEND_TYPE


class Raptor:
    """The raptor master and workers of one pilot run, started on demand."""

    def __init__(
        self,
        config: dict[str, int] | None,
        run_id: str,
        run_dir: Path,
        local: bool,
        mark: Callable[[str], None],
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.run_dir = run_dir
        self.local = local
        self.mark = mark
        self.uids: set[str] = set()
        self.error: BackendError | None = None
        self._master: Any = None
        self.workers: list[Any] = []
        self._lock = threading.Lock()
        #: Set by the run when RP's endpoints bind one interface: its `InterfaceBinding`
        #: (bind_wrappers), whose wrapped raptor executables the tasks run.
        self.binding: Any = None

    def master(self, pilot: Any) -> Any:
        """Blocking: the raptor master, started with its workers on first use."""
        with self._lock:
            if self.error is not None:
                raise self.error
            if self._master is None:
                self._master = self._start(pilot)
            return self._master

    def _pythonpath(self) -> str:
        """The client's import path, so the worker can unpickle the client's functions."""
        entries = [entry or os.getcwd() for entry in sys.path]
        return os.pathsep.join(dict.fromkeys(e for e in entries if os.path.isdir(e)))

    def _start(self, pilot: Any) -> Any:
        config = self.config
        assert config is not None
        environment = {"PYTHONPATH": self._pythonpath()} if self.local else {}
        master_uid = f"raptor.{self.run_id}"
        worker_uids = [f"{master_uid}.worker.{i}" for i in range(config["workers"])]
        self.uids.update([master_uid, *worker_uids])
        # RP's raptor executables wrapped to bind the run's one interface (if it has one).
        master_exe, worker_exe = (
            {"executable": self.binding.executable(f"radical-pilot-raptor-{role}")}
            if self.binding is not None else {}
            for role in ("master", "worker")
        )
        master = pilot.submit_raptors([rp.TaskDescription({
            "uid": master_uid, "mode": rp.RAPTOR_MASTER, **master_exe,
            "ranks": 1, "cores_per_rank": 1, "environment": dict(environment),
        })])[0]
        worker_class: dict[str, str] = {"raptor_class": "DefaultWorker"}
        if self.local and os.environ.get("RHAPSODY_RP_DEFAULT_WORKER") != "1":
            worker_class = {"raptor_class": "RhapsodyWorker",
                            "raptor_file": str(Path(raptor_worker.__file__))}
        self.workers = master.submit_workers([
            rp.TaskDescription({
                **worker_class, **worker_exe, "uid": uid, "mode": rp.RAPTOR_WORKER,
                "ranks": 1, "cores_per_rank": config["cores_per_worker"],
                "gpus_per_rank": config["gpus_per_worker"], "environment": dict(environment),
            })
            for uid in worker_uids
        ])
        self.mark("raptor_submitted")
        return master

    def cancel_marker(self, rp_uid: str) -> str | None:
        """File whose existence tells a function task it was cancelled (local pilots)."""
        return str(self.run_dir / "cancelled" / rp_uid) if self.local else None

    def stop_functions(self, rp_uids: list[str]) -> None:
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

    def on_state(self, rp_task: Any, state: str, closing: bool) -> BackendError | None:
        """A master or worker changed state; the error once one ended (not at close)."""
        is_master = rp_task.mode == rp.RAPTOR_MASTER
        if state == rp.AGENT_EXECUTING:
            self.mark("raptor_master_running" if is_master else "raptor_worker_running")
        if state not in rp.FINAL or closing:
            return None
        detail = (rp_task.stderr or rp_task.stdout or "").strip()[-500:]
        self.error = BackendError(
            f"The raptor {'master' if is_master else 'worker'} {rp_task.uid} ended in "
            f"state {state}; function tasks cannot run" + (f"\n{detail}" if detail else ""),
            BACKEND_TYPE,
        )
        return self.error


__all__ = ["Raptor"]
