"""Files in and out of a command: `input_files` copied in before it runs, `output_files` back.

The keys are upstream RHAPSODY's. Validation on the submitting side
(`core/tasks.py`) makes every entry a pair of absolute paths there: an input
`(source, name)` (a bare path means its own name) and an output `(name, target)`
(a bare name means `<submitting cwd>/<name>`). Where the command runs, `prepare`
checks and copies, and `collect` copies the outputs back once it exited:

    staging = prepare(task)            # an Outcome (FAILED, naming the file) or a Staging
    ... run the command in staging.workdir ...
    outcome = staging.collect(outcome)  # FAILED if an output is missing; lists the copies

A command with files and no `cwd` runs in a fresh directory of its own (removed
after its outputs are copied); with `cwd`, the files go there. A target that exists
fails the task before it runs unless the task says `output_exists="overwrite"`;
a missing output fails it unless `allow_missing_outputs=True`. On `concurrent`
both sides are this machine; on `dask` the worker copies, so sources and targets
must be on a file system the workers see (on a cluster: the shared one).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.constants import TaskState
from ..core.outcome import Outcome

#: What an existing output target does: fail the task before it runs, or be replaced.
OUTPUT_EXISTS = ("fail", "overwrite")


def has_files(task: Mapping[str, Any]) -> bool:
    return bool(task.get("input_files") or task.get("output_files"))


@dataclasses.dataclass
class Staging:
    """One command's files: where it runs and what comes back."""

    task: Mapping[str, Any]
    workdir: str | None
    own_workdir: bool = False

    def collect(self, outcome: Outcome) -> Outcome:
        """Copy the outputs of a command that exited 0 to their targets."""
        try:
            if outcome.state is not TaskState.COMPLETED or not self.task.get("output_files"):
                return outcome
            copied: list[str] = []
            missing: list[str] = []
            base = Path(self.workdir or os.getcwd())
            for name, target in self.task["output_files"]:
                source = base / name
                if not source.exists():
                    missing.append(name)
                    continue
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                _copy(source, Path(target))
                copied.append(str(target))
            if missing and not self.task.get("allow_missing_outputs"):
                return dataclasses.replace(outcome, state=TaskState.FAILED, exception=(
                    FileNotFoundError(
                        f"Task '{self.task.get('uid')}': output file(s) {missing} not written "
                        f"in {base} (allow_missing_outputs=True accepts that)")),
                    staged_outputs=tuple(copied))
            return dataclasses.replace(outcome, staged_outputs=tuple(copied))
        except OSError as error:
            return dataclasses.replace(outcome, state=TaskState.FAILED, exception=error)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        if self.own_workdir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copyfile(source, target)


def check_files(task: Mapping[str, Any]) -> Outcome | None:
    """A FAILED outcome if an input is missing or an output target is taken, else None
    (where the files are: the command's side here, the submitting side for RP)."""
    uid = task.get("uid")
    missing = [source for source, _ in task.get("input_files") or ()
               if not Path(source).exists()]
    if missing:
        return Outcome.failed(FileNotFoundError(
            f"Task '{uid}': input file(s) not found, nothing ran: {missing}"))
    if task.get("output_exists", "fail") == "fail":
        taken = [target for _, target in task.get("output_files") or ()
                 if Path(target).exists()]
        if taken:
            return Outcome.failed(FileExistsError(
                f"Task '{uid}': output target(s) exist, nothing ran: {taken} "
                "(output_exists='overwrite' replaces them)"))
    return None


def prepare(task: Mapping[str, Any]) -> Staging | Outcome:
    """Check the task's files and copy its inputs in; a FAILED outcome names a problem."""
    if not has_files(task):
        return Staging(task, task.get("cwd"))
    refused = check_files(task)
    if refused is not None:
        return refused
    uid = task.get("uid")
    own = task.get("cwd") is None
    workdir = tempfile.mkdtemp(prefix=f"rhapsody-{uid}-") if own else str(task["cwd"])
    staging = Staging(task, workdir, own)
    try:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        for source, name in task.get("input_files") or ():
            _copy(Path(source), Path(workdir) / name)
    except OSError as error:
        staging.cleanup()
        return Outcome.failed(error)
    return staging


__all__ = ["OUTPUT_EXISTS", "Staging", "check_files", "has_files", "prepare"]
