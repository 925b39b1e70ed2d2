"""The event loop every task run of a flow run shares, on one daemon thread.

    loop_thread = LoopThread(name="rhapsody-dask-runner")
    value = loop_thread.call(coroutine)                       # run and wait, from any thread
    future = loop_thread.spawn(coroutine, contextvars.copy_context())   # thread-safe future
    loop_thread.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any


class LoopThread:
    """One daemon thread running an event loop."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run `coro` on the loop and wait for its result from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(
        self, coro: Coroutine[Any, Any, Any], context: contextvars.Context
    ) -> concurrent.futures.Future[Any]:
        """Start `coro` as a task on the loop, in `context`; a thread-safe future of it."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            task = self.loop.create_task(coro, context=context)

            def transfer(done: asyncio.Task[Any]) -> None:
                if done.cancelled():
                    result.cancel()
                elif done.exception() is not None:
                    result.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    result.set_result(done.result())

            task.add_done_callback(transfer)

        self.loop.call_soon_threadsafe(start)
        return result

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self.loop.close()


__all__ = ["LoopThread"]
