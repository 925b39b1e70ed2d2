"""Task runs start a few per loop iteration, so that bodies reach the backend while others start.

    pacer = StartPacer(per_turn=4)

    async def run_one_task_run() -> State:
        await pacer.turn()        # at once, or in a later iteration of the loop, in order
        return await run_task_async(...)

Prefect's engine takes a task run from its start to the call of its fn without
giving the event loop back: creating the task run, its transaction and cache
key, the Running state and its events are milliseconds of CPU of synchronous
code between awaits that do not suspend. Hundreds of task runs submitted at
once would all take that step in one loop iteration, and nothing else on the
loop (launching the bodies already built, state reports, logs) would run until
the last of them had: 200 task runs on a Slurm pilot left the pilot idle for
13 s while they started (bench/slurm.py). With `turn()` at most `per_turn`
task runs start per iteration; the others wait in order of arrival.

Nothing is held once a task run has started, so an engine that waits (for a
tag's concurrency slot, a retry delay) never delays the others.
"""

from __future__ import annotations

import asyncio
from collections import deque


class StartPacer:
    """At most `per_turn` callers of `turn()` pass per event-loop iteration, first come first."""

    def __init__(self, per_turn: int = 4) -> None:
        if isinstance(per_turn, bool) or not isinstance(per_turn, int) or per_turn < 1:
            raise ValueError(f"per_turn must be an int >= 1, got {per_turn!r}")
        self.per_turn = per_turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._passed = 0  # callers let through since the last new turn
        self._turn_scheduled = False

    @property
    def waiting(self) -> int:
        """Callers waiting for a turn."""
        return sum(1 for waiter in self._waiting if not waiter.done())

    async def turn(self) -> None:
        """Return once this caller may start (on the loop's thread only)."""
        if self._passed < self.per_turn and not self._waiting:
            self._passed += 1
            self._schedule_turn()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule_turn()
        await waiter  # cancelled: the new turn skips it

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._new_turn)

    def _new_turn(self) -> None:
        # call_soon: runs in the next iteration, after everything already ready.
        self._turn_scheduled = False
        self._passed = 0
        while self._waiting and self._passed < self.per_turn:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._passed += 1
        if self._waiting or self._passed:
            self._schedule_turn()


__all__ = ["StartPacer"]
