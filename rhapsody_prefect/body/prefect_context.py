"""Prefect's context for a body that runs away from the flow's engine.

Imported only in a body's process that already has Prefect loaded (see
`capture._task_run_context`): it gives the body a minimal task-run context, so
`get_run_logger()` works, and runs nested `other_task.submit()` *inline*, in the
body's own process, with its future already resolved:

    with task_run_context({"id": ..., "name": "t-1"}, "t", log_prints=False):
        get_run_logger().info("hi")           # captured, replayed on the flow side

    @task
    def parent():
        return child.submit(2).result()       # child's fn runs here, inside parent's body

Nested calls are not recorded as separate task runs in the Prefect API (the
parent's task run, its logs and its result are).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext, TaskRunContext
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


@contextlib.contextmanager
def task_run_context(
    task_run: dict[str, Any], task_name: str, log_prints: bool
) -> Iterator[None]:
    """A minimal TaskRunContext (and FlowRunContext) around a body."""
    if TaskRunContext.get() is not None:  # already inside a real run context
        yield
        return
    flow_context, task_context = _contexts(task_name, log_prints, *sorted(task_run.items()))
    # The contexts are built once per task run (an ensemble's members share them) and
    # only read by the body: set as context variables, not entered (entering a context
    # model sets a private attribute on the shared instance).
    flow_token = FlowRunContext.__var__.set(flow_context) if FlowRunContext.get() is None \
        else None
    task_token = TaskRunContext.__var__.set(task_context)
    try:
        yield
    finally:
        TaskRunContext.__var__.reset(task_token)
        if flow_token is not None:
            FlowRunContext.__var__.reset(flow_token)


@functools.lru_cache(maxsize=32)
def _contexts(task_name: str, log_prints: bool, *task_run: tuple[str, Any]) -> tuple[Any, Any]:
    """The (FlowRunContext, TaskRunContext) a body of this task run sees."""
    flow_context = _construct(FlowRunContext, task_runner=InlineTaskRunner())
    task_context = _construct(
        TaskRunContext,
        task=_TaskName(task_name),
        task_run=_construct(TaskRun, **dict(task_run)),
        log_prints=log_prints,
        parameters={},
    )
    return flow_context, task_context


def _construct(model: Any, **values: Any) -> Any:
    """`model.model_construct(**values)`, with default factories called here.

    pydantic's `model_construct` runs `inspect.signature` on the default factory of
    every field it fills in, on every call; for a builtin factory (`list`) that builds
    a class and leaves reference cycles behind. Per task body this cost about 1 KB of
    cyclic garbage and a dozen signature parses (flow-side RSS grew 100 KB per task).
    """
    fields_set = set(values)
    for name, factory in _default_factories(model):
        if name not in values:
            values[name] = factory()
    return model.model_construct(_fields_set=fields_set, **values)


@functools.cache
def _default_factories(model: Any) -> tuple[tuple[str, Callable[[], Any]], ...]:
    """The model's fields filled by a default factory that takes no arguments."""
    return tuple(
        (name, field.default_factory)
        for name, field in model.model_fields.items()
        if field.default_factory is not None and not field.default_factory_takes_validated_data
    )


@dataclasses.dataclass(frozen=True)
class _TaskName:
    name: str


__all__ = ["InlineTaskRunner", "task_run_context"]
