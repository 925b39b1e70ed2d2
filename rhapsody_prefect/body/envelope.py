"""One result envelope for every backend: how a body's end travels back to the client.

Wherever a body runs (a thread, a worker process, a Dask worker, a raptor
worker), what it produced is wrapped in an `Envelope`, which never raises on the
worker side and turns into the engine's state and result fields on the client:

    >>> from rhapsody_prefect.body.envelope import Envelope
    >>> envelope = Envelope.call(max, (1, 2), {})
    >>> envelope.kind, envelope.value
    ('value', 2)
    >>> envelope.outcome()
    (<TaskState.COMPLETED: 'COMPLETED'>, {'return_value': 2})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from ..core.constants import TaskState
from .calls import call_function, portable_exception
from .commands import CommandResult

EnvelopeKind = Literal["value", "error", "command", "stopped"]


@dataclasses.dataclass(frozen=True)
class Envelope:
    """`value`: a return value; `error`: an exception (portable); `command`: a
    CommandResult; `stopped`: the body was cancelled where it ran."""

    kind: EnvelopeKind
    value: Any = None

    @classmethod
    def call(
        cls, fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Envelope:
        """Call `fn`; never raises (a BaseException, SystemExit included, is the result)."""
        try:
            return cls("value", call_function(fn, args, kwargs))
        except BaseException as error:
            return cls.failure(error)

    @classmethod
    def failure(cls, error: BaseException) -> Envelope:
        return cls("error", portable_exception(error))

    @classmethod
    def command(cls, result: CommandResult) -> Envelope:
        return cls("command", result)

    @classmethod
    def stopped(cls) -> Envelope:
        return cls("stopped")

    def outcome(self) -> tuple[TaskState, dict[str, Any]]:
        """The engine's (state, result fields) for this envelope."""
        if self.kind == "value":
            return TaskState.COMPLETED, {"return_value": self.value}
        if self.kind == "command":
            result: CommandResult = self.value
            state = TaskState.COMPLETED if result.exit_code == 0 else TaskState.FAILED
            return state, dataclasses.asdict(result)
        if self.kind == "stopped":
            return TaskState.CANCELED, {}
        return TaskState.FAILED, {"exception": self.value}


__all__ = ["Envelope", "EnvelopeKind"]
