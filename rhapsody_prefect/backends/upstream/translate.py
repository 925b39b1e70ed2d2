"""One attempt as an upstream RHAPSODY task, and the upstream result as an `Outcome`.

Each attempt becomes a fresh upstream task (a `rhapsody.api.ComputeTask`) with its own
uid, `<task uid>.attempt<n>`, so a retry never meets its predecessor's bookkeeping:

    task dict key                      upstream task
    executable, arguments              executable, arguments (shell, pre_exec, cwd and
                                       environment folded into a /bin/sh command line)
    function, args, kwargs, capture    function=run_payload, args=(pickled call,): the
                                       body runs as on this project's backends and
                                       returns its Outcome (logs included)
    backend_kwargs                     task_backend_specific_kwargs, as given
    ranks, cores_per_rank, gpus_per_rank,
    environment, pre_exec (radical_pilot)   RADICAL-Pilot TaskDescription keys

`check` refuses, naming the key, what an upstream backend has no way to do (see
docs/api.md, "Upstream RHAPSODY backends"); `outcome` reads back `return_value`,
`exit_code`, `stdout`, `stderr` and `exception` as upstream's backends leave them.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping
from typing import Any

from ...body.calls import RemoteError
from ...body.commands import command_argv
from ...body.raptor_call import decode_result, encode_payload, run_payload
from ...core.attempt import Attempt
from ...core.constants import TaskState
from ...core.exceptions import BackendError, ConfigurationError
from ...core.outcome import Outcome
from ...core.tasks import RESULT_KEYS, TaskDict, is_function_task, validate_task

#: Keys translated (or owned by the engine: timeout, retries); any other key must keep
#: its default.
HANDLED = frozenset({
    "uid", "name", "group", "executable", "arguments", "shell", "function", "args", "kwargs",
    "capture", "ranks", "cores_per_rank", "gpus_per_rank", "environment", "cwd", "pre_exec",
    "timeout", "retries", "retry_delay", "backend_kwargs",
})
RESOURCES = {"ranks": 1, "cores_per_rank": 1, "gpus_per_rank": 0}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.cache
def _defaults() -> dict[str, Any]:
    return validate_task({"executable": "true", "uid": "defaults"})


def upstream_uid(attempt: Attempt) -> str:
    return f"{attempt.uid}.attempt{attempt.number}"


def check(task: TaskDict, backend_type: str, radical: bool) -> None:
    """Refuse what the upstream backend cannot do with this task (ConfigurationError)."""
    where = f"the {backend_type} backend (upstream RHAPSODY)"
    defaults = _defaults()
    for key in sorted(set(task) - HANDLED - set(RESULT_KEYS)):
        if task[key] != defaults.get(key):
            raise ConfigurationError(
                f"Task key '{key}' = {task[key]!r}: {where} has no way to apply it",
                config_key=key)
    function = is_function_task(task)
    for key, default in RESOURCES.items():
        if task[key] != default and (function or not radical):
            raise ConfigurationError(
                f"Task key '{key}' = {task[key]!r}: {where} takes no per-task resource "
                f"request{' for a function' if radical else ''}; pass its own options in "
                "'backend_kwargs' (its task_backend_specific_kwargs)", config_key=key)
    if function:
        for key in ("cwd", "environment", "pre_exec"):
            if task[key]:
                raise ConfigurationError(
                    f"Task key '{key}': {where} cannot apply it to a function (it would "
                    "change the whole process the function shares)", config_key=key)
    for name in task["environment"]:
        if not _ENV_NAME.fullmatch(name):
            raise ConfigurationError(
                f"Task key 'environment': {name!r} is not a variable name", "environment")


def upstream_task(attempt: Attempt, radical: bool) -> Any:
    """The upstream ComputeTask that runs `attempt` (rhapsody-py is imported by now)."""
    from rhapsody.api import ComputeTask

    task = attempt.task
    options = dict(task["backend_kwargs"])
    if is_function_task(task):
        payload = encode_payload(task["function"], task["args"], task["kwargs"], None, None,
                                 task.get("capture"))
        return ComputeTask(function=run_payload, args=(payload,), kwargs={},
                           uid=upstream_uid(attempt), task_backend_specific_kwargs=options)
    argv = command_argv({**task, "ranks": 1, "pre_exec": [] if radical else task["pre_exec"]})
    if radical:
        pre_exec = list(task["pre_exec"])
        if task["cwd"]:
            pre_exec.insert(0, f"cd {shlex.quote(task['cwd'])}")
        options.update({key: task[key] for key in RESOURCES},
                       environment=dict(task["environment"]), pre_exec=pre_exec)
        # RP writes arguments into its launch script in double quotes, where its shell
        # would expand `$X`; one quoted command line keeps the argv literal.
        executable, arguments = shlex.join(argv), []
    else:
        executable, *arguments = _in_context(argv, task["cwd"], task["environment"])
    return ComputeTask(executable=executable, arguments=arguments, uid=upstream_uid(attempt),
                       task_backend_specific_kwargs=options)


def _in_context(argv: list[str], cwd: str | None, environment: Mapping[str, str]) -> list[str]:
    """`argv` run in `cwd` with `environment` added, where the upstream backend runs it
    (its own `cwd`/`env` options would replace the worker's whole environment)."""
    steps = [f"cd {shlex.quote(cwd)}"] if cwd else []
    steps += [f"export {name}={shlex.quote(value)}" for name, value in environment.items()]
    if not steps:
        return argv
    return ["/bin/sh", "-c", " && ".join([*steps, 'exec "$@"']), "rhapsody-upstream", *argv]


def outcome(state: str, result: Mapping[str, Any], function: bool, backend_type: str) -> Outcome:
    """The Outcome of an upstream task that ended in `state` (DONE, FAILED, CANCELED)."""
    if state == "CANCELED":
        return Outcome.canceled()
    done = state == "DONE"
    value = result.get("return_value")
    if function and done:
        ran = _decoded(value)
        # None: upstream never ran the payload (noop marks every task done, value True)
        return ran if ran is not None else Outcome.completed(value)
    exit_code = result.get("exit_code")
    if exit_code is None and done and not function:
        exit_code = 0  # Dragon leaves it out of a command that succeeded
    error = result.get("exception")
    if exit_code is None and isinstance(error, SystemExit) and isinstance(error.code, int):
        exit_code, error = error.code, None  # Dragon's way of saying a command exited
    stderr = _text(result.get("stderr"))
    if isinstance(error, str) and stderr and stderr.endswith(f", {error}"):
        stderr = stderr[: -len(error) - 2]  # RP appends its exception text to stderr
    if not isinstance(error, BaseException):
        if done or (not function and exit_code not in (None, 0)):
            error = None  # the exit code says it (RP adds 'RuntimeError("task failed")')
        elif error:
            error = RemoteError(str(error))
        else:
            error = BackendError(f"The {backend_type} backend reported FAILED without a "
                                 "reason", backend_type)
    return Outcome(TaskState.COMPLETED if done else TaskState.FAILED, exit_code=exit_code,
                   stdout=_text(result.get("stdout")), stderr=stderr, exception=error)


def _decoded(value: Any) -> Outcome | None:
    if not isinstance(value, str):
        return None
    try:
        return decode_result(value)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


__all__ = ["HANDLED", "check", "outcome", "upstream_task", "upstream_uid"]
