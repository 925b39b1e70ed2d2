"""An HPC-style ensemble: N simulations as executables, Python analysis, one aggregate.

    python flows/ensemble.py                                 # concurrent backend, 4 members
    python flows/ensemble.py --backend dask --members 8 --workers 2
    python flows/ensemble.py --backend radical_pilot --members 4 --samples 50000
    python flows/ensemble.py --backend radical_pilot --slurm     # a pilot job on Slurm
    python flows/ensemble.py --backend dask --slurm              # SLURMCluster workers

    from flows.ensemble import ensemble, runner_for
    summary = ensemble.with_options(task_runner=runner_for("dask", workers=2))(members=8)

Each ensemble member is a *command* (`executable_task`): a small self-contained
Monte Carlo "simulation" (`python -c ...`, the Python that runs this flow)
that throws `samples` random points at the unit square with its own seed and
writes `member-XXX.json` into the work directory. Each member asks the backend
for its resources (one rank, `--cores` cores, an environment). A Python task
per member then reads and checks that output file and estimates pi from it,
and a last task aggregates the members (total hits over total samples).

The backend comes from `--backend`, or from the `RHAPSODY_BACKEND` environment
variable when the flow is started by a deployment (default `concurrent`, which
needs nothing else started). A backend that cannot run here fails with the
library's own error (`rhapsody-prefect backends` says why).

`--slurm [PARTITION]` runs the radical_pilot or dask backend through the Slurm
cluster `SLURM_CONF` points at (`make slurm-up; eval "$(scripts/slurm-cluster.sh
env)"`, see docs/hpc.md): a pilot of all the partition's nodes, from an inline
resource config; or one dask-jobqueue worker job per node.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import sys
import tempfile
import time
from typing import Any

if __name__ == "__main__":
    # A fresh PREFECT_HOME on a busy machine needs more than Prefect's default 20 s
    # to start the ephemeral API server; must be set before prefect is imported.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import cloudpickle
from prefect import flow, get_run_logger, task
from prefect.settings import get_current_settings

from rhapsody_prefect import ExecutableResult, RhapsodyRunner, executable_task, task_resources

# Deployments load this file under a generated module name that backend worker
# processes cannot import: ship this module's functions by value.
if __name__ != "__main__":
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

BACKEND_ENV = "RHAPSODY_BACKEND"
BACKENDS = ("concurrent", "dask", "radical_pilot")

#: The "simulation": argv is [seed, samples, output path]. Needs only the standard library.
SIMULATION = """\
import json, os, random, sys, time
seed, samples, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
hits = 0
for _ in range(samples):
    x, y = rng.random(), rng.random()
    hits += x * x + y * y <= 1.0
result = {"seed": seed, "samples": samples, "hits": hits,
          "member": os.environ.get("ENSEMBLE_MEMBER"),
          "host": os.environ.get("SLURMD_NODENAME") or os.uname().nodename,
          "pid": os.getpid(), "finished": time.time()}
tmp = out + ".part"
with open(tmp, "w") as f:
    json.dump(result, f)
