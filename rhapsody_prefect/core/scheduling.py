"""Scheduling helpers of the shared engine: a FIFO core pool and a launch batcher.

    pool = SlotPool(4)
    async with pool.hold(2):          # waits, first come first served, for 2 free cores
        ...

    batcher = Batcher(flush, delay=0.05)
    batcher.add("task.1")             # flush(["task.1", ...]) runs once, 50 ms later
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


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

    @contextlib.asynccontextmanager
    async def hold(self, count: int) -> Any:
        await self.acquire(count)
        try:
            yield
        finally:
            self.release(count)


class Batcher:
    """Collects uids for `delay` seconds (0: one loop iteration), then hands them over."""

    def __init__(self, flush: Callable[[list[str]], Awaitable[None]], delay: float = 0.0) -> None:
        self._flush = flush
        self._delay = delay
        self._items: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, uid: str) -> None:
        if not self._items:
            loop = asyncio.get_running_loop()
            if self._delay > 0:
                loop.call_later(self._delay, self._run)
            else:
                loop.call_soon(self._run)
        self._items.append(uid)

    def _run(self) -> None:
        items, self._items = self._items, []
        task = asyncio.ensure_future(self._flush(items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def call_on_loop(
    loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any
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
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # closed meanwhile
        return False
    return True


__all__ = ["Batcher", "SlotPool", "call_on_loop"]
