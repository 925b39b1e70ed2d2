"""Prefect tasks that run commands, and resource requests for task bodies.

    from rhapsody_prefect import executable_task, task_resources

    @executable_task(retries=2)
    def simulate(seed: int, out: str) -> list[str]:
        return ["./md-sim", "--seed", str(seed), "--out", out]

    @executable_task
    def mpi_run(n: int) -> dict:
        return {"executable": "./solver", "arguments": [str(n)], "ranks": 4,
                "cores_per_rank": 2, "environment": {"OMP_NUM_THREADS": "2"}}

    @task
    @task_resources(cores_per_rank=4, gpus_per_rank=1, backend="gpu")
    def analyse(path: str) -> float: ...

The decorated function runs in the flow process and only *describes* the
command: an argv list, a shell string, or a task dict with resources. Under a
`RhapsodyRunner` the command runs on the backend; under any other task runner
it runs as a local subprocess. Either way the task returns an
`ExecutableResult` (`exit_code`, `stdout`, `stderr`), and a non-zero exit fails
the task (Prefect retries apply) with the exit code and the stderr tail. A
`"backend"` key in the dict, or `task_resources(backend=)`, picks one of the
backends of a `RhapsodyRunner(backends=...)` (adapter/routing.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

from prefect import Task, task

from ..body.commands import run_command
from ..core.exceptions import ConfigurationError, TaskError
from ..core.outcome import tail
from ..core.tasks import RESOURCE_KEYS, TaskDict, validate_resources, validate_task

COMMAND_ATTRIBUTE = "__rhapsody_command__"
RESOURCES_ATTRIBUTE = "__rhapsody_resources__"

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class ExecutableResult:
    """The outcome of a finished command.

    `stdout` / `stderr` hold the whole stream up to the task's `output_limit`, else its
    head and tail; `stdout_file` / `stderr_file` then name the file with all of it.
    `outputs`: where the task's `output_files` were copied.
    """

    exit_code: int
    stdout: str
    stderr: str
    stdout_file: str | None = None
    stderr_file: str | None = None
    outputs: tuple[str, ...] = ()

    @classmethod
    def of(cls, finished: Mapping[str, Any]) -> ExecutableResult:
        """From a finished task dict or an `Outcome`'s result fields."""
        return cls(finished["exit_code"], finished.get("stdout") or "",
                   finished.get("stderr") or "", finished.get("stdout_file"),
                   finished.get("stderr_file"), tuple(finished.get("staged_outputs") or ()))

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ExecutableFailed(TaskError):
    """A command exited non-zero; message has the exit code and the stderr tail."""

    @classmethod
    def from_result(
        cls, uid: str, argv: Sequence[str], result: ExecutableResult
    ) -> ExecutableFailed:
        stderr = tail(result.stderr)
        message = f"Command {list(argv)!r} exited with code {result.exit_code}"
        if result.exit_code == 127:
            message = (f"Command {list(argv)!r} was not found (exit code 127, as a shell "
                       "reports it)")
        if stderr.strip():
            message += f"\n--- stderr (tail) ---\n{stderr.rstrip()}"
        return cls(
            message, task_uid=uid, exit_code=result.exit_code,
            details={"stderr": stderr, "stdout": tail(result.stdout)},
        )


def command_spec(described: Any, resources: dict[str, Any] | None = None) -> TaskDict:
    """Turn what an executable_task function returned into a task dict (not yet validated:
    the backend's `submit_tasks`, or a local run, validates it once)."""
    if isinstance(described, str):
        spec: TaskDict = {"executable": described, "shell": True}
    elif isinstance(described, (list, tuple)) and described:
        spec = {"executable": described[0], "arguments": list(described[1:])}
    elif isinstance(described, dict):
        spec = dict(described)
        if "function" in spec:
            raise ConfigurationError(
                "An executable_task must describe a command, not a 'function'",
                config_key="function",
            )
    else:
        raise ConfigurationError(
            "An executable_task function must return an argv list, a shell command string "
            f"or a task dict with 'executable'; got {described!r}",
            config_key="executable",
        )
    for key, value in (resources or {}).items():
        spec.setdefault(key, value)
    return spec


def _run_locally(spec: TaskDict) -> ExecutableResult:
    completed = run_command(spec, timeout=spec.get("timeout"))
    if completed.exception is not None:  # a missing input file, an output not written
        raise completed.exception
    return ExecutableResult.of(completed.results())


def check_result(spec: TaskDict, result: ExecutableResult) -> ExecutableResult:
    if not result.ok:
        argv = [spec["executable"], *spec.get("arguments", [])]
        raise ExecutableFailed.from_result(spec["uid"], argv, result)
    return result


@overload
def executable_task(fn: Callable[..., Any], /) -> Task[..., ExecutableResult]: ...


@overload
def executable_task(
    fn: None = None, /, **task_options: Any
) -> Callable[[Callable[..., Any]], Task[..., ExecutableResult]]: ...


def executable_task(fn: Callable[..., Any] | None = None, /, **task_options: Any) -> Any:
    """Make a Prefect task that runs the command `fn` describes (see module docs).

    `task_options` are Prefect's (`retries`, `retry_delay_seconds`, `timeout_seconds`,
    `tags`, `cache_policy`, ...).
    """
    if fn is None:
        return functools.partial(executable_task, **task_options)

    @functools.wraps(fn)
    def run_command_task(*args: Any, **kwargs: Any) -> ExecutableResult:
        spec = command_spec(fn(*args, **kwargs), resources_of(run_command_task))
        spec.pop("backend", None)  # a route; here the command runs locally, nowhere else
        spec = validate_task(spec)
        return check_result(spec, _run_locally(spec))

    setattr(run_command_task, COMMAND_ATTRIBUTE, fn)
    return task(run_command_task, **task_options)


def task_resources(**resources: Any) -> Callable[[F], F]:
    """Ask the backend for resources for a task body (cores, GPUs, ranks, environment).

    Apply under `@task` (on the function) or over it (on the Task). `backend="NAME"`
    sends the body to that backend of a `RhapsodyRunner(backends=...)`
    (adapter/routing.py); it is a route, not a task key.
    """
    unknown = sorted(set(resources) - {*RESOURCE_KEYS, "backend"})
    if unknown:
        raise ConfigurationError(
            f"Unknown resource key {unknown[0]!r}; allowed: {[*RESOURCE_KEYS, 'backend']}",
            config_key=unknown[0],
        )
    route = resources.pop("backend", None)
    if route is not None and (not isinstance(route, str) or not route):
        raise ConfigurationError(
            f"task_resources(backend=...) needs a backend name (str), got {route!r}", "backend")
    checked = validate_resources(resources)
    if route is not None:
        checked["backend"] = route

    def apply(target: F) -> F:
        fn = target.fn if isinstance(target, Task) else target
        merged = {**getattr(fn, RESOURCES_ATTRIBUTE, {}), **checked}
        setattr(fn, RESOURCES_ATTRIBUTE, merged)
        return target

    return apply


def resources_of(fn: Callable[..., Any]) -> dict[str, Any]:
    return dict(getattr(fn, RESOURCES_ATTRIBUTE, {}))


def command_builder_of(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    return getattr(fn, COMMAND_ATTRIBUTE, None)


__all__ = [
    "ExecutableFailed",
    "ExecutableResult",
    "command_spec",
    "executable_task",
    "task_resources",
]
