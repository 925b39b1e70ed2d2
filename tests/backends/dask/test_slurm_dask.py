"""The dask backend on the real Slurm cluster: dask-jobqueue's SLURMCluster inside a flow.

Both shapes a Prefect user knows: `cluster_class="dask_jobqueue.SLURMCluster"` with
`cluster_kwargs` (the backend starts the cluster on the runner's loop thread and closes
it), and `cluster=SLURMCluster(...)` (the user's; never closed by the backend). Each
worker is a Slurm job of a whole node, so the two workers run on n1 and n2.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from typing import Any

import pytest

pytest.importorskip("dask_jobqueue")

from prefect import flow, task

from rhapsody_prefect import RhapsodyRunner, executable_task
from tests.fixtures_slurm import SlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.dask]


@task
def where(i: int) -> dict[str, Any]:
    return {"i": i, "node": os.environ.get("SLURMD_NODENAME"),
            "job": os.environ.get("SLURM_JOB_ID")}


@executable_task
def node_name() -> list[str]:
    return ["/bin/sh", "-c", "echo $SLURMD_NODENAME"]


def jobqueue_kwargs(cluster: SlurmCluster, tmp_path: pathlib.Path) -> dict[str, Any]:
    """SLURMCluster options: one worker = one job of a whole node, scheduler on loopback."""
    return {
        "cores": cluster.cpus_per_node, "processes": 1, "memory": "1GB",
        "queue": cluster.partition, "walltime": "00:10:00", "job_name": "rhapsody-dask-test",
        "log_directory": str(tmp_path / "logs"), "local_directory": str(tmp_path / "worker"),
        "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        # the job starts where pytest runs; the tasks' module must import there
        "job_script_prologue": [f"cd {pathlib.Path(__file__).resolve().parents[3]}"],
    }


def queue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.splitlines()


def wait_queue_empty(timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while (jobs := queue()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


def ensemble(runner: RhapsodyRunner) -> tuple[list[dict[str, Any]], str]:
    @flow(task_runner=runner)
    def on_slurm() -> tuple[list[dict[str, Any]], str]:
        places = where.map(range(8)).result()
        return places, node_name.submit().result()

    return on_slurm()


def test_cluster_class_with_cluster_kwargs_inside_a_flow(
    slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    runner = RhapsodyRunner(
        "dask", cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs=jobqueue_kwargs(slurm_cluster, tmp_path),
        adapt_kwargs={"minimum": 2, "maximum": 2},
    )
    started = time.monotonic()
    places, echoed = ensemble(runner)
    print(f"\nflow on 2 SLURMCluster workers: {time.monotonic() - started:.1f} s")
    assert [p["i"] for p in places] == list(range(8))
    assert {p["node"] for p in places} <= set(slurm_cluster.nodes)
    assert all(p["job"] for p in places), places  # each ran inside a Slurm job
    assert echoed.stdout.strip() in slurm_cluster.nodes
    # the backend closed the cluster it started: its jobs leave the queue
    assert wait_queue_empty() == []
    assert sorted((tmp_path / "logs").glob("rhapsody-dask-test-*.err"))


def test_a_users_slurm_cluster_object_inside_a_flow(
    slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(**jobqueue_kwargs(slurm_cluster, tmp_path))
    try:
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=180)
        places, _ = ensemble(RhapsodyRunner("dask", cluster=cluster))
        nodes = {p["node"] for p in places}
        assert nodes <= set(slurm_cluster.nodes)
        assert len({p["job"] for p in places} - {None}) >= 1
        # the user's cluster is never closed by the backend: both jobs still run
        running = [job for job in queue() if job.endswith("RUNNING")]
        assert len(running) == 2, running
        assert cluster.status.name == "running"
    finally:
        cluster.close()
    assert wait_queue_empty() == []


def test_the_example_flow_with_slurm_options(
    slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    """flows/ensemble.py --slurm: options from sinfo; the dask variant runs on both nodes."""
    from flows.ensemble import ensemble, runner_for, slurm_options

    pilot = slurm_options("radical_pilot")
    nodes, cpus = len(slurm_cluster.nodes), slurm_cluster.cpus_per_node
    assert pilot["resources"]["nodes"] == nodes
    assert pilot["resource_config"]["cores_per_node"] == cpus
    assert pilot["resource_config"]["default_queue"] == slurm_cluster.partition

    options = slurm_options("dask")
    options["cluster_kwargs"]["log_directory"] = str(tmp_path / "logs")
    options["cluster_kwargs"]["job_script_prologue"] = [
        f"cd {pathlib.Path(__file__).resolve().parents[3]}"]
    summary = ensemble.with_options(task_runner=runner_for("dask", backend_kwargs=options))(
        members=4, samples=2000, workdir=str(tmp_path / "work"))
    assert summary["members"] == 4 and summary["error"] < 0.2
    assert {m["host"] for m in summary["per_member"]} <= set(slurm_cluster.nodes)
    assert wait_queue_empty() == []


@executable_task
def stage_on_node(index: int, source: str) -> dict[str, Any]:
    """Input staged in by the worker on its Slurm node; output copied back to a target."""
    return {"executable": "/bin/sh",
            "arguments": ["-c", "cat in.txt > out.txt; echo $SLURMD_NODENAME >> out.txt"],
            "input_files": [(source, "in.txt")],
            "output_files": [("out.txt", f"results/{index}.txt")]}


def test_files_in_and_out_on_slurm_workers(
    slurm_cluster: SlurmCluster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dask-jobqueue workers copy a command's files on their node (docs/api.md: sources
    and targets on a file system the workers see; here the nodes share this machine's)."""
    from prefect import unmapped

    from rhapsody_prefect import ensemble_map

    monkeypatch.chdir(tmp_path)
    source = tmp_path / "input.txt"
    source.write_text("from the login node\n")
    runner = RhapsodyRunner(
        "dask", cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs=jobqueue_kwargs(slurm_cluster, tmp_path),
        adapt_kwargs={"minimum": 2, "maximum": 2},
    )

    @flow(task_runner=runner)
    def staged() -> list[Any]:
        return ensemble_map(stage_on_node, range(6), source=unmapped(str(source))).result()

    results = staged()
    nodes = set()
    for index, result in enumerate(results):
        text = (tmp_path / "results" / f"{index}.txt").read_text().splitlines()
        assert text[0] == "from the login node"
        nodes.add(text[1])
        assert result.outputs == (str(tmp_path / "results" / f"{index}.txt"),)
    assert nodes <= {"n1", "n2"} and nodes  # ran on Slurm nodes
    assert wait_queue_empty() == []
