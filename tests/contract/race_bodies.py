"""Bodies for the attempt race tests, in a module that imports nothing heavy.

A worker process (process mode, Dask, raptor) imports the module of a function it
runs: importing Prefect there would take seconds of the attempt's timeout.
"""

from __future__ import annotations

import os
import pathlib
import time

#: Seconds of the race, scaled per backend: timeout 2 s, attempt 1 returns at 3 s, attempt 2
#: (started at about 2 s) runs 1.2 s, so it ends after attempt 1's late report.
TIMEOUT, FIRST, RETRY = 2.0, 3.0, 1.2


def claim_attempt(directory: str) -> int:
    """1 for the first call with `directory`, 2 for the next, ... (across processes)."""
    number = 1
    while True:
        try:
            os.close(os.open(os.path.join(directory, f"attempt-{number}"),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return number
        except FileExistsError:
            number += 1


def racing_body(directory: str, scale: float, retry_fails: bool) -> str:
    number = claim_attempt(directory)
    if number == 1:
        time.sleep(FIRST * scale)  # past the timeout: the retry is running by now
        pathlib.Path(directory, "attempt-1-returned").touch()
        return "attempt 1"
    time.sleep(RETRY * scale)
    if retry_fails:
        raise ValueError(f"attempt {number} failed")
    return f"attempt {number}"


def racing_member(index: int, directory: str, scale: float, retry_fails: bool) -> str:
    """An ensemble member: member 1's retry fails when `retry_fails`."""
    return racing_body(os.path.join(directory, str(index)), scale, retry_fails and index == 1)
