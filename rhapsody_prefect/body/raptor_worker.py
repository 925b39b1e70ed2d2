"""The raptor worker class the radical_pilot backend starts on a local pilot.

RP's DefaultWorker forks a process per function task; importing the call helpers
(and cloudpickle) here, once, spares every task process that import. It also closes
a start-up race of RP 1.103's DefaultWorker: its request listener starts before the
worker's own state exists, so a request queued at the master (the backend submits
function tasks before raptor is up) could arrive early, fail with AttributeError
('_rlock'), kill the listener and hang every function task; seen on a loaded
machine. Requests now wait until the worker is ready. RP loads this file by path:

    rp.TaskDescription({"mode": rp.RAPTOR_WORKER, "raptor_class": "RhapsodyWorker",
                        "raptor_file": str(Path(raptor_worker.__file__))})
"""

from __future__ import annotations

import threading
from typing import Any

import radical.pilot as rp

from rhapsody_prefect.body import raptor_call  # noqa: F401  (inherited by forked tasks)


class RhapsodyWorker(rp.raptor.DefaultWorker):
    """RP's DefaultWorker, helpers imported, requests held until it is initialised."""

    def __init__(self, raptor_id: str) -> None:
        self._rhapsody_ready = threading.Event()
        try:
            super().__init__(raptor_id)
        finally:
            self._rhapsody_ready.set()

    def _request_cb(self, tasks: Any) -> Any:
        # The Getter created in DefaultWorker.__init__ calls this bound method.
        self._rhapsody_ready.wait()
        return super()._request_cb(tasks)


__all__ = ["RhapsodyWorker"]
