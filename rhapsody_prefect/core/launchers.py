"""MPI launchers: the one list of programs that start multi-rank tasks.

    >>> from rhapsody_prefect.core.launchers import LOCAL_MPI_LAUNCHERS, mpi_launcher
    >>> LOCAL_MPI_LAUNCHERS
    ('mpiexec', 'mpirun')
    >>> path = mpi_launcher()          # '/usr/bin/mpiexec', or None

A backend that starts commands on this machine (`concurrent`, a RADICAL-Pilot
pilot on this machine) runs `ranks > 1` under a local launcher; on a batch
system the batch launcher (`srun`, `aprun`, `jsrun`) is the batch system's own.
"""

from __future__ import annotations

import shutil

from .exceptions import ConfigurationError

#: Launchers that start ranks on this machine, in order of preference.
LOCAL_MPI_LAUNCHERS = ("mpiexec", "mpirun")
#: Launchers of batch systems (inside an allocation).
BATCH_MPI_LAUNCHERS = ("srun", "aprun", "jsrun")
MPI_LAUNCHERS = LOCAL_MPI_LAUNCHERS + BATCH_MPI_LAUNCHERS


def mpi_launcher() -> str | None:
    """Path of the first local MPI launcher on PATH, or None."""
    for name in LOCAL_MPI_LAUNCHERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_mpi_launcher(ranks: int, uid: str | None = None) -> str:
    """The local launcher for a `ranks`-rank task; ConfigurationError if there is none."""
    launcher = mpi_launcher()
    if launcher is None:
        who = f"Task '{uid}' asks" if uid else "Task asks"
        raise ConfigurationError(
            f"{who} for ranks={ranks} but no MPI launcher "
            f"({', '.join(LOCAL_MPI_LAUNCHERS)}) is on PATH; install one "
            "(Debian: apt-get install mpich) or use ranks=1",
            config_key="ranks",
        )
    return launcher


__all__ = [
    "BATCH_MPI_LAUNCHERS",
    "LOCAL_MPI_LAUNCHERS",
    "MPI_LAUNCHERS",
    "mpi_launcher",
    "require_mpi_launcher",
]
