"""What the benchmark measures: sizes per row, repeats, caps, and the ratios judged.

Slow peers are capped where they would take far too long on a 2-core machine
(ProcessPoolTaskRunner and DaskTaskRunner run about 7 tasks/s: 10,000 tasks
would take about 25 minutes each); the table says so.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Group:
    """Rows measured side by side (interleaved) on one workload and task count."""

    family: str
    workload: str
    n: int
    rows: tuple[str, ...]
    repeats: int


@dataclasses.dataclass(frozen=True)
class Ratio:
    """A judged (or informative) ratio of throughputs: ours / peer."""

    name: str
    ours: str
    peer: str
    target: float | None  # None: informative only


RATIOS = (
    Ratio("vs ThreadPoolTaskRunner", "rhapsody-concurrent", "prefect-threadpool", 1.0),
    Ratio("vs ProcessPoolTaskRunner", "rhapsody-concurrent", "prefect-processpool", None),
    Ratio("vs DaskTaskRunner", "rhapsody-dask", "prefect-dask", 5.0),
    Ratio("vs raw RADICAL-Pilot", "rhapsody-rp", "raw-rp", 0.8),
    Ratio("concurrent: runner / API floor", "rhapsody-concurrent", "api-concurrent", None),
    Ratio("dask: runner / API floor", "rhapsody-dask", "api-dask", None),
    Ratio("radical_pilot: runner / API floor", "rhapsody-rp", "api-rp", None),
)
#: Per-task cost at the largest size / at the smallest size (target <= 1.5).
SCALING_ROWS = ("rhapsody-concurrent", "rhapsody-dask", "api-concurrent", "api-dask",
                "prefect-threadpool")
SCALING_TARGET = 1.5

CONCURRENT = ("rhapsody-concurrent", "prefect-threadpool",
              "prefect-processpool", "api-concurrent")
DASK = ("rhapsody-dask", "prefect-dask", "api-dask")
RP_EXEC = ("rhapsody-rp", "raw-rp", "api-rp")
RP_PYTHON = ("rhapsody-rp", "api-rp")

#: row -> largest n it runs at in the full benchmark (and why).
FULL_CAPS = {
    "prefect-processpool": (200, "about 7 tasks/s: 2,000 tasks would take ~5 min per run"),
    "prefect-dask": (200, "about 7 tasks/s: 2,000 tasks would take ~5 min per run"),
}
QUICK_CAPS = {
    "prefect-processpool": (20, "quick variant"),
    "prefect-dask": (20, "quick variant"),
}


#: A row is skipped at a size where the throughput it showed at a smaller size predicts
#: a run longer than this (seconds); the table says so.
PREDICTED_LIMIT = {True: 60.0, False: 240.0}
#: Slow peers run once per size (a 70-second run varies little relative to itself).
SINGLE_RUN_ROWS = ("prefect-processpool", "prefect-dask")


def build_plan(quick: bool) -> tuple[list[Group], dict[str, tuple[int, str]]]:
    """The groups to run, in order, and the caps applied."""
    if quick:
        sizes, rp_sizes, caps = (20, 50), (20,), QUICK_CAPS
        repeats = {20: 1, 50: 1}
    else:
        sizes, rp_sizes, caps = (200, 2000, 10000), (200,), FULL_CAPS
        repeats = {200: 3, 2000: 2, 10000: 1}
    dask_repeats = {n: min(r, 2) for n, r in repeats.items()}
    groups: list[Group] = []
    for family, rows in (("concurrent", CONCURRENT), ("dask", DASK)):
        for n in sizes:
            for workload in ("python", "exec"):
                kept = tuple(r for r in rows if r not in caps or n <= caps[r][0])
                count = dask_repeats[n] if family == "dask" else repeats[n]
                groups.append(Group(family, workload, n, kept, count))
    # The judged RP ratio (against raw RP) alternates 3 runs of each row: one pilot's
    # throughput varies by 20-30% from run to run on this host.
    for n in rp_sizes:
        groups.append(Group("radical_pilot", "exec", n, RP_EXEC, 1 if quick else 3))
    # Python tasks on RP go through raptor (about 12-20 tasks/s here); informative only.
    groups.append(Group("radical_pilot", "python", 5 if quick else 100, RP_PYTHON, 1))
    return groups, caps
