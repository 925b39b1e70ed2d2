"""Pilots shared by the `shared=True` backends of one configuration in this process.

    key = share_key(backend.config, backend.work_dir, backend.keep_sandbox)
    run = shared_run(key, new_run)   # the live run of that key, else new_run() started
    close_shared_pilots()            # closes every shared pilot (also done at exit)

A shared run is started by the first backend that needs it and outlives the
backends that use it (`terminate()` only detaches them); one whose pilot failed or
that was closed is replaced on the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

from .config import PilotConfig
from .session import PilotRun

_runs: dict[str, PilotRun] = {}  # share key -> run
_lock = threading.Lock()


def share_key(config: PilotConfig, work_dir: Path, keep_sandbox: bool) -> str:
    """Backends with equal keys share one run: same pilot, raptor, files, interface."""
    return json.dumps([config.resources, config.raptor, config.resource_config,
                       str(work_dir), keep_sandbox, config.network_interface],
                      sort_keys=True, default=str)


def shared_run(key: str, new_run: Callable[[], PilotRun]) -> PilotRun:
    """Blocking: the started run shared under `key`; `new_run()` started if none is usable."""
    with _lock:
        run = _runs.get(key)
        if run is not None and (run.pilot_error is not None or run.closed):
            del _runs[key]
            run.close()
            run = None
        if run is None:
            run = new_run()
            run.start()
            _runs[key] = run
        return run


def close_shared_pilots() -> None:
    """Close every pilot shared by `shared=True` backends (also done at exit)."""
    with _lock:
        runs = list(_runs.values())
        _runs.clear()
    for run in runs:
        run.close()


# Registered after `session`'s exit hook (this module imports it), so it runs before it:
# shared pilots close normally before the runs left open are reaped.
@atexit.register
def _close_at_exit() -> None:
    with contextlib.suppress(Exception):
        close_shared_pilots()


__all__ = ["close_shared_pilots", "share_key", "shared_run"]
