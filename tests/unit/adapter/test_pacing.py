"""StartPacer (adapter/pacing.py): unit tests of its own logic, and its effect in a flow.

The unit tests count event-loop iterations with a ticker (a callback that
reschedules itself once per iteration). The flow test runs 200 task runs on
the real `concurrent` backend and a real Prefect API and checks that bodies
run while later task runs are still starting.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from prefect import flow, task

from rhapsody_prefect import RhapsodyRunner
from rhapsody_prefect.adapter.pacing import StartPacer


class Ticker:
    """Counts loop iterations: one self-rescheduling callback per iteration."""

    def __init__(self) -> None:
        self.tick = 0
        self._running = True
        asyncio.get_running_loop().call_soon(self._step)

    def _step(self) -> None:
        self.tick += 1
        if self._running:
            asyncio.get_running_loop().call_soon(self._step)

    def stop(self) -> None:
        self._running = False


@pytest.mark.parametrize("per_turn", [1, 3, 4])
def test_at_most_per_turn_pass_per_iteration_in_order(per_turn: int) -> None:
    async def main() -> list[tuple[int, int]]:
        pacer = StartPacer(per_turn)
        ticker = Ticker()
        passed: list[tuple[int, int]] = []

        async def one(i: int) -> None:
            await pacer.turn()
            passed.append((ticker.tick, i))

        await asyncio.gather(*(one(i) for i in range(20)))
        ticker.stop()
        assert pacer.waiting == 0
        return passed

    passed = asyncio.run(main())
    assert [i for _, i in passed] == list(range(20))  # first come, first served
    per_tick: dict[int, int] = {}
    for tick, _ in passed:
        per_tick[tick] = per_tick.get(tick, 0) + 1
    assert max(per_tick.values()) == per_turn
    assert len(per_tick) >= 20 // per_turn


def _synchronous_start_phase() -> None:
    time.sleep(0.002)  # an engine's start: CPU work between awaits that do not suspend


def test_a_timer_runs_between_slow_starts() -> None:
    """What the pacer is for: synchronous start work does not starve the loop."""

    async def main() -> tuple[int, int]:
        pacer = StartPacer(2)
        started = 0
        fired_after = -1

        def timer() -> None:
            nonlocal fired_after
            fired_after = started

        async def slow_start() -> None:
            nonlocal started
            await pacer.turn()
            _synchronous_start_phase()
            started += 1

        asyncio.get_running_loop().call_later(0.01, timer)
        await asyncio.gather(*(slow_start() for _ in range(40)))
        return fired_after, started

    fired_after, started = asyncio.run(main())
    assert started == 40
    assert 0 < fired_after < 40, f"the timer fired after {fired_after} of 40 starts"


def test_a_cancelled_waiter_does_not_stall_the_rest() -> None:
    async def main() -> list[int]:
        pacer = StartPacer(1)
        done: list[int] = []

        async def one(i: int) -> None:
            await pacer.turn()
            done.append(i)

        tasks = [asyncio.ensure_future(one(i)) for i in range(5)]
        await asyncio.sleep(0)  # all five have asked; one passed
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return done

    assert asyncio.run(main()) == [0, 1, 3, 4]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_per_turn_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="per_turn must be an int >= 1"):
        StartPacer(bad)  # type: ignore[arg-type]


RUNNING_AT: list[float] = []


@task(on_running=[lambda task, task_run, state: RUNNING_AT.append(time.time())])
def stamp(i: int) -> float:
    return time.time()


def test_bodies_run_while_later_task_runs_start() -> None:
    """200 task runs submitted at once: the first bodies run before the last task run
    enters Running (its `on_running` hook, in the flow process). Without pacing, every
    engine's start phase ran in one loop iteration, and no body was launched until the
    last task run had started."""
    RUNNING_AT.clear()

    @flow(task_runner=RhapsodyRunner("concurrent", max_workers=2, transition_log_level=None,
                                     artifacts=False))
    def burst() -> list[float]:
        futures = [stamp.submit(i) for i in range(200)]
        return [future.result() for future in futures]

    ran = burst()
    assert len(RUNNING_AT) == 200
    assert min(ran) < max(RUNNING_AT), (
        f"the first body ran {min(ran) - min(RUNNING_AT):.3f} s after the first task run "
        f"started, the last task run {max(RUNNING_AT) - min(RUNNING_AT):.3f} s after it"
    )


def test_a_runner_entered_again_starts_its_task_runs() -> None:
    """A second entry runs on a new loop thread; its task runs start too (the pacer
    holds no loop, and each entry gets a fresh one)."""
    runner = RhapsodyRunner("concurrent", max_workers=2, transition_log_level=None,
                            artifacts=False)
    for _ in range(2):
        with runner:
            futures = [runner.submit(stamp, {"i": i}) for i in range(10)]
            for future in futures:
                future.wait(timeout=60)
            assert all(future.state.is_completed() for future in futures)
