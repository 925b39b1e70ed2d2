"""Experimental variants of RhapsodyRunner, for profiling only (never used by the table).

`ClientReuseRunner` is the fix proposed in docs/benchmarks.md: open one Prefect
`AsyncClientContext` on the runner's loop thread and make every task run's engine
find it. Without it, `AsyncClientContext.get_or_create()` in Prefect's
`AsyncTaskRunEngine.initialize_run` sees the flow's client bound to another loop
and builds a new `PrefectClient` (httpx client + `ssl.create_default_context()`,
which loads the CA bundle) for every task run.
"""

from __future__ import annotations

from typing import Any

from prefect.context import AsyncClientContext
from prefect.states import State

from rhapsody_prefect.runner import RhapsodyRunner


async def _open_client_context() -> AsyncClientContext:
    context = AsyncClientContext()
    await context.client.__aenter__()
    return context


class ClientReuseRunner(RhapsodyRunner):
    """RhapsodyRunner with one Prefect API client per flow run (on the loop thread)."""

    _client_context: AsyncClientContext | None = None

    def __enter__(self) -> ClientReuseRunner:
        super().__enter__()
        assert self._loop_thread is not None
        self._client_context = self._loop_thread.call(_open_client_context())
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        context, loop_thread = self._client_context, self._loop_thread
        self._client_context = None
        try:
            # wait for the task runs first (super().__exit__ does), but the client must
            # close on the loop before the loop stops: close it from a done-callback-free
            # point, i.e. before calling super, after in-flight runs finished.
            import concurrent.futures

            concurrent.futures.wait(list(self._inflight))
            if context is not None and loop_thread is not None:
                loop_thread.call(context.client.__aexit__(None, None, None))
        finally:
            super().__exit__(exc_type, exc_value, traceback)

    async def _run_task(self, *args: Any, **kwargs: Any) -> State[Any]:
        if self._client_context is not None:
            # Each task run is its own asyncio task with its own copied context:
            # setting the var here affects this task run only.
            AsyncClientContext.__var__.set(self._client_context)
        return await super()._run_task(*args, **kwargs)
