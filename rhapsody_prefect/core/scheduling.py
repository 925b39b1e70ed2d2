"""Scheduling helpers of the shared engine: a FIFO core pool, a launch batcher, an inbox.

    pool = SlotPool(4)
    async with pool.hold(2):          # waits, first come first served, for 2 free cores
        ...

    batcher = Batcher(flush, delay=0.05)
    batcher.add("task.1")             # flush(["task.1", ...]) runs once, 50 ms later

    inbox = Inbox()
    inbox.post(loop, apply, uid, state)   # from any thread: apply(uid, state) on `loop`
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("rhapsody_prefect.backends")


class SlotPool:
    """FIFO counting semaphore over cores: a big task is not starved by small ones."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, count: int) -> None:
        if not self._waiters and self._free >= count:
            self._free -= count
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((count, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(count)
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove((count, waiter))
                self._wake()
            raise

    def release(self, count: int) -> None:
        self._free += count
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._free:
            count, waiter = self._waiters.popleft()
            if not waiter.done():
                self._free -= count
                waiter.set_result(None)

    def hold(self, count: int) -> _Hold:
        """`async with pool.hold(n):` holds n cores for the block."""
        return _Hold(self, count)


class _Hold:
    """SlotPool.hold's context manager: a class, not a generator (one per task attempt)."""

    __slots__ = ("_count", "_pool")

    def __init__(self, pool: SlotPool, count: int) -> None:
        self._pool = pool
        self._count = count

    async def __aenter__(self) -> None:
        await self._pool.acquire(self._count)

    async def __aexit__(self, *exc_info: object) -> None:
        self._pool.release(self._count)


class Batcher:
    """Collects items (attempts) for `delay` s (0: one loop iteration), then hands them over."""

    def __init__(self, flush: Callable[[list[Any]], Awaitable[None]], delay: float = 0.0) -> None:
        self._flush = flush
        self._delay = delay
        self._items: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, item: Any) -> None:
        if not self._items:
            loop = asyncio.get_running_loop()
            if self._delay > 0:
                loop.call_later(self._delay, self._run)
            else:
                loop.call_soon(self._run)
        self._items.append(item)

    def _run(self) -> None:
        items, self._items = self._items, []
        task = asyncio.ensure_future(self._flush(items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Inbox:
    """Calls from any thread, run on one event loop in order, one wake-up per burst.

    `loop.call_soon_threadsafe` per call wakes the loop (a write to its self-pipe)
    once per call: thousands of task reports a second from worker or callback
    threads would cost a system call and a loop iteration each. Here a call from
    another thread is queued, and only the first call after the loop has drained
    the queue wakes it.
    """

    def __init__(self) -> None:
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._wake_pending = False

    def post(
        self, loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any
    ) -> bool:
        """Run `fn(*args)` on `loop`: now if this is its thread, else soon; False if closed."""
        if loop is None or loop.is_closed():
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
            return True
        # Append before reading the flag: `_drain` clears the flag before it empties
        # the queue, so a call is either drained by a wake-up already on its way or
        # this thread sends one.
        self._calls.append((fn, args))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # closed meanwhile
                self._wake_pending = False
                return False
        return True

    def _drain(self) -> None:
        self._wake_pending = False
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:  # one failing call must not drop the ones after it
                logger.exception("Call %r from another thread failed", fn)


__all__ = ["Batcher", "Inbox", "SlotPool"]
