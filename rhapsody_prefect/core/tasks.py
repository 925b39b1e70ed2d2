"""Task dictionaries: the keys a task may have, and their validation.

A task is a plain dict. It runs either a command (`executable` + `arguments`) or a
Python callable (`function` + `args` + `kwargs`), with optional resources. The
backend writes its results back into the same dict (`state`, `exit_code`,
`stdout`, `stderr`, `return_value`, `exception`).

    >>> from rhapsody_prefect.core.tasks import validate_task
    >>> task = validate_task({"executable": "/bin/echo", "arguments": ["hi"]})
    >>> task["ranks"], task["retries"]
    (1, 0)

`validate_task` raises `ConfigurationError` naming the offending key before
anything runs.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .constants import Defaults
from .exceptions import ConfigurationError

TaskDict = dict[str, Any]
TaskList = list[TaskDict]
CallbackFunction = Callable[[TaskDict, str], None]

#: Keys a backend writes back into the task dict.
#: `logs`: what a function body with `capture` logged and printed (core.outcome.LogLine);
#: `still_running`: attempts that ended for the task (timeout, cancel) while their body
#: could not be stopped and went on running (a thread-mode function), by attempt number.
#: `stdout_file` / `stderr_file`: a stream longer than `output_limit`, kept whole there.
RESULT_KEYS = ("state", "exit_code", "stdout", "stderr", "return_value", "exception", "logs",
               "still_running", "stdout_file", "stderr_file", "staged_outputs")

#: Keys a user may set, with a short description used in error messages.
TASK_KEYS: dict[str, str] = {
    "uid": "unique task id (str); generated when absent",
    "name": "human readable name (str)",
    "group": "the group this task belongs to (str), for routing callbacks; set by the "
             "Prefect adapter",
    "executable": "command to run (str); excludes 'function'",
    "arguments": "command arguments (list of str)",
    "shell": "run 'executable' through /bin/sh (bool, default False)",
    "function": "Python callable, sync or async; excludes 'executable'",
    "args": "positional arguments of 'function' (list or tuple)",
    "kwargs": "keyword arguments of 'function' (dict)",
    "ranks": "number of processes (int >= 1)",
    "cores_per_rank": "cores per process (int >= 1)",
    "gpus_per_rank": "GPUs per process (number >= 0)",
    "environment": "extra environment variables (dict of str to str)",
    "cwd": "working directory (str or path)",
    "timeout": "seconds before the task is failed (number > 0 or None)",
    "retries": "backend-level retries (int >= 0)",
    "retry_delay": "seconds before each backend-level retry (number >= 0), or one per retry "
                   "(list of them, the last repeated)",
    "pre_exec": "shell commands run before the executable (list of str)",
    "backend_kwargs": "backend-specific options (dict)",
    "output_limit": "bytes of stdout and of stderr kept whole in the result (int >= 0, or "
                    "None for no limit; default 1 MiB); beyond it the head and tail, and the "
                    "whole stream in a file in 'output_dir'",
    "output_dir": "where a stream over 'output_limit' is kept (path; default "
                  "./.rhapsody/outputs where the command runs)",
    "input_files": "commands: files copied into the working directory first (list of paths, "
                   "or of (source, name) pairs)",
    "output_files": "commands: files copied back after exit 0 (list of names in the working "
                    "directory, to <cwd of the submitter>/<name>, or of (name, target) pairs)",
    "allow_missing_outputs": "an output file the command did not write is not an error "
                             "(bool, default False)",
    "output_exists": "an output target that exists: 'fail' the task before it runs "
                     "(default) or 'overwrite' it",
    "capture": "for a function: capture its run-logger records and prints into 'logs' "
               "(a body.capture.BodyContext; set by the Prefect adapter)",
}

_uid_counter = itertools.count(1)


def new_uid() -> str:
    """A process-wide unique task uid (`task.000001`, ...)."""
    return f"task.{next(_uid_counter):06d}.{os.getpid()}"


def _fail(key: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"Task key '{key}': {message}", config_key=key)


def _int_at_least(task: Mapping[str, Any], key: str, minimum: int, default: int) -> int:
    value = task.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, f"expected an int >= {minimum}, got {value!r}")
    return value


def _number_at_least(
    task: Mapping[str, Any], key: str, minimum: float, default: float | None
) -> float | None:
    value = task.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise _fail(key, f"expected a number >= {minimum}, got {value!r}")
    return value


def _str_list(task: Mapping[str, Any], key: str) -> list[str]:
    value = task.get(key) or []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _fail(key, f"expected a list of str, got {value!r}")
    items = []
    for item in value:
        if isinstance(item, (str, os.PathLike, int, float)) and not isinstance(item, bool):
            items.append(os.fspath(item) if isinstance(item, os.PathLike) else str(item))
        else:
            raise _fail(key, f"expected a list of str, got item {item!r}")
    return items


def validate_task(task: TaskDict) -> TaskDict:
    """Check `task` and fill in defaults, in place; return it.

    Raises:
        ConfigurationError: a key is unknown, missing, of the wrong type or out of range.
    """
    if not isinstance(task, dict):
        raise ConfigurationError(f"A task must be a dict, got {type(task).__name__}")
    unknown = sorted(set(task) - set(TASK_KEYS) - set(RESULT_KEYS))
    if unknown:
        raise _fail(unknown[0], f"unknown key; allowed keys are {sorted(TASK_KEYS)}")

    has_executable = task.get("executable") is not None
    has_function = task.get("function") is not None
    if has_executable == has_function:
        raise ConfigurationError(
            "A task needs exactly one of 'executable' (a command) or 'function' "
            f"(a Python callable); got {'both' if has_executable else 'neither'}",
            config_key="executable" if has_executable else "function",
        )

    uid = task.get("uid")
    if uid is None:
        task["uid"] = new_uid()
    elif not isinstance(uid, str) or not uid:
        raise _fail("uid", f"expected a non-empty str, got {uid!r}")
    name = task.get("name")
    if name is not None and not isinstance(name, str):
        raise _fail("name", f"expected a str, got {name!r}")

    if has_executable:
        executable = task["executable"]
        if isinstance(executable, os.PathLike):
            executable = os.fspath(executable)
        if not isinstance(executable, str) or not executable:
            raise _fail("executable", f"expected a non-empty str, got {executable!r}")
        task["executable"] = executable
        task["arguments"] = _str_list(task, "arguments")
        if not isinstance(task.setdefault("shell", False), bool):
            raise _fail("shell", f"expected a bool, got {task['shell']!r}")
        for key in ("args", "kwargs", "capture"):
            if task.get(key):
                raise _fail(key, "only allowed with 'function', not with 'executable'")
    else:
        if not callable(task["function"]):
            raise _fail("function", f"expected a callable, got {task['function']!r}")
        args = task.get("args") or ()
        if not isinstance(args, (list, tuple)):
            raise _fail("args", f"expected a list or tuple, got {args!r}")
        kwargs = task.get("kwargs") or {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise _fail("kwargs", f"expected a dict with str keys, got {kwargs!r}")
        task["args"], task["kwargs"] = tuple(args), kwargs
        for key in ("arguments", "shell", "input_files", "output_files"):
            if task.get(key):
                raise _fail(key, "only allowed with 'executable', not with 'function' (a "
                                 "Python function reads and writes its paths itself)")

    for key, check in _FIELD_CHECKS.items():
        task[key] = check(task)
    executable = task.get("executable")
    if has_executable and not task["shell"] and os.sep in executable and not os.path.isabs(
            executable):
        # `./md-sim`: the submitter's file wherever the command runs (a fresh working
        # directory, a pilot's sandbox); with `cwd`, relative to that.
        task["executable"] = os.path.abspath(os.path.join(task["cwd"] or "", executable))
    return task


def _timeout(task: Mapping[str, Any]) -> float | None:
    timeout = _number_at_least(task, "timeout", 0, Defaults.TIMEOUT)
    if timeout == 0:
        raise _fail("timeout", "expected a number > 0 or None, got 0")
    return timeout


def _retry_delay(task: Mapping[str, Any]) -> float | list[float]:
    delays = task.get("retry_delay")
    if not isinstance(delays, (list, tuple)):
        delay = _number_at_least(task, "retry_delay", 0, Defaults.RETRY_DELAY)
        assert delay is not None  # the default is a number
        return delay
    if not all(isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0
               for d in delays):
        raise _fail("retry_delay", f"expected numbers >= 0, got {delays!r}")
    return [float(d) for d in delays]


def retry_delay(task: Mapping[str, Any], retry: int) -> float:
    """Seconds before retry `retry` (1, 2, ...) of a validated task (Prefect's rule)."""
    delays = task["retry_delay"]
    if isinstance(delays, list):
        return delays[min(retry, len(delays)) - 1] if delays else 0.0
    return float(delays)


def _environment(task: Mapping[str, Any]) -> dict[str, str]:
    environment = task.get("environment") or {}
    if not isinstance(environment, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
    ):
        raise _fail("environment", f"expected a dict of str to str, got {environment!r}")
    return environment


def _file_entries(task: Mapping[str, Any], key: str) -> list[tuple[str, str]]:
    value = task.get(key) or []
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, (list, tuple)):
        raise _fail(key, f"expected a list of paths or of pairs, got {value!r}")
    pairs = []
    for entry in value:
        if isinstance(entry, (str, os.PathLike)):
            path = os.fspath(entry)
            pairs.append((path, os.path.basename(path.rstrip("/"))))
        elif (isinstance(entry, (list, tuple)) and len(entry) == 2
              and all(isinstance(part, (str, os.PathLike)) for part in entry)):
            pairs.append((os.fspath(entry[0]), os.fspath(entry[1])))
        else:
            raise _fail(key, f"expected a path or a (str, str) pair, got {entry!r}")
    return pairs


