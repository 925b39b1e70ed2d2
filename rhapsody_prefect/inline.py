"""Nested task submission inside a task body that runs on a backend.

A body runs on a backend worker, away from the flow's engine, so
`other_task.submit()` inside it cannot reach the flow's task runner. Instead the
nested task runs *inline*, in the body's own process, and its future is
already resolved:

    @task
    def parent():
        return child.submit(2).result()   # child's fn runs here, inside parent's body

Nested calls are not recorded as separate task runs in the Prefect API (the
parent's task run, its logs and its result are). Used by `remote.run_body`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable
from typing import Any

from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.states import Completed, Failed
from prefect.task_runners import TaskRunner
from prefect.utilities.callables import parameters_to_args_kwargs
from prefect.utilities.collections import visit_collection

from .calls import call_function


def _resolve(value: Any) -> Any:
    return value.result() if isinstance(value, PrefectFuture) else value


class InlineTaskRunner(TaskRunner[PrefectConcurrentFuture[Any]]):
    """Runs nested submissions at once, in the calling thread."""

    def duplicate(self) -> InlineTaskRunner:
        return type(self)()

    def submit(
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: Any = None,
    ) -> PrefectConcurrentFuture[Any]:
        from uuid import uuid4

        resolved = visit_collection(parameters, visit_fn=_resolve, return_data=True, max_depth=-1)
        args, kwargs = parameters_to_args_kwargs(task.fn, resolved)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(Completed(data=call_function(task.fn, args, kwargs)))
        except Exception as error:
            future.set_result(Failed(data=error, message=f"{type(error).__name__}: {error}"))
        return PrefectConcurrentFuture(task_run_id=uuid4(), wrapped_future=future)


__all__ = ["InlineTaskRunner"]
