"""The Prefect tasks the benchmark submits (module level, so process pools can import them)."""

from __future__ import annotations

from prefect import task

from bench.workloads import TRUE, noop
from rhapsody_prefect import executable_task

noop_task = task(noop, name="noop")


@executable_task(name="true")
def true_task(i: int) -> list[str]:
    """`/bin/true` as an executable task."""
    return [TRUE]
