"""Smoke test of the benchmark suite: `bench/run.py --quick` runs every benchmark.

Takes about 8-10 minutes (three RADICAL-Pilot pilots, a Dask cluster, a Prefect server).
Checks that every row runs (or is reported unavailable) and that every ratio is
printed with a value; it never asserts anything about speed.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.plan import RATIOS, build_plan  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=2300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed.stdout, out


def _unavailable(stdout: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^(\w+): unavailable: ", stdout, re.MULTILINE)}


def test_every_benchmark_runs(quick_run: tuple[str, pathlib.Path]) -> None:
    stdout, _ = quick_run
    unavailable = _unavailable(stdout)
    groups, _ = build_plan(quick=True)
    for group in groups:
        if group.family in unavailable:
            continue
        for row in group.rows:
            pattern = rf"^{re.escape(row)}\s+{group.workload}\s+{group.n}\s+1/1\s+[\d.]+"
            assert re.search(pattern, stdout, re.MULTILINE), (
                f"{row} {group.workload} n={group.n} did not produce a measurement"
            )
    for family in unavailable:
        assert f"{family} (all rows)" in stdout


def test_every_ratio_is_printed(quick_run: tuple[str, pathlib.Path]) -> None:
    stdout, _ = quick_run
    unavailable = _unavailable(stdout)
    families = {"rhapsody-concurrent": "concurrent", "rhapsody-dask": "dask",
                "rhapsody-rp": "radical_pilot"}
    for ratio in RATIOS:
        if families[ratio.ours] in unavailable:
            continue
        pattern = rf"^{re.escape(ratio.name)}\s+\w+\s+\d+\s+[\d.]+x\s"
        assert re.search(pattern, stdout, re.MULTILINE), f"ratio {ratio.name!r} not printed"
    assert re.search(r"^rhapsody-concurrent: cost/task at 50 / at 20\s+python\s+50\s+[\d.]+x",
                     stdout, re.MULTILINE)


def test_writes_markdown_and_plot(quick_run: tuple[str, pathlib.Path]) -> None:
    _, out = quick_run
    markdown = (out / "benchmarks.md").read_text()
    assert "| ratio (ours / peer) |" in markdown
    assert "## Method" in markdown and "## Machine" in markdown
    assert (out / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ensemble_quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    out = tmp_path_factory.mktemp("bench-ensemble")
    (out / "benchmarks.md").write_text("# Benchmarks\n\nthe main table\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ensemble.py"), "--quick", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=2300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed.stdout, out


def test_ensemble_benchmark_measures_every_row(
    ensemble_quick_run: tuple[str, pathlib.Path],
) -> None:
    """`bench/ensemble.py --quick`: every row measured, every ratio printed with a value."""
    from bench.ensemble import plan

    stdout, out = ensemble_quick_run
    groups, _ = plan(quick=True)
    for _family, workload, n, rows in groups:
        for row in rows:
            pattern = rf"^{re.escape(row)}\s+{workload}\s+{n}\s+1/1\s+[\d.]+"
            assert re.search(pattern, stdout, re.MULTILINE), f"{row} {workload} n={n}"
    for name in ("concurrent: ensemble / plain task runs", "dask: ensemble / API floor",
                 "concurrent: cost/member at 400 / at 20",
                 "radical_pilot: ensemble / raw RADICAL-Pilot"):
        assert re.search(rf"^{re.escape(name)}\s+\w+\s+\d+\s+[\d.]+x\s", stdout, re.MULTILINE), name
    markdown = (out / "benchmarks.md").read_text()
    assert markdown.startswith("# Benchmarks\n\nthe main table\n")  # the rest is kept
    assert "## ensemble_map: one task run for thousands of members" in markdown
    assert "sleep-threadpool" in markdown
    assert (out / "benchmarks-ensemble.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_benchmark_measures_every_row(tmp_path: pathlib.Path) -> None:
    """`bench/output.py --quick`: the three rows measured, the section written."""
    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "output.py"), "--quick", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "## Command output" in markdown
    for row in ("| silent |", "| 100 KB |", "| 100 KB, limit 10 KB |"):
        assert row in markdown, row
    assert re.search(r"\| 100 KB \| [\d.]+ \| [\d.]+x \| \d+ \| 5\.0 \|", markdown), markdown


def test_several_backends_benchmark_measures_both_rows(tmp_path: pathlib.Path) -> None:
    """`bench/several_backends.py --quick`: both rows measured, the ratio printed with a
    value, its section written beside what benchmarks.md held."""
    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n\nthe main table\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "several_backends.py"), "--quick",
         "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    for row in ("one backend", "two backends"):
        assert re.search(rf"^{row}\s+100\s+1/1\s+[\d.]+ s$", completed.stdout, re.MULTILINE), row
    assert re.search(r"^two backends / one backend\s+python\s+100\s+[\d.]+x",
                     completed.stdout, re.MULTILINE)
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert markdown.startswith("# Benchmarks\n\nthe main table\n")
    assert "## Several backends in one flow" in markdown and "| two backends |" in markdown


@pytest.mark.radical_pilot
def test_staging_benchmark_quick(tmp_path: pathlib.Path) -> None:
    """`bench/staging.py --quick`: 20 staged tasks per row on one pilot, every row
    measured with every file copied back, the ratio printed and the section written
    (the rest of benchmarks.md kept)."""
    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n\nthe main table\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "staging.py"), "--quick", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    for row in ("raw-rp", "api-rp", "runner-rp"):
        assert re.search(rf"^  {row}\s+#1:\s+[\d.]+ tasks/s .* 20/20 done, 20 copied back",
                         completed.stdout, re.MULTILINE), row
    assert re.search(r"^RHAPSODY API / raw RP: \*\*[\d.]+x\*\*", completed.stdout, re.MULTILINE)
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert markdown.startswith("# Benchmarks\n\nthe main table\n")
    assert "<!-- staging:begin -->\n## Staging through a pilot" in markdown
    assert markdown.rstrip().endswith("<!-- staging:end -->")
