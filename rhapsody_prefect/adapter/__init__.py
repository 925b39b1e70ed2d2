"""The Prefect adapter: RHAPSODY backends as Prefect task runners, and Prefect-side helpers.

    from rhapsody_prefect.adapter.runner import RhapsodyRunner
    from rhapsody_prefect.adapter.executable import executable_task, task_resources

Modules: `runner` (RhapsodyRunner: the TaskRunner and its lifecycle), `loop_thread`
(the event loop every task run of a flow run shares), `pacing` (a few task runs
start per loop iteration), `routing` (a flow run's backends: which one a body
goes to, each started on first use), `dispatch` (one task body as a backend task,
awaited; the one owner of cancelling them), `body_spec` (the one builder of a body's
backend task, for plain runs and ensembles), `timeline` (per-task transition
lines and replayed body logs), `states` (RHAPSODY TaskState -> Prefect state, and
the Prefect result of a finished backend task), `executable` (executable_task,
task_resources), `ensemble` (ensemble_map: one task run, a backend task per
member), `progress` (progress and summary artifacts, and the cores a backend
offered over time).

Imports: Prefect, `rhapsody_prefect.core`, `.backends` (the registry) and `.body`.
Nothing outside this folder imports it, except the package's lazy exports.
"""