os.replace(tmp, out)
print(f"member {result['member']}: {hits}/{samples} hits")
"""


def runner_for(
    backend: str = "concurrent",
    workers: int | None = None,
    backend_kwargs: dict[str, Any] | None = None,
) -> RhapsodyRunner:
    """A RhapsodyRunner for `backend`, sized to `workers` parallel tasks when given."""
    kwargs: dict[str, Any] = dict(backend_kwargs or {})
    if workers is not None:
        if backend == "concurrent":
            kwargs.setdefault("max_workers", workers)
        elif backend == "dask":
            kwargs.setdefault("resources", {"threads": workers})
        elif backend == "radical_pilot":
            kwargs.setdefault("resources", {"cores": workers})
    return RhapsodyRunner(backend, **kwargs)


def slurm_partition(partition: str | None = None) -> tuple[str, int, int]:
    """(partition, nodes, CPUs per node) of a Slurm partition (default: the default one)."""
    import subprocess

    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %D %c"], capture_output=True,
                             text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise SystemExit(
            f"--slurm: cannot ask Slurm for its partitions ({error}). Start the local cluster "
            "and point SLURM_CONF at it: make slurm-up; eval \"$(scripts/slurm-cluster.sh env)\""
        ) from None
    rows = [line.split() for line in out.splitlines() if line.strip()]
    for name, nodes, cpus in rows:
        if name.rstrip("*") == partition or (partition is None and name.endswith("*")):
            return name.rstrip("*"), int(nodes), int(cpus.rstrip("+"))
    raise SystemExit(f"--slurm: no partition {partition!r}; Slurm has "
                     f"{[row[0] for row in rows]}")


def slurm_options(backend: str, partition: str | None = None) -> dict[str, Any]:
    """Backend options for the Slurm cluster SLURM_CONF points at: all nodes of `partition`."""
    partition, nodes, cpus = slurm_partition(partition)
    scratch = pathlib.Path(tempfile.gettempdir())
    if backend == "radical_pilot":
        entry = {  # one entry of a resource_<site>.json (docs/hpc.md explains the keys)
            "description": "the Slurm cluster SLURM_CONF points at",
            "default_schema": "local",
            "schemas": {"local": {"job_manager_endpoint": "slurm://localhost/",
                                  "filesystem_endpoint": "file://localhost/"}},
            "default_queue": partition, "resource_manager": "SLURM",
            "agent_scheduler": "CONTINUOUS", "agent_spawner": "POPEN",
            "launch_methods": {"order": ["SRUN"], "SRUN": {}},
            "cores_per_node": cpus, "gpus_per_node": 0,
            "default_remote_workdir": str(scratch / "rhapsody-rp-sandboxes"),
            "rp_version": "installed", "virtenv_mode": "local", "python_dist": "default",
        }
        return {"resources": {"resource": "mysite.slurm", "nodes": nodes, "runtime": 30},
                "resource_config": entry}
    if backend == "dask":
        return {
            "cluster_class": "dask_jobqueue.SLURMCluster",
            "cluster_kwargs": {
                "cores": cpus, "processes": 1, "memory": "1GB", "queue": partition,
                "walltime": "00:30:00", "log_directory": str(scratch / "rhapsody-dask-logs"),
                "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
            },
            "adapt_kwargs": {"minimum": nodes, "maximum": nodes},
        }
    raise SystemExit(f"--slurm runs the radical_pilot or dask backend, not {backend!r}")


def member_seed(base_seed: int, member: int) -> int:
    return base_seed * 1000 + member


@executable_task(retries=1, tags=["simulation"])
def simulate(
    member: int, seed: int, samples: int, workdir: str, cores: int = 1
) -> dict[str, Any]:
    """One ensemble member: the command, its resources and environment."""
    out = pathlib.Path(workdir) / f"member-{member:03d}.json"
    return {
        "executable": sys.executable,
        "arguments": ["-c", SIMULATION, str(seed), str(samples), str(out)],
        "ranks": 1,
        "cores_per_rank": cores,
        "environment": {"ENSEMBLE_MEMBER": str(member), "OMP_NUM_THREADS": str(cores)},
        "cwd": workdir,
    }


@task(tags=["analysis"])
@task_resources(cores_per_rank=1)
def analyse(member: int, workdir: str, simulation: ExecutableResult) -> dict[str, Any]:
    """Read and check one member's output; estimate pi from it."""
    path = pathlib.Path(workdir) / f"member-{member:03d}.json"
    data = json.loads(path.read_text())
    if not 0 <= data["hits"] <= data["samples"]:
        raise ValueError(f"{path}: impossible hit count {data['hits']}/{data['samples']}")
    print(simulation.stdout.strip())
    return {
        "member": member,
        "seed": data["seed"],
        "samples": data["samples"],
        "hits": data["hits"],
        "pi": 4.0 * data["hits"] / data["samples"],
        "host": data["host"],
    }


