"""One builder for the backend tasks of a Prefect task run's bodies (plain runs and ensembles).

    bodies = BodySpec.here(task, fn)        # inside the task run (its context, its logger)
    spec = bodies.build(task_run.run_count, args, kwargs)   # a plain task run's attempt
    spec = bodies.build(7, args, kwargs)                    # or member 7 of an ensemble
    spec["uid"], spec["group"], spec["name"]
    # ('scale-a1b.9f3c2e1d.7', 'scale-a1b.9f3c2e1d', 'scale-a1b')

A body is the command an `executable_task` describes or the task's function with
its log `capture` context, plus the resources `task_resources` asked for and any
task keys the caller adds (an ensemble's retries and timeout). A `backend` asked
for with `task_resources` is kept apart as `route`; a command dict's own
`"backend"` stays in the built spec for the router to take out. Every backend task
of one task run has the same `group`, the task run's key (its name and the end of
its id): the dispatcher routes the callbacks of a group's tasks by it; `name`
stays for display. The uid is `<group>.<ordinal>`: the Prefect attempt of a plain
task run (its `run_count`), the member's index in an ensemble.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.tasks import Task
from prefect.utilities.engine import should_log_prints

from ..body.capture import BodyContext
from ..core.tasks import TaskDict
from .executable import command_builder_of, command_spec, resources_of


def group_key(task_run: TaskRun) -> str:
    """The key of a task run's backend tasks: its name and the last 8 hex digits of its id."""
    return f"{task_run.name}.{task_run.id.hex[-8:]}"


class BodySpec:
    """How the bodies of one task run become backend task dicts (not validated yet)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        task_run: TaskRun,
        task_name: str,
        log_prints: bool,
        log_level: int,
        keys: Mapping[str, Any] | None = None,
    ) -> None:
        self.fn = fn
        self.group = group_key(task_run)
        self.name = task_run.name
        self.command = command_builder_of(fn)
        self.base: TaskDict = {**resources_of(fn), **(keys or {})}
        #: `task_resources(backend=)`: a route (adapter/routing.py), not a task key.
        self.route: str | None = self.base.pop("backend", None)
        self.capture: BodyContext | None = None
        if self.command is None:
            self.capture = BodyContext(
                task_run=task_run.model_dump(
                    mode="json", include={"id", "name", "flow_run_id", "task_key"}),
                task_name=task_name, log_prints=log_prints, log_level=log_level,
            )

    @classmethod
    def here(
        cls, task: Task[..., Any], fn: Callable[..., Any], keys: Mapping[str, Any] | None = None
    ) -> BodySpec:
        """The builder for bodies of `task` (running `fn`) inside the current task run.

        `log_prints` is Prefect's rule (`should_log_prints`): the task's, else the flow's.
        """
        run_context = TaskRunContext.get()
        assert run_context is not None and run_context.task_run is not None
        return cls(fn, run_context.task_run, task.name, should_log_prints(task),
                   get_run_logger().logger.getEffectiveLevel(), keys)

    def build(self, ordinal: int, args: Any, kwargs: dict[str, Any], **keys: Any) -> TaskDict:
        """The backend task of one body; `keys` are this body's own (e.g. drawn delays)."""
        base = {**self.base, **keys} if keys else self.base
        if self.command is not None:
            spec = command_spec(self.command(*args, **kwargs), base)
        else:
            spec = dict(base, function=self.fn, args=args, kwargs=kwargs, capture=self.capture)
        spec["uid"] = f"{self.group}.{ordinal}"
        spec["group"] = self.group
        spec["name"] = self.name
        return spec


__all__ = ["BodySpec", "group_key"]
