"""What runs where a task body runs: a thread, a worker process, a Dask worker, a raptor worker.

    from rhapsody_prefect.body.envelope import Envelope
    envelope = Envelope.call(fn, args, kwargs)      # never raises; travels back as data
    state, fields = envelope.outcome()              # on the client: the engine's result

Modules: `calls` (calling a function, sync or async; portable exceptions),
`commands` (a task's command as a subprocess in its own process group),
`envelope` (the one result envelope every backend uses), `capture` (a Prefect
body's log lines and prints, captured for replay on the flow side),
`process_worker`, `raptor_call`, `raptor_worker` (the concurrent backend's worker
processes, RADICAL-Pilot's raptor side), `prefect_context` (the Prefect context
a body gets, loaded only where Prefect already is).

Imports: the standard library, cloudpickle and `rhapsody_prefect.core`; never the
backends or the adapter. Prefect only in `prefect_context`, and that module only
when the body's process has Prefect loaded already.
"""
