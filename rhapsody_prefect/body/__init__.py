"""What runs where a task body runs: a thread, a worker process, a Dask worker, a raptor worker.

    from rhapsody_prefect.body.calls import run_call
    outcome = run_call(fn, args, kwargs, task.get("capture"))   # never raises
    backend._report(attempt, outcome)          # the one result shape (core/outcome.py)

Modules: `calls` (calling a function, sync or async, to an `Outcome`; portable
exceptions), `commands` and `command_wait` (a task's command as a subprocess in
its own process group, to an `Outcome`), `capture` (a Prefect body's log lines
and prints, captured for replay on the flow side), `dask_worker`,
`process_worker`, `raptor_call`, `raptor_worker` (the concurrent backend's worker
processes, RADICAL-Pilot's raptor side), `prefect_context` (the Prefect context
a body gets, loaded only where Prefect already is).

Imports: the standard library, cloudpickle and `rhapsody_prefect.core`; never the
backends or the adapter. Prefect only in `prefect_context`, and that module only
when the body's process has Prefect loaded already.
"""