def _file_pairs(task: Mapping[str, Any], key: str, name_first: bool) -> list[tuple[str, str]]:
    """`input_files`: (absolute source, name); `output_files`: (name, absolute target).
    Names stay inside the command's working directory; paths are absolute here, on the
    submitting side."""
    pairs = []
    for first, second in _file_entries(task, key):
        name, path = (first, second) if name_first else (second, first)
        if not name or os.path.isabs(name) or ".." in Path(name).parts:
            raise _fail(key, f"a name inside the working directory, got {name!r}")
        path = os.path.abspath(path)
        pairs.append((name, path) if name_first else (path, name))
    return pairs


def _bool(task: Mapping[str, Any], key: str) -> bool:
    value = task.get(key, False)
    if not isinstance(value, bool):
        raise _fail(key, f"expected a bool, got {value!r}")
    return value


def _choice(task: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = task.get(key) or allowed[0]
    if value not in allowed:
        raise _fail(key, f"expected one of {list(allowed)}, got {value!r}")
    return str(value)


def _output_limit(task: Mapping[str, Any]) -> int | None:
    if "output_limit" in task and task["output_limit"] is None:
        return None
    return _int_at_least(task, "output_limit", 0, Defaults.OUTPUT_LIMIT)


def _path_or_none(task: Mapping[str, Any], key: str) -> str | None:
    value = task.get(key)
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _fail(key, f"expected a str or path, got {value!r}")
    return os.fspath(value)


def _backend_kwargs(task: Mapping[str, Any]) -> dict[str, Any]:
    backend_kwargs = task.get("backend_kwargs") or {}
    if not isinstance(backend_kwargs, dict):
        raise _fail("backend_kwargs", f"expected a dict, got {backend_kwargs!r}")
    return backend_kwargs


#: Each optional key's check: returns the value with its default filled in.
_FIELD_CHECKS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "ranks": lambda task: _int_at_least(task, "ranks", 1, 1),
    "cores_per_rank": lambda task: _int_at_least(task, "cores_per_rank", 1, 1),
    "gpus_per_rank": lambda task: _number_at_least(task, "gpus_per_rank", 0, 0),
    "timeout": _timeout,
    "retries": lambda task: _int_at_least(task, "retries", 0, Defaults.RETRY_ATTEMPTS),
    "retry_delay": _retry_delay,
    "pre_exec": lambda task: _str_list(task, "pre_exec"),
    "environment": _environment,
    "cwd": lambda task: _path_or_none(task, "cwd"),
    "backend_kwargs": _backend_kwargs,
    "output_limit": lambda task: _output_limit(task),
    "output_dir": lambda task: _path_or_none(task, "output_dir"),
    "input_files": lambda task: _file_pairs(task, "input_files", name_first=False),
    "output_files": lambda task: _file_pairs(task, "output_files", name_first=True),
    "allow_missing_outputs": lambda task: _bool(task, "allow_missing_outputs"),
    "output_exists": lambda task: _choice(task, "output_exists", ("fail", "overwrite")),
}

