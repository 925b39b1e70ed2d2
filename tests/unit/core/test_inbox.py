"""Unit tests of the shared engine's Inbox (core/scheduling.py): calls from other threads.

Real threads and a real event loop; the claims: every call runs on the loop, in the
order each thread posted them, none is lost when many threads post at once, a burst
costs few wake-ups of the loop, and a closed loop is refused.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from rhapsody_prefect.core.scheduling import Inbox


def test_calls_from_many_threads_all_run_on_the_loop_in_each_threads_order() -> None:
    threads_count, per_thread = 8, 5000
    seen: dict[int, list[int]] = {t: [] for t in range(threads_count)}
    loop_threads: set[int] = set()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        inbox = Inbox()
        done = asyncio.Event()
        total = threads_count * per_thread
        count = 0
        wakeups = 0
        drain = inbox._drain

        def counting_drain() -> None:
            nonlocal wakeups
            wakeups += 1
            drain()

        inbox._drain = counting_drain  # type: ignore[method-assign]

        def apply(thread: int, index: int) -> None:
            nonlocal count
            loop_threads.add(threading.get_ident())
            seen[thread].append(index)
            count += 1
            if count == total:
                done.set()

        def post_all(thread: int) -> None:
            for index in range(per_thread):
                assert inbox.post(loop, apply, thread, index)

        workers = [threading.Thread(target=post_all, args=(t,)) for t in range(threads_count)]
        for worker in workers:
            worker.start()
        await asyncio.wait_for(done.wait(), 60)
        for worker in workers:
            worker.join()
        await asyncio.sleep(0)
        assert loop_threads == {threading.get_ident()}
        return wakeups

    wakeups = asyncio.run(main())
    for thread, indices in seen.items():
        assert indices == list(range(per_thread)), f"thread {thread}: lost or reordered calls"
    # One wake-up per call would be 40,000; a burst shares one.
    assert wakeups < threads_count * per_thread / 4, wakeups


def test_a_call_on_the_loops_own_thread_runs_at_once() -> None:
    async def main() -> list[str]:
        order: list[str] = []
        Inbox().post(asyncio.get_running_loop(), order.append, "now")
        order.append("after")
        return order

    assert asyncio.run(main()) == ["now", "after"]


def test_a_failing_call_does_not_drop_the_next_ones(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        inbox = Inbox()
        ran: list[int] = []

        def boom() -> None:
            raise ValueError("boom")

        def post() -> None:
            inbox.post(loop, boom)
            inbox.post(loop, ran.append, 1)

        thread = threading.Thread(target=post)
        thread.start()
        thread.join()
        for _ in range(10):
            await asyncio.sleep(0)
        return ran

    assert asyncio.run(main()) == [1]
    assert "boom" in caplog.text


def test_a_closed_or_missing_loop_is_refused() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    inbox = Inbox()
    assert inbox.post(loop, print) is False
    assert inbox.post(None, print) is False
