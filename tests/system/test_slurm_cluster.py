"""The Slurm test cluster itself (scripts/slurm-cluster.sh through `slurm_cluster`).

Real daemons, real jobs: a batch job runs to completion, `srun` spans both nodes,
the queue is empty afterwards, the script's `start` is idempotent, and `--cpu-list`
keeps a cluster's jobs on the CPUs it names.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import psutil
import pytest

from tests.fixtures_slurm import SCRIPT, SlurmCluster, _free_ports

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def run(args: list[str], cluster: SlurmCluster, timeout: float = 60,
        cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **cluster.env}, cwd=cwd)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def queue(cluster: SlurmCluster) -> list[str]:
    return run(["squeue", "-h", "-o", "%i %T"], cluster).stdout.split("\n")[:-1]


def wait_queue_empty(cluster: SlurmCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (jobs := queue(cluster)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not jobs, f"jobs still queued after {timeout} s: {jobs}\n{cluster.log_tail()}"


def test_nodes_idle_and_slurm_conf_set(slurm_cluster: SlurmCluster) -> None:
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)
    out = run(["sinfo", "-h", "-N", "-p", slurm_cluster.partition, "-o", "%N %t %c"],
              slurm_cluster).stdout
    rows = sorted(line.split() for line in out.splitlines())
    assert rows == [[n, "idle", str(slurm_cluster.cpus_per_node)] for n in slurm_cluster.nodes]


def test_sbatch_job_runs_and_completes(slurm_cluster: SlurmCluster,
                                       tmp_path: pathlib.Path) -> None:
    out = tmp_path / "job.out"
    job_id = run(["sbatch", "--parsable", "-J", "rhapsody-test", "-o", str(out),
                  "--wrap", "echo job=$SLURM_JOB_ID node=$SLURMD_NODENAME"],
                 slurm_cluster, cwd=tmp_path).stdout.strip().split(";")[0]
    wait_queue_empty(slurm_cluster)
    state = run(["scontrol", "show", "job", job_id], slurm_cluster).stdout
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state
    line = out.read_text().strip()
    assert line.startswith(f"job={job_id} node=n"), line
    assert line.split("node=")[1] in slurm_cluster.nodes


def test_srun_spans_both_nodes(slurm_cluster: SlurmCluster, tmp_path: pathlib.Path) -> None:
    n = len(slurm_cluster.nodes)
    out = run(["srun", f"-N{n}", f"-n{n}", "-p", slurm_cluster.partition, "bash", "-c",
               "echo $SLURMD_NODENAME $SLURM_PROCID"], slurm_cluster, cwd=tmp_path).stdout
    pairs = [line.split() for line in out.splitlines()]
    # one rank on each node
    assert sorted(node for node, _ in pairs) == list(slurm_cluster.nodes), out
    assert sorted(int(rank) for _, rank in pairs) == list(range(n)), out
    wait_queue_empty(slurm_cluster)
    assert queue(slurm_cluster) == []


def slurm_daemons(cluster: SlurmCluster) -> dict[int, float]:
    """The cluster's slurmctld and slurmds (started with `-f <its slurm.conf>`): pid -> start."""
    return {p.pid: p.create_time() for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] in ("slurmctld", "slurmd")
            and str(cluster.conf) in (p.info["cmdline"] or [])}


def test_start_is_idempotent(slurm_cluster: SlurmCluster) -> None:
    pid_files = sorted((slurm_cluster.dir / "run").glob("*.pid"))
    pids = [p.read_text().strip() for p in pid_files]
    assert len(pid_files) == 1 + len(slurm_cluster.nodes)
    daemons = slurm_daemons(slurm_cluster)
    assert {int(pid) for pid in pids} <= set(daemons), (pids, daemons)
    conf = slurm_cluster.conf.stat()
    done = slurm_cluster.script("start")
    assert done.returncode == 0, done.stderr
    assert "already up" in done.stdout
    # Nothing was started, restarted or rewritten: the same daemon processes (same pids,
    # same start times, none added), the same config file, no "up:"/"restarting" path.
    assert "partly up" not in done.stdout and "up: " not in done.stdout, done.stdout
    assert slurm_daemons(slurm_cluster) == daemons
    assert slurm_cluster.conf.stat().st_mtime_ns == conf.st_mtime_ns
    assert [p.read_text().strip() for p in pid_files] == pids
    status = slurm_cluster.script("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_cpu_list_refuses_a_bad_value() -> None:
    for bad, says in (("one", "must be a CPU list"), ("4096", "names no usable CPU")):
        done = subprocess.run([str(SCRIPT), "start", "--dir", "/tmp/rhapsody-never-started",
                               "--cpu-list", bad], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and says in done.stderr and bad in done.stderr, done.stderr
    assert not pathlib.Path("/tmp/rhapsody-never-started").exists()


def test_cpu_list_runs_jobs_on_those_cpus(slurm_cluster: SlurmCluster) -> None:
    """A second one-node cluster with its daemons on CPU 0: its job steps run on CPU 0
    only (the other CPUs stay free, as a login node's would), while this process may use
    every CPU; asking again with another list is refused while it runs."""
    assert len(os.sched_getaffinity(0)) > 1, "needs a machine with two CPUs or more"
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="rhapsody-slurm-pinned-", dir="/tmp"))
    workdir.chmod(0o755)
    pinned = dataclasses.replace(slurm_cluster, dir=workdir / "cluster",
                                 conf=workdir / "cluster" / "slurm.conf", nodes=("n1",),
                                 ctld_port=_free_ports(1), node_port=_free_ports(1))
    args = [*pinned.script_args(), "--cpu-list", "0"]
    try:
        started = subprocess.run([str(SCRIPT), "start", *args], capture_output=True,
                                 text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "daemons on CPUs 0" in started.stdout
        out = run(["srun", "-N1", "-n1", "bash", "-c", "taskset -cp $$"], pinned,
                  cwd=workdir).stdout
        assert out.strip().endswith("current affinity list: 0"), out
        status = pinned.script("status")
        assert "on CPUs 0" in status.stdout, status.stdout
        other = subprocess.run([str(SCRIPT), "start", *pinned.script_args()],
                               capture_output=True, text=True, timeout=60)
        assert other.returncode == 1 and "other settings" in other.stderr, other.stderr
    finally:
        stopped = pinned.script("stop")
        shutil.rmtree(workdir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
