"""The raptor worker class the radical_pilot backend starts on a local pilot.

RP's DefaultWorker forks a process per function task; importing the call helpers
(and cloudpickle) here, once, spares every task process that import. RP loads
this file by path:

    rp.TaskDescription({"mode": rp.RAPTOR_WORKER, "raptor_class": "RhapsodyWorker",
                        "raptor_file": str(Path(raptor_worker.__file__))})
"""

from __future__ import annotations

import radical.pilot as rp

from rhapsody_prefect.body import raptor_call  # noqa: F401  (inherited by forked tasks)


class RhapsodyWorker(rp.raptor.DefaultWorker):
    """RP's DefaultWorker, with rhapsody's function-call helpers already imported."""


__all__ = ["RhapsodyWorker"]
