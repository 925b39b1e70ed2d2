"""`core.machine.usable_cores`: the one answer to "how many cores" (CLI, dask, radical_pilot)."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import pytest

from rhapsody_prefect.core import machine
from rhapsody_prefect.core.machine import usable_cores

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"),
                                    reason="no CPU affinity on this OS")


@needs_affinity
def test_it_counts_the_cpus_this_process_may_use() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))


@needs_affinity
def test_a_process_pinned_to_one_cpu_gets_one_core() -> None:
    """Fails for os.cpu_count() on any machine with two CPUs or more."""
    cpu = min(os.sched_getaffinity(0))
    code = ("import os; from rhapsody_prefect.core.machine import usable_cores; "
            f"os.sched_setaffinity(0, {{{cpu}}}); print(usable_cores(), os.cpu_count())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split()[0] == "1"


def test_without_affinity_it_is_the_cpu_count_and_at_least_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert usable_cores() == 1


def test_the_users_of_the_count_agree() -> None:
    """The CLI's machine check and the dask worker split ask the same function."""
    from rhapsody_prefect import cli
    from rhapsody_prefect.backends.dask.options import _workers_for

    cores = usable_cores()
    cpus = {(c.area, c.name): c.detail for c in cli.check_machine()}[("machine", "cpus")]
    assert cpus.startswith(f"{cores} usable")
    assert _workers_for(cores * 2) == cores  # the largest divisor of 2n up to n cores


def test_the_docstring_example_runs() -> None:
    assert doctest.testmod(machine).failed == 0
