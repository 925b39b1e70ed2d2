"""This machine, as the backends size themselves to it: the cores this process may use.

    >>> from rhapsody_prefect.core.machine import usable_cores
    >>> usable_cores() >= 1
    True

One owner for "how many cores": the CLI's machine check, the radical_pilot backend's
`local.localhost` pilot and the dask backend's worker split all ask `usable_cores()`.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The CPUs this process may run on: its CPU affinity where the OS has one
    (`taskset`, a Slurm job step, a container's cpuset), else `os.cpu_count()`; at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


__all__ = ["usable_cores"]
