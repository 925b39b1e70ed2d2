"""Reap the processes of one RADICAL-Pilot run of this backend (what a watchdog runs).

    python -m rhapsody_prefect.backends.radical_pilot reap rhapsody.rp.20261126-101500.4242.001
    python -m rhapsody_prefect.backends.radical_pilot reap <run id> <run dir>   # + forks

Kills every process that run's session started (bridges, agent, raptor, tasks),
found by their run directory or environment marker, and with the run directory
also what the client forked and recorded there (`processes.reap_run`).
"""

import sys

from .processes import main

sys.exit(main())
