"""The `radical_pilot` backend: RHAPSODY tasks on a RADICAL-Pilot pilot.

    import rhapsody_prefect as rhapsody
    backend = rhapsody.get_backend("radical_pilot")          # local.localhost, this machine
    backend = rhapsody.get_backend("radical_pilot", resources={
        "resource": "mysite.slurm", "nodes": 2, "queue": "debug", "runtime": 30})

Modules: `backend` (`RadicalPilotBackend`, the RHAPSODY contract), `config` (pilot
and raptor options, the split of the pilot's cores), `resource_configs` (which
resources RP knows, and whether one is this machine), `session` (the RP session,
pilot and task manager of one run), `lifecycle` (the pilot's life followed and
told: batch job, active, lost), `batch_job` (Slurm's view of the pilot's job),
`sharing` (pilots shared by `shared=True` backends), `raptor` (function tasks'
master and workers), `translate` (RP states, task descriptions, results),
`processes` (marking and reaping RP's processes), `bind_interface` and
`bind_wrappers` (RP's endpoints bound to one network interface: loopback for a local
pilot, `network_interface=` for a batch one), `rp_import`. What runs in a raptor
worker is `rhapsody_prefect.body.raptor_call`.
"""

from .backend import RadicalPilotBackend, availability
from .config import PilotConfig, PilotShape, pilot_config
from .processes import reap_orphans, reap_run
from .sharing import close_shared_pilots
from .translate import RP_TO_TASK_STATE

__all__ = [
    "RP_TO_TASK_STATE",
    "PilotConfig",
    "PilotShape",
    "RadicalPilotBackend",
    "availability",
    "close_shared_pilots",
    "pilot_config",
    "reap_orphans",
    "reap_run",
]
