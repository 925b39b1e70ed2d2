"""The RHAPSODY API and the shared engine; knows nothing of Prefect.

    from rhapsody_prefect.core.engine import ExecutionBackend
    from rhapsody_prefect.core.constants import TaskState
    from rhapsody_prefect.core.tasks import validate_task

Modules: `constants` (TaskState, BackendType, Defaults), `exceptions`, `tasks`
(task dicts, their validation, the resource model), `launchers` (MPI launchers),
`capacity` (what a task may use on a backend), `contract` (BaseExecutionBackend),
`outcome` (an attempt's end, TaskError), `scheduling` (core pool, launch batcher),
`engine` (ExecutionBackend: the contract implemented once), `guard` and `watchdog`
(what a backend started ends if this process dies, even by SIGKILL), `machine`
(the cores this process may use).

Imports: the standard library only (and psutil, in the watchdog process); nothing
else of `rhapsody_prefect`, no Prefect.
"""
