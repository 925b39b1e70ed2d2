"""What a backend tells its user about itself while tasks wait: a pilot queued, a job ended.

    notices = Notices("rhapsody_prefect.backends.radical_pilot")
    notices.subscribe(lambda level, message: print(message))   # e.g. the flow run's log
    notices.post(logging.INFO, "Pilot pilot.0000 waits in the batch queue: batch job 14 "
                 "PENDING (reason Resources)", waiting="batch job 14 PENDING (reason Resources)")
    notices.waiting      # why submitted tasks cannot start now; None once they can
    notices.post(logging.INFO, "Pilot pilot.0000 is active", waiting=None)

A notice goes to every subscriber (the Prefect runner subscribes the flow run's
logger), or to the named logger when nobody subscribed, so a script using the
RHAPSODY API sees it through `logging`. Subscribers are called on the poster's
thread and must not block; an exception in one is logged and ignored.
Imports: the standard library only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

#: A subscriber: (logging level, message).
Listener = Callable[[int, str], None]

_UNSET = object()


class Notices:
    """A backend's notices: delivered to subscribers, or logged when there are none."""

    def __init__(self, logger_name: str) -> None:
        self.logger = logging.getLogger(logger_name)
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        #: Why tasks submitted now cannot start yet (e.g. the pilot is queued); None: they can.
        self.waiting: str | None = None
        #: The last notice posted, replayed to a late subscriber.
        self.last: tuple[int, str] | None = None

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(level, message)` for each notice from now on (and the last one)."""
        with self._lock:
            self._listeners.append(listener)
            last = self.last
        if last is not None:
            self._call(listener, *last)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def post(self, level: int, message: str, waiting: object = _UNSET,
             log_alone: bool = True) -> None:
        """Tell the subscribers, or the logger (unless not `log_alone`).

        `waiting` updates `self.waiting`; `log_alone=False` for what is logged anyway
        (e.g. the error of a broken backend, which the engine logs).
        """
        with self._lock:
            if waiting is not _UNSET:
                self.waiting = waiting if isinstance(waiting, str) else None
            self.last = (level, message)
            listeners = list(self._listeners)
        if not listeners and log_alone:
            self.logger.log(level, message)
        for listener in listeners:
            self._call(listener, level, message)

    def _call(self, listener: Listener, level: int, message: str) -> None:
        try:
            listener(level, message)
        except Exception:
            self.logger.exception("A notice subscriber failed on %r", message)


__all__ = ["Listener", "Notices"]
