"""A pilot's batch job: its id, queue state and reason, cancelling it (Slurm), and sbatch's error.

    slurm = batch_system(resource_config)            # Slurm for slurm://..., else None
    job_id = slurm.find("/sandbox/radical.pilot.sandbox/<sid>/pilot.0000")   # '14' or None
    job = slurm.query(job_id)     # BatchJob('14', 'PENDING', 'Resources')
    job.hopeless                  # True for a reason that can never clear (PartitionConfig, ...)
    job.final                     # True once it ended (CANCELLED, TIMEOUT, ...)
    slurm.cancel(job_id)          # scancel; slurm.cancel_argv(job_id) for a watchdog
    launch_error(session_dir)     # 'sbatch: error: ... Invalid partition name specified'
    launcher_environment(resource_config, None, run_dir)   # {'HOME': '<run dir>/home'}

RADICAL-Pilot submits the pilot through psij, which keeps the batch job's id in a
launcher process the client cannot reach; the pilot's state says nothing of the queue
(`PMGR_ACTIVE_PENDING` while queued and while the agent boots). psij starts the job in
the pilot's sandbox (`#SBATCH --chdir`), so the job is found by its working directory.
When sbatch refuses the job, RP only logs psij's `SubmitException` (with sbatch's own
message) in its launcher component's log; `launch_error` reads it from there.

Only Slurm is watched; for other batch systems `batch_system` returns None and the
pilot's life is what RADICAL-Pilot reports.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .resource_configs import is_this_machine, schema_of

logger = logging.getLogger("rhapsody_prefect.backends.radical_pilot")

#: Seconds a squeue / scontrol / scancel call may take.
COMMAND_TIMEOUT = 30.0

#: Slurm job states after which the job does not run again.
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
})

#: Pending reasons that never clear by waiting: the job asks for what the partition,
#: account or QOS can never give (Slurm accepts such jobs with EnforcePartLimits=NO).
HOPELESS_REASONS = frozenset({
    "AccountNotAllowed", "BadConstraints", "DependencyNeverSatisfied", "InvalidAccount",
    "InvalidQOS", "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit",
    "QOSNotAllowed",
})
_HOPELESS_PATTERN = re.compile(r"^(QOS|Assoc)\w*Max\w*PerJob\w*$")

#: What a pending reason means, for the log (Slurm's reason codes are terse).
REASON_HINTS: Mapping[str, str] = {
    "Resources": "waiting for nodes to become free",
    "Priority": "other jobs come first",
    "None": "not yet considered by the scheduler",
    "PartitionConfig": "the partition can never run a job of this size or shape",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a longer walltime than the partition allows",
    "BadConstraints": "constraints no node satisfies",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "TimeLimit": "its walltime ran out",
}


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """One look at a batch job: id, Slurm state and reason."""

    id: str
    state: str
    reason: str

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES or self.state == "GONE"

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def hopeless(self) -> bool:
        """Pending for a reason that waiting cannot clear."""
        return self.pending and (self.reason in HOPELESS_REASONS
                                 or bool(_HOPELESS_PATTERN.match(self.reason)))

    def describe(self) -> str:
        """'batch job 14 PENDING (reason Resources: waiting for nodes to become free)'."""
        if self.state == "GONE":
            return f"batch job {self.id} is no longer known to the batch system"
        text = f"batch job {self.id} {self.state}"
        if self.reason and (self.reason != "None" or self.pending):
            hint = REASON_HINTS.get(self.reason)
            text += f" (reason {self.reason}{f': {hint}' if hint else ''})"
        return text


class Slurm:
    """Finds, reads and cancels a pilot's Slurm job with squeue, scontrol and scancel."""

    name = "Slurm"

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as error:
            logger.debug("radical_pilot: %s failed: %r", argv[0], error)
            return None

    def find(self, workdir: str) -> str | None:
        """The id of this user's queued or running job started in `workdir`."""
        done = self._run(["squeue", "--me", "-h", "-o", "%i|%Z"])
        if done is None or done.returncode != 0:
            return None
        wanted = workdir.rstrip("/")
        for line in done.stdout.splitlines():
            job_id, _, directory = line.partition("|")
            if directory.rstrip("/") == wanted:
                return job_id.strip()
        return None

    def query(self, job_id: str) -> BatchJob | None:
        """The job's state and reason; state GONE once Slurm forgot it; None: no answer."""
        done = self._run(["scontrol", "-o", "show", "job", job_id])
        if done is None:
            return None
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return BatchJob(job_id, "GONE", "")
            return None
        fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout))
        return BatchJob(job_id, fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""))

    def cancel_argv(self, job_id: str) -> list[str]:
        return ["scancel", job_id]

    def cancel(self, job_id: str) -> None:
        self._run(self.cancel_argv(job_id))


def batch_system(config: Mapping[str, Any], access_schema: str | None = None) -> Slurm | None:
    """The batch system a resource submits its pilot to, if this module can watch it."""
    endpoint = str(schema_of(config, access_schema).get("job_manager_endpoint") or "")
    if endpoint.split("://", 1)[0].split("+")[0] == "slurm":
        return Slurm()
    return None


def launcher_environment(
    config: Mapping[str, Any], access_schema: str | None, run_dir: Path
) -> dict[str, str]:
    """HOME for RP's client helpers while they start: psij's files stay in the run dir.

    psij (RP's pilot launcher) keeps its job scripts, launcher scripts and job logs in
    `~/.psij`, reading HOME when RP's launcher component starts. A batch job gets
    its HOME from the batch system (`--export=NONE`), so only the client's helpers
    see this one. Not for ssh endpoints (ssh needs the user's `~/.ssh`), nor for a
    pilot on this machine (its tasks would inherit it).
    """
    endpoint = str(schema_of(config, access_schema).get("job_manager_endpoint") or "")
    if is_this_machine(config, access_schema) or "ssh" in endpoint.split("://", 1)[0]:
        return {}
    home = run_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home)}


_TIMESTAMPED = re.compile(r"^\d+\.\d+ : ")
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Exception|Error): ")


def launch_error(session_dir: str | os.PathLike[str] | None) -> str | None:
    """The batch system's message for a pilot RP could not submit, from RP's launcher log.

    RP logs 'bulk launch failed' and the traceback of psij's SubmitException, whose
    message is sbatch's (or qsub's) own output. Returns that output, or None.
    """
    if session_dir is None:
        return None
    message: list[str] = []
    for log in sorted(Path(session_dir).glob("pmgr_launching.*.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        found: list[str] = []
        for line in lines:
            if _TIMESTAMPED.match(line):
                if found:  # the exception's message ended at the next log record
                    message, found = found, []
                continue
            if found or _EXCEPTION_LINE.match(line):
                if not found:
                    line = _EXCEPTION_LINE.sub("", line)
                if line.strip():
                    found.append(line.strip())
        message = found or message
    return "\n".join(message) or None


__all__ = [
    "FINAL_STATES",
    "HOPELESS_REASONS",
    "BatchJob",
    "Slurm",
    "batch_system",
    "launch_error",
    "launcher_environment",
]