#: The resource model: what a task body may request, on any backend (`task_resources`).
RESOURCE_KEYS = (
    "ranks", "cores_per_rank", "gpus_per_rank", "environment", "cwd", "pre_exec",
    "backend_kwargs", "input_files", "output_files", "allow_missing_outputs", "output_exists",
    "output_limit", "output_dir",
)


def validate_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """Check resource requests (a subset of RESOURCE_KEYS) with the task key checks.

        >>> validate_resources({"cores_per_rank": 2})
        {'cores_per_rank': 2}

    Raises:
        ConfigurationError: an unknown key or a bad value, naming it.
    """
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise ConfigurationError(
            f"Unknown resource key {unknown[0]!r}; allowed: {list(RESOURCE_KEYS)}",
            config_key=unknown[0],
        )
    return {key: _FIELD_CHECKS[key](resources) for key in resources}


def task_slots(task: Mapping[str, Any]) -> int:
    """Cores a task occupies: `ranks * cores_per_rank`."""
    return int(task.get("ranks", 1)) * int(task.get("cores_per_rank", 1))


def is_function_task(task: Mapping[str, Any]) -> bool:
    return task.get("function") is not None


__all__ = [
    "RESOURCE_KEYS",
    "RESULT_KEYS",
    "TASK_KEYS",
    "CallbackFunction",
    "TaskDict",
    "TaskList",
    "is_function_task",
    "new_uid",
    "retry_delay",
    "task_slots",
    "validate_resources",
    "validate_task",
]
