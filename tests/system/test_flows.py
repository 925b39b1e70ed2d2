"""The example flows run on the concurrent backend and give the right answers.

    .venv/bin/python -m pytest tests/system/test_flows.py -q

The ensemble's aggregate is checked against an independent re-computation of
every member's Monte Carlo hits (same seeds), and each member's output file
against the environment and resources its executable task asked for.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.ensemble import ensemble, member_seed, runner_for, ui_hint
from flows.getting_started import getting_started
from rhapsody_prefect import RhapsodyRunner

ROOT = Path(__file__).resolve().parents[2]


def expected_hits(seed: int, samples: int) -> int:
    rng = random.Random(seed)
    hits = 0
    for _ in range(samples):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            hits += 1
    return hits


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_ensemble_aggregate(tmp_path: Path, executor: str) -> None:
    members, samples, seed = 3, 4000, 11
    runner = runner_for("concurrent", workers=2, backend_kwargs={"executor": executor})
    summary = ensemble.with_options(task_runner=runner)(
        members=members, samples=samples, seed=seed, workdir=str(tmp_path)
    )
    hits = [expected_hits(member_seed(seed, m), samples) for m in range(members)]
    assert summary["members"] == members
    assert summary["samples"] == members * samples
    assert summary["hits"] == sum(hits)
    assert summary["pi"] == pytest.approx(4.0 * sum(hits) / (members * samples))
    assert summary["error"] == pytest.approx(abs(summary["pi"] - math.pi))
    assert summary["error"] < 0.1
    assert [m["hits"] for m in summary["per_member"]] == hits
    assert [m["pi"] for m in summary["per_member"]] == [4.0 * h / samples for h in hits]
    for m in range(members):
        output = json.loads((tmp_path / f"member-{m:03d}.json").read_text())
        assert output["member"] == str(m), "ENSEMBLE_MEMBER from the task's environment"
        assert output["seed"] == member_seed(seed, m)
        assert output["pid"] != os.getpid(), "the simulation is a separate process"


def test_ensemble_rejects_bad_parameters(tmp_path: Path) -> None:
    state = ensemble(members=0, workdir=str(tmp_path), return_state=True)
    assert state.is_failed()


def test_getting_started() -> None:
    result = getting_started.with_options(task_runner=RhapsodyRunner("concurrent"))(n=5)
    assert result == {"sum_of_squares": 0 + 1 + 4 + 9 + 16, "greeting": "hello, rhapsody"}


def test_ensemble_script_on_concurrent(tmp_path: Path) -> None:
    """`python flows/ensemble.py` (the default backend) finishes well under a minute."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "flows/ensemble.py", "--members", "4", "--samples", "5000",
         "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 members, 20000 samples: pi ~ " in done.stdout
    assert "on concurrent in" in done.stdout
    # Where to see the run: it used a temporary server (conftest unsets PREFECT_API_URL).
    assert "prefect server start --host 127.0.0.1" in done.stdout
    assert re.search(r"open http://127\.0\.0\.1:4200/runs/flow-run/[0-9a-f-]{36}\n", done.stdout)
    assert "export PREFECT_API_URL=http://127.0.0.1:4200/api" in done.stdout
    assert len(list(tmp_path.glob("member-*.json"))) == 4
    assert elapsed < 60, f"took {elapsed:.1f} s"


def test_ui_hint_with_and_without_an_api_url() -> None:
    run_id = "0b4a6f6e-5c1e-4f1e-9d55-3c6c1f0e2a11"
    # PREFECT_API_URL set: the run's page on that server.
    assert ui_hint(run_id, ["flows/ensemble.py"], "http://10.0.0.5:4200/api",
                   "http://10.0.0.5:4200", "/home/u/.prefect") == (
        f"This flow run in the Prefect UI: http://10.0.0.5:4200/runs/flow-run/{run_id}")
    # A temporary server: how to start one on loopback over the same database, and rerun.
    hint = ui_hint(run_id, ["flows/ensemble.py", "--members", "2"], None, None,
                   "/home/u/.prefect")
    assert "kept in /home/u/.prefect" in hint
    assert "prefect server start --host 127.0.0.1 " in hint
    assert f"open http://127.0.0.1:4200/runs/flow-run/{run_id}" in hint
    assert "export PREFECT_API_URL=http://127.0.0.1:4200/api" in hint
    assert hint.endswith(" flows/ensemble.py --members 2")


def test_ensemble_script_unknown_backend_fails_clearly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "flows/ensemble.py", "--backend", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "invalid choice: 'nope'" in done.stderr
