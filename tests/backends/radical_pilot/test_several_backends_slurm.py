"""One flow on two backends: executables on a pilot of the local Slurm cluster, Python on
`concurrent` (issue 24).

The pilot is a real `sbatch` job of RADICAL-Pilot's on the cluster of tests/fixtures_slurm.py
(its tasks are `srun` steps on n1 and n2); the analysis runs in threads of the flow
process. The short first step must not wait for the batch queue, the pilot's notices
reach the flow's log under the backend's name, and the pilot's job leaves the queue
when the flow ends.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import pytest

pytest.importorskip("radical.pilot")

from tests.backends.radical_pilot.test_slurm_radical_pilot import slurm_entry, wait_queue_empty
from tests.fixtures_slurm import SlurmCluster
from tests.helpers import task_run_logs

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.radical_pilot]


@pytest.mark.timeout(1500)
def test_executables_on_a_slurm_pilot_and_python_on_concurrent_in_one_flow(
    slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.context import get_run_context

    from rhapsody_prefect import RhapsodyRunner, ensemble_map, executable_task

    flow_pid = os.getpid()
    nodes = len(slurm_cluster.nodes)
    runner = RhapsodyRunner(backends={
        "pilot": {"backend": "radical_pilot",
                  "resources": {"resource": "mysite.slurm", "nodes": nodes, "runtime": 20},
                  "resource_config": slurm_entry(slurm_cluster, tmp_path / "sandboxes"),
                  "raptor": False, "work_dir": tmp_path / "work"},
        "local": {"backend": "concurrent", "max_workers": 2, "executor": "thread"},
    }, default="local")

    @task
    def prepare() -> float:
        return time.time()

    @executable_task
    def simulate(seed: int) -> dict[str, Any]:
        return {"executable": "/bin/sh", "arguments": [
            "-c", f"echo $SLURMD_NODENAME {seed} $(date +%s.%N)"], "backend": "pilot"}

    @task
    def analyse(stdout: str) -> tuple[str, int, float, bool]:
        node, seed, started = stdout.split()
        return node, int(seed), float(started), os.getpid() == flow_pid

    @flow(task_runner=runner)
    def campaign() -> dict[str, Any]:
        prepared = prepare.submit().result()
        runs = [simulate.submit(seed) for seed in range(4)]
        analysed = [analyse.submit(run.result().stdout) for run in runs]
        members = ensemble_map(simulate, range(4, 8), backend="pilot")
        return {"prepared": prepared, "analysed": [a.result() for a in analysed],
                "members": [analyse.fn(r.stdout) for r in members.result()],
                "simulate_run": runs[0].task_run_id,
                "flow_run_id": str(get_run_context().flow_run.id)}

    started = time.monotonic()
    found = campaign()
    print(f"\nflow on a Slurm pilot and concurrent: {time.monotonic() - started:.1f} s")
    everything = found["analysed"] + found["members"]
    assert sorted(seed for _, seed, _, _ in everything) == list(range(8))
    assert {node for node, _, _, _ in everything} <= set(slurm_cluster.nodes)
    assert all(here for *_, here in found["analysed"])  # analysis: in the flow process
    # The local step did not wait for the batch job: done before any command started.
    assert found["prepared"] < min(started for _, _, started, _ in everything)

    assert task_run_logs(found["simulate_run"], "Backend 'pilot' task simulate-")
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 60
        while True:
            text = "\n".join(log.message for log in client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[found["flow_run_id"]]))))
            if "is active" in text or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert "Backend 'pilot': Pilot pilot.0000 on mysite.slurm submitted" in text, text
    assert "Backend 'local' task prepare-" in text, text
    assert wait_queue_empty() == []
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