@task(tags=["aggregate"])
def aggregate(analyses: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the members: pooled estimate, spread, error against math.pi."""
    samples = sum(a["samples"] for a in analyses)
    hits = sum(a["hits"] for a in analyses)
    estimates = [a["pi"] for a in analyses]
    mean = sum(estimates) / len(estimates)
    spread = math.sqrt(sum((e - mean) ** 2 for e in estimates) / len(estimates))
    pi = 4.0 * hits / samples
    return {
        "members": len(analyses),
        "samples": samples,
        "hits": hits,
        "pi": pi,
        "error": abs(pi - math.pi),
        "member_spread": spread,
        "per_member": sorted(analyses, key=lambda a: a["member"]),
    }


@flow(
    name="ensemble",
    task_runner=RhapsodyRunner(os.environ.get(BACKEND_ENV, "concurrent")),
    log_prints=True,
)
def ensemble(
    members: int = 4,
    samples: int = 20_000,
    seed: int = 7,
    cores: int = 1,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Run `members` simulations, analyse each, aggregate them all."""
    if members < 1 or samples < 1:
        raise ValueError("members and samples must be >= 1")
    logger = get_run_logger()
    work = pathlib.Path(workdir or tempfile.mkdtemp(prefix="rhapsody-ensemble-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    logger.info("Ensemble of %d members x %d samples in %s", members, samples, work)

    simulations = [
        simulate.submit(m, member_seed(seed, m), samples, str(work), cores)
        for m in range(members)
    ]
    analyses = [
        analyse.submit(m, str(work), simulations[m]) for m in range(members)
    ]
    summary = aggregate.submit(analyses).result()
    summary["workdir"] = str(work)
    logger.info(
        "pi ~ %.5f (error %.5f) from %d samples in %d members",
        summary["pi"], summary["error"], summary["samples"], summary["members"],
    )
    return summary


def ui_hint(flow_run_id: object, argv: list[str], api_url: str | None, ui_url: str | None,
            home: object) -> str:
    """How to see this flow run in the Prefect UI; printed at the end of the script.

    With PREFECT_API_URL set (`api_url`), the run went to that server: its page.
    Without it, the run used a temporary server that is gone now, but the run is
    kept in Prefect's database in PREFECT_HOME (`home`), which `prefect server
    start` with the same settings serves. `argv` is the command that ran the flow.
    """
    if api_url:
        return f"This flow run in the Prefect UI: {ui_url}/runs/flow-run/{flow_run_id}"

    def command(name: str) -> str:  # the one beside this Python: .venv/bin/prefect, ...
        path = pathlib.Path(sys.executable).parent / name
        if path.is_relative_to(pathlib.Path.cwd()):
            return os.path.relpath(path)
        return str(path) if path.exists() else name

    url = "http://127.0.0.1:4200"
    return "\n".join([
        f"Prefect UI: this run used a temporary Prefect server; the run is kept in {home}:",
        f"  {command('prefect')} server start --host 127.0.0.1    # another shell; loopback only",
        f"  open {url}/runs/flow-run/{flow_run_id}",
        f"Send the next runs to that server, and see them at {url}/runs as they run:",
        f"  export PREFECT_API_URL={url}/api",
        f"  {shlex.join([command(pathlib.Path(sys.executable).name), *argv])}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS,
                        default=os.environ.get(BACKEND_ENV, "concurrent"))
    parser.add_argument("--members", type=int, default=4, help="ensemble size (default 4)")
    parser.add_argument("--samples", type=int, default=20_000, help="samples per member")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cores", type=int, default=1, help="cores per simulation")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel tasks on the backend (backend default if omitted)")
    parser.add_argument("--backend-kwargs", type=json.loads, default=None, metavar="JSON",
                        help='extra backend options, e.g. \'{"address": "tcp://host:8786"}\'')
    parser.add_argument("--workdir", default=None, help="output directory (default: a temp dir)")
    parser.add_argument("--slurm", nargs="?", const="", default=None, metavar="PARTITION",
                        help="run through the Slurm cluster SLURM_CONF points at (radical_pilot: "
                             "a pilot job of the partition's nodes; dask: SLURMCluster workers)")
    args = parser.parse_args(argv)

    backend_kwargs = args.backend_kwargs
    if args.slurm is not None:
        backend_kwargs = {**slurm_options(args.backend, args.slurm or None),
                          **(backend_kwargs or {})}
    runner = runner_for(args.backend, None if args.slurm is not None else args.workers,
                        backend_kwargs)
    started = time.perf_counter()
    state = ensemble.with_options(task_runner=runner)(
        members=args.members, samples=args.samples, seed=args.seed, cores=args.cores,
        workdir=args.workdir, return_state=True,
    )
    elapsed = time.perf_counter() - started
    settings = get_current_settings()
    command = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    hint = ui_hint(state.state_details.flow_run_id, command, settings.api.url,
                   settings.ui_url, settings.home)
    if not state.is_completed():
        print(hint, file=sys.stderr)
    summary = state.result()  # raises the flow's error if it failed
    for entry in summary["per_member"]:
        print(f"  member {entry['member']:3d}  seed {entry['seed']:6d}  "
              f"pi {entry['pi']:.5f}  on {entry['host']}")
    print(f"{summary['members']} members, {summary['samples']} samples: pi ~ {summary['pi']:.5f} "
          f"(error {summary['error']:.5f}) on {args.backend} in {elapsed:.1f} s; "
          f"outputs in {summary['workdir']}")
    print(hint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
