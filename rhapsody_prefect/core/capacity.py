"""What a backend can run: cores, GPUs, a local MPI launcher; and the check of a task.

    capacity = Capacity(cores=4, gpus=0, where="the concurrent backend")
    capacity.check(task)    # ConfigurationError naming the key when the task cannot fit

The shared engine checks every task against `ExecutionBackend._capacity(task)`
before it starts anything, so a task that could never run is refused at once,
not left waiting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .exceptions import ConfigurationError
from .launchers import require_mpi_launcher
from .tasks import TaskDict, task_slots


@dataclasses.dataclass(frozen=True)
class Capacity:
    """The most a single task may use; None: not known here (the backend decides)."""

    cores: int | None = None
    gpus: float | None = None
    max_ranks: int | None = None
    #: Multi-rank commands run under a launcher found on this machine.
    local_mpi: bool = False
    #: Names the limit in error messages ("the pilot", "a raptor worker", ...).
    where: str = "the backend"
    #: How to get more, appended to error messages ("raptor={'cores_per_worker': ...}").
    hint: str = ""

    def check(self, task: TaskDict) -> None:
        """Raise ConfigurationError, naming the key, if `task` can never run here."""
        uid, ranks = task["uid"], task["ranks"]
        if self.max_ranks is not None and ranks > self.max_ranks:
            self._refuse(uid, f"has ranks={ranks} but {self.where} runs at most "
                              f"{self.max_ranks}", "ranks")
        if self.cores is not None and task_slots(task) > self.cores:
            self._refuse(
                uid, f"needs {task_slots(task)} cores (ranks * cores_per_rank) but "
                f"{self.where} has {self.cores}",
                "cores_per_rank" if task["cores_per_rank"] > 1 else "ranks",
            )
        gpus = ranks * task["gpus_per_rank"]
        if self.gpus is not None and gpus > self.gpus:
            self._refuse(uid, f"needs {gpus:g} GPUs but {self.where} has {self.gpus:g}",
                         "gpus_per_rank")
        if self.local_mpi and ranks > 1 and task.get("executable") is not None:
            require_mpi_launcher(ranks, uid)

    def _refuse(self, uid: str, problem: str, key: str) -> Any:
        hint = f" ({self.hint})" if self.hint else ""
        raise ConfigurationError(f"Task '{uid}' {problem}{hint}", config_key=key)


__all__ = ["Capacity"]
