"""A real multi-node Slurm cluster on this machine (auto-loaded plugin).

    def test_something(slurm_cluster):   # SlurmCluster: conf, nodes, partition, env, ...
        subprocess.run(["sbatch", "--wrap", "hostname"], env={**os.environ, **slurm_cluster.env})

`slurm_cluster` is session-scoped. It runs `scripts/slurm-cluster.sh start` with a
work directory of its own under /tmp and free ports of its own, so it never meets a
cluster started by hand (`make slurm-up`, /tmp/rhapsody-slurm, ports 16817/17001..)
or by another test session. Nodes `n1..nN` (N from RHAPSODY_SLURM_NODES, default 2),
CPUs per node from RHAPSODY_SLURM_CPUS (default 2: a pilot of both nodes has room for
raptor's master and worker and for executables), default partition `debug`.
While it is active, `SLURM_CONF` is set in `os.environ` (clients such as `sbatch`,
RADICAL-Pilot and dask-jobqueue need it). At session end it runs the script's `stop`
(cancels the cluster's jobs, stops its daemons) and removes the work directory.

It needs root and Debian's `slurm-wlm` and `munge` (`make test` installs them); without
them the tests that use it are skipped, or fail when CI=true.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
REQUIRED_BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue")
START_TIMEOUT = 60


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A running cluster started by `scripts/slurm-cluster.sh`."""

    #: the cluster's work directory (config, state, spool, logs, pid files)
    dir: pathlib.Path
    #: its slurm.conf; clients need SLURM_CONF set to this path
    conf: pathlib.Path
    #: node names, n1..nN
    nodes: tuple[str, ...]
    #: the default partition
    partition: str
    #: all partitions (the second one, `short`, has a 30-minute limit)
    partitions: tuple[str, ...]
    cpus_per_node: int
    ctld_port: int
    node_port: int
    #: seconds `start` took
    start_seconds: float

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to a client's environment."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def cores(self) -> int:
        return self.cpus_per_node * len(self.nodes)

    def script_args(self) -> list[str]:
        """The script's options that select this cluster (append after a subcommand)."""
        return [
            "--dir", str(self.dir), "--nodes", str(len(self.nodes)),
            "--cpus", str(self.cpus_per_node), "--ctld-port", str(self.ctld_port),
            "--node-port", str(self.node_port), "--timeout", str(START_TIMEOUT),
        ]

    def script(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `scripts/slurm-cluster.sh <command>` for this cluster."""
        return subprocess.run(
            [str(SCRIPT), command, *self.script_args()],
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for log in sorted((self.dir / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"---- {log}\n" + "\n".join(text))
        return "\n".join(out)


def _unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the Slurm test cluster runs its daemons as root (run the tests as root, as CI does)"
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        return (f"Slurm/munge binaries not found: {', '.join(missing)} "
                "(apt-get install slurm-wlm munge, or `make system-deps`)")
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> int:
    """First of `count` consecutive free ports (away from the script's defaults)."""
    for _ in range(200):
        base = random.randrange(20000, 30000 - count)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found in 20000-30000")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running Slurm cluster for the whole session; SLURM_CONF set while it is active."""
    reason = _unavailable_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the Slurm cluster cannot run: {reason}")
        pytest.skip(reason)

    nodes = int(os.environ.get("RHAPSODY_SLURM_NODES", "2"))
    cpus = int(os.environ.get("RHAPSODY_SLURM_CPUS", "2"))
    ctld_port = _free_ports(1)
    node_port = _free_ports(nodes)
    # /tmp, not $TMPDIR: the munge user must be able to enter every parent directory.
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="rhapsody-slurm-test-", dir="/tmp"))
    cluster = SlurmCluster(
        dir=workdir / "cluster", conf=workdir / "cluster" / "slurm.conf",
        nodes=tuple(f"n{i}" for i in range(1, nodes + 1)), partition="debug",
        partitions=("debug", "short"), cpus_per_node=cpus, ctld_port=ctld_port,
        node_port=node_port, start_seconds=0.0,
    )
    workdir.chmod(0o755)
    started = time.monotonic()
    done = cluster.script("start", timeout=START_TIMEOUT + 60)
    cluster = dataclasses.replace(cluster, start_seconds=time.monotonic() - started)
    previous = os.environ.get("SLURM_CONF")
    try:
        if done.returncode != 0:
            pytest.fail(f"scripts/slurm-cluster.sh start exited {done.returncode}:\n"
                        f"{done.stdout}\n{done.stderr}")
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        stopped = cluster.script("stop")
        if stopped.returncode == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # keep the logs for a look
            print(f"slurm-cluster.sh stop exited {stopped.returncode}; logs kept in {workdir}:\n"
                  f"{stopped.stdout}\n{stopped.stderr}")
