"""The `radical_pilot` backend: RHAPSODY tasks on a RADICAL-Pilot pilot.

One RADICAL-Pilot session, one pilot and one task manager per backend, started
lazily on the first submit. Executable tasks (with ranks, cores, GPUs, environment,
pre_exec; `ranks > 1` runs under the machine's MPI launcher) go to the pilot's
agent directly. Python function tasks go to a raptor master and worker that are
started on demand, when the first function task arrives.

    import asyncio
    import rhapsody_prefect as rhapsody

    async def main():
        # local.localhost, sized to this machine; files under ./.rhapsody/radical_pilot
        async with rhapsody.get_backend("radical_pilot") as backend:
            await backend.submit_tasks([
                {"uid": "hello", "executable": "/bin/echo", "arguments": ["hi"]},
                {"uid": "mpi", "executable": "hostname", "ranks": 2},
                {"uid": "sum", "function": sum, "args": ([1, 2, 3],)},
            ])
            await backend.wait()
            print(backend.get_task("sum")["return_value"])   # 6

    asyncio.run(main())

A real machine RADICAL-Pilot knows (Slurm, PBS, ...), from its login node:

    get_backend("radical_pilot", resources={
        "resource": "ornl.frontier", "project": "ABC123", "queue": "batch",
        "nodes": 2, "runtime": 60})

`resources` takes RADICAL-Pilot pilot description keys; a bad key or value raises
`ConfigurationError` (with `config_key`) in the constructor. `shared=True` lets
backends of the same configuration in one process reuse one pilot (closed by
`close_shared_pilots()` or at exit). See docs/radical_pilot.md.

This module is the backend itself; `config` checks the pilot and raptor options and
splits the cores, `session` runs the RP session and pilot (`lifecycle` follows the
pilot's life), `sharing` keeps the shared pilots, `raptor` the function tasks' master
and workers, `translate` maps states, descriptions and results, `processes` marks and
reaps RP's processes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...body.staging import check_files
from ...core.attempt import Attempt
from ...core.capacity import Capacity
from ...core.engine import ExecutionBackend
from ...core.exceptions import ConfigurationError, refuse_unknown_options
from ...core.notices import Notices
from ...core.outcome import Outcome
from ...core.tasks import TaskDict, is_function_task
from .config import PENDING_TIMEOUT, PilotConfig, PilotShape, pilot_config
from .lifecycle import STARTUP_TIMEOUT
from .processes import availability
from .rp_import import rp
from .session import PilotRun
from .sharing import share_key, shared_run
from .translate import (
    BACKEND_TYPE,
    MANAGED_TASK_KEYS,
    executable_description,
    function_description,
)


class RadicalPilotBackend(ExecutionBackend):
    """RHAPSODY tasks on one RADICAL-Pilot pilot (see the module docstring).

    Args:
        resources: pilot description keys (resource, cores, nodes, gpus, runtime [min],
            queue, project, access_schema, sandbox, ...). Default: `local.localhost`
            with this machine's cores, runtime 1440 min.
        work_dir: directory for the session, sandbox, RP config and temp files
            (default `./.rhapsody/radical_pilot`); each run uses a subdirectory.
        keep_sandbox: keep that subdirectory (logs, task sandboxes) after the run.
        raptor: True (default sizing), False (no function tasks) or a dict with
            `workers`, `cores_per_worker`, `gpus_per_worker`. On `local.localhost` the
            raptor master and workers get cores on top of the machine's; on any other
            resource they are carved out of the pilot (see `config.PilotShape`).
        resource_config: a RADICAL-Pilot resource config entry for `resources['resource']`
            (as in `resource_<site>.json`), so a flow file can be self-contained.
        pending_timeout: seconds the pilot's batch job may wait in the queue before the
            backend cancels it and fails its tasks (default a day); a job pending for a
            reason that cannot clear (e.g. Slurm's PartitionConfig) is given up at once.
            While it waits, `notices` tells why (see `lifecycle`).
        network_interface: the network interface (e.g. "ib0", "hsn0", "lo") RP's ZMQ
            endpoints bind to and advertise, on the client's machine and, resolved there,
            on the pilot's nodes (the run directory must be on a file system they see).
            Default: loopback for a pilot on this machine, all interfaces for a batch
            pilot (docs/network.md). Checked here: an unknown name fails.
        shared: share one session and pilot with every other `shared=True` backend of
            the same configuration in this process: the first one starts it,
            `terminate()` only detaches, and the pilot is closed by
            `close_shared_pilots()` or at exit. Saves the pilot start (20-30 s) for
            each flow run or test.
    """

    backend_type = BACKEND_TYPE
    # RP's submit call is costly per call: collect a Prefect flow's submissions in bulk.
    launch_batch_delay = 0.05

    def __init__(
        self,
        resources: Mapping[str, Any] | None = None,
        *,
        work_dir: str | os.PathLike[str] | None = None,
        keep_sandbox: bool = False,
        raptor: bool | Mapping[str, Any] | None = True,
        shared: bool = False,
        resource_config: Mapping[str, Any] | None = None,
        pending_timeout: float = PENDING_TIMEOUT,
        network_interface: str | None = None,
        **unknown: Any,
    ) -> None:
        refuse_unknown_options("the radical_pilot backend", unknown, [
            "resources", "work_dir", "keep_sandbox", "raptor", "shared", "resource_config",
            "pending_timeout", "network_interface"])
        super().__init__()
        #: Everything the backend was configured with, checked (`config.PilotConfig`).
        self.config: PilotConfig = pilot_config(resources, raptor, resource_config,
                                                pending_timeout, network_interface)
        #: The pilot's life (queued, batch job, active, lost), for the user (see lifecycle).
        self.notices = Notices("rhapsody_prefect.backends.radical_pilot")
        if work_dir is not None and not isinstance(work_dir, (str, os.PathLike)):
            raise ConfigurationError(f"work_dir must be a path, got {work_dir!r}", "work_dir")
        for name, flag in (("keep_sandbox", keep_sandbox), ("shared", shared)):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"{name} must be a bool, got {flag!r}", name)
        self._default_work_dir = work_dir is None
        self.work_dir = Path(work_dir or Path.cwd() / ".rhapsody" / "radical_pilot").absolute()
        self.keep_sandbox = keep_sandbox
        self.shared = shared
        self._run: PilotRun | None = None if shared else self._new_run()
        self._rp_uids: dict[Attempt, str] = {}  # launched attempt -> its RP task, to cancel

    def _new_run(self) -> PilotRun:
        return PilotRun(self.config, self.work_dir, self.keep_sandbox, self._default_work_dir)

    def _share_key(self) -> str:
        return share_key(self.config, self.work_dir, self.keep_sandbox)

    # ------------------------------------------------- the configuration, read-only
    @property
    def resources(self) -> dict[str, Any]:
        """The pilot description keys, checked, with defaults filled in."""
        return self.config.resources

    @property
    def raptor_config(self) -> dict[str, int] | None:
        """Raptor's sizing (`workers`, `cores_per_worker`, `gpus_per_worker`); None: off."""
        return self.config.raptor

    @property
    def shape(self) -> PilotShape:
        """How the pilot's cores are split between executables and raptor."""
        return self.config.shape

    @property
    def local(self) -> bool:
        """The pilot runs on this machine (files and processes are shared)."""
        return self.config.shape.local

    @property
    def run_id(self) -> str | None:
        """Name of the run directory (and RP session uid); None before a shared start."""
        return None if self._run is None else self._run.run_id

    @property
    def run_dir(self) -> Path | None:
        return None if self._run is None else self._run.run_dir

    @property
    def timings(self) -> dict[str, float]:
        """Seconds since the run started: session, pilot_submitted, pilot_active, ..."""
        return {} if self._run is None else dict(self._run.timings)

    @property
    def pilot_sandbox(self) -> str | None:
        return None if self._run is None else self._run.pilot_sandbox

    # ------------------------------------------------------------------ start
    async def _start(self) -> None:
        if self.shared:
            self._run = await asyncio.to_thread(shared_run, self._share_key(), self._new_run)
            self._run.attach(self)
        else:
            assert self._run is not None
            self._run.attach(self)
            await asyncio.to_thread(self._run.start)

    async def wait_active(self, timeout: float | None = None) -> None:
        """Start the backend and wait until its pilot runs (handy before timing).

        Raises `BackendError` when the pilot cannot run (the batch system's answer) or is
        not active after `timeout` s (default: `pending_timeout` + `STARTUP_TIMEOUT`).
        """
        await self.start()
        assert self._run is not None
        if timeout is None:
            timeout = self.config.pending_timeout + STARTUP_TIMEOUT
        await asyncio.to_thread(self._run.wait_active, timeout)

    # ------------------------------------------------------------ validation
    def _check_task(self, task: TaskDict) -> None:
        extra = task.get("backend_kwargs") or {}
        schema = rp.TaskDescription._schema
        for key in extra:
            if key not in schema or key in MANAGED_TASK_KEYS:
                raise ConfigurationError(
                    f"Task '{task['uid']}': backend_kwargs key {key!r} is not a RADICAL-Pilot "
                    "TaskDescription field this backend lets you set; task keys cover "
                    f"{sorted(MANAGED_TASK_KEYS & set(schema))}",
                    config_key=f"backend_kwargs.{key}",
                )
        if not is_function_task(task):
            return
        if self.raptor_config is None:
            raise ConfigurationError(
                f"Task '{task['uid']}' is a function task, but this radical_pilot backend "
                "was created with raptor=False",
                config_key="raptor",
            )
        if task["pre_exec"]:
            raise ConfigurationError(
                f"Task '{task['uid']}': pre_exec is not supported for function tasks "
                "(they run inside a raptor worker)",
                config_key="pre_exec",
            )

    def _capacity(self, task: TaskDict) -> Capacity:
        if is_function_task(task):
            raptor = self.raptor_config
            assert raptor is not None
            return Capacity(
                cores=raptor["cores_per_worker"], gpus=raptor["gpus_per_worker"], max_ranks=1,
                where="a raptor worker (function tasks run in one, with ranks=1)",
                hint="raptor={'cores_per_worker': ..., 'gpus_per_worker': ...}",
            )
        shape = self.shape
        return Capacity(
            cores=shape.task_cores, gpus=shape.task_gpus if shape.local else None,
            local_mpi=shape.local, where=f"the pilot ({shape.describe()})",
            hint="resources={'cores': ...}",
        )

    # ---------------------------------------------------------- descriptions
    def _rp_uid(self, attempt: Attempt, function: bool) -> str:
        assert self._run is not None
        rp_uid = self._run.register(self, attempt, function)
        self._rp_uids[attempt] = rp_uid
        return rp_uid

    def _description(self, attempt: Attempt) -> Any:
        task = attempt.task
        if not is_function_task(task):
            return executable_description(task, self._rp_uid(attempt, False),
                                          self._run.output_copy if self._run else None)
        assert self._run is not None
        rp_uid = self._rp_uid(attempt, True)
        return function_description(task, rp_uid, self._run.raptor.cancel_marker(rp_uid))

    # ------------------------------------------------------------------ hooks
    async def _launch(self, attempts: list[Attempt]) -> None:
        run = self._run
        assert run is not None
        executables, functions = [], []
        for attempt in attempts:
            refused = check_files(attempt.task)  # on this side: RP stages from and to here
            if refused is not None:
                self._report(attempt, refused)
                continue
            try:
                description = self._description(attempt)
            except Exception as error:  # e.g. a function that cannot be pickled
                self._report(attempt, Outcome.failed(error))
                continue
            (functions if is_function_task(attempt.task) else executables).append(description)
        await asyncio.to_thread(run.submit, executables, functions)

    async def _cancel(self, attempts: list[Attempt]) -> None:
        if self._run is not None:
            rp_uids = [self._rp_uids[a] for a in attempts if a in self._rp_uids]
            await asyncio.to_thread(self._run.cancel, rp_uids)

    async def _shutdown(self) -> None:
        run = self._run
        if run is None:
            return
        run.forget(self)
        if not self.shared:
            await asyncio.to_thread(run.close)

    def capacity_cores(self) -> int | None:
        """The pilot's cores for tasks (raptor's master and workers not counted)."""
        return self.shape.task_cores

    def placement(self) -> list[str]:
        pilot = getattr(self._run, "pilot", None)
        return [f"pilot {getattr(pilot, 'uid', '?')} on {self.resources['resource']} "
                f"({self.shape.task_cores} task cores)"]

    def __repr__(self) -> str:
        return (f"RadicalPilotBackend(resource={self.resources['resource']!r}, "
                f"run_dir={str(self.run_dir)!r}, shared={self.shared})")


__all__ = ["RadicalPilotBackend", "availability"]
