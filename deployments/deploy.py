"""Create the example deployments, with schedules, on a Prefect *process* work pool.

    prefect work-pool create rhapsody-process --type process
    python deployments/deploy.py --pool rhapsody-process
    prefect worker start --pool rhapsody-process
    prefect deployment run ensemble/ensemble-nightly --param members=8

Two deployments, both pulling the flow code from this checkout (no image, no
push): `ensemble/ensemble-nightly` (cron, 02:00 UTC every night, plus an
interval every 6 hours) and `getting-started/getting-started-hourly` (interval,
every hour). The worker runs each flow run as a subprocess; the flows' bodies
go to the backend named by `--backend` (passed to the flow run as the
`RHAPSODY_BACKEND` environment variable, a job variable of the process pool).
See deployments/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from uuid import UUID

from prefect import deploy
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import Flow
from prefect.schedules import Schedule

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)

#: name -> (entrypoint, deployment name, schedules, default parameters)
DEPLOYMENTS: dict[str, tuple[str, str, list[Schedule], dict[str, object]]] = {
    "ensemble": (
        "flows/ensemble.py:ensemble",
        "ensemble-nightly",
        [
            Schedule(cron="0 2 * * *", timezone="UTC"),
            Schedule(interval=datetime.timedelta(hours=6), anchor_date=ANCHOR, timezone="UTC"),
        ],
        {"members": 8, "samples": 20_000},
    ),
    "getting-started": (
        "flows/getting_started.py:getting_started",
        "getting-started-hourly",
        [Schedule(interval=datetime.timedelta(hours=1), anchor_date=ANCHOR, timezone="UTC")],
        {"n": 5},
    ),
}

__all__ = ["DEPLOYMENTS", "deploy_all"]


def deploy_all(
    pool: str,
    backend: str = "concurrent",
    source: Path = ROOT,
    paused: bool = False,
    only: list[str] | None = None,
) -> dict[str, UUID]:
    """Create or update the deployments; returns deployment name -> id.

    One `prefect.deploy()` call for all of them: `Flow.deploy()` is that call for a
    single deployment, and each call checks the work pool and prints Prefect's
    "deploying to a process work pool ... calling `.serve`" advice, so one
    `Flow.deploy()` per flow printed it once per deployment.
    """
    deployments: dict[str, RunnerDeployment] = {}
    for flow_name, (entrypoint, name, schedules, parameters) in DEPLOYMENTS.items():
        if only and flow_name not in only:
            continue
        flow = Flow.from_source(source=str(source), entrypoint=entrypoint)
        deployments[f"{flow_name}/{name}"] = flow.to_deployment(
            name=name,
            work_pool_name=pool,
            schedules=schedules,
            paused=paused,
            parameters=parameters,
            job_variables={"env": {"RHAPSODY_BACKEND": backend}},
            tags=["rhapsody", f"backend:{backend}"],
            description=f"{flow_name} on the RHAPSODY {backend!r} backend",
        )
    ids = deploy(*deployments.values(), work_pool_name=pool, build=False, push=False,
                 print_next_steps_message=False)
    if len(ids) != len(deployments):
        # Given several deployments, deploy() prints a failed one in its table instead of
        # raising, and returns only the ids it created.
        raise RuntimeError(f"only {len(ids)} of {len(deployments)} deployments were created "
                           "(see the table above)")
    return dict(zip(deployments, ids, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="rhapsody-process", help="process work pool name")
    parser.add_argument("--backend", default="concurrent",
                        help="RHAPSODY backend the flow runs use (default concurrent)")
    parser.add_argument("--paused", action="store_true", help="create the schedules paused")
    parser.add_argument("--only", action="append", choices=sorted(DEPLOYMENTS),
                        help="deploy only this flow (repeatable)")
    args = parser.parse_args(argv)
    for name, deployment_id in deploy_all(args.pool, args.backend, ROOT, args.paused,
                                          args.only).items():
        print(f"deployment {name} {deployment_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
