"""`prefect deploy --all` from deployments/prefect.yaml, end to end, on a PostgreSQL-backed server.

    .venv/bin/python -m pytest tests/system/test_prefect_yaml_deploy.py -q -m slow -s

What a production install does, with real components only: a throwaway
PostgreSQL cluster (Debian's `initdb`/`pg_ctl`, tests/fixtures_prefect_server_postgres.py),
`prefect server start` with its database there, `prefect work-pool create --type process`,
`prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml` from the
repository root, `prefect worker start`, `prefect deployment run`. The checks read the
API, and PostgreSQL itself for the rows the server wrote. Worker, server and cluster
are stopped in teardown; the worker's flow run processes are waited for first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType

from tests.fixtures_prefect_server import (
    BIN,
    ROOT,
    PrefectServer,
    log_tail,
    run_deployment,
    start_group,
    stop_group,
)
from tests.fixtures_prefect_server_postgres import PostgresCluster
from tests.helpers import poll

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.timeout(900)]

PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
CONFIG = yaml.safe_load(PREFECT_FILE.read_text())
POOL = CONFIG["deployments"][0]["work_pool"]["name"]
DEPLOYMENT = "ensemble/ensemble-nightly"
MEMBERS = 2
#: simulate + analyse per member, and one aggregate.
EXPECTED_TASK_RUNS = 2 * MEMBERS + 1


@dataclasses.dataclass
class YamlDeploymentRun:
    server: PrefectServer
    postgres: PostgresCluster
    deploy_output: str
    deploy_seconds: float
    flow_run_id: str
    state: str
    trigger_to_final_seconds: float
    worker_log: pathlib.Path


@pytest.fixture(scope="module")
def yaml_deployment_run(prefect_server_postgres: PrefectServer,
                        postgres_cluster: PostgresCluster) -> YamlDeploymentRun:
    server = prefect_server_postgres
    env = {**server.env, "PREFECT_CLI_PROMPT": "false"}
    server.run(str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process",
               "--overwrite")
    started = time.monotonic()
    deployed = server.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all",
                          "--prefect-file", str(PREFECT_FILE.relative_to(ROOT)), timeout=300)
    deploy_seconds = time.monotonic() - started

    worker_log = server.home.parent / "worker.log"
    worker = start_group(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
        env, worker_log,
    )
    try:
        flow_run_id, state, elapsed = run_deployment(
            server, DEPLOYMENT, ["--param", f"members={MEMBERS}", "--param", "samples=2000"],
            worker, worker_log)
    finally:
        stop_group(worker)
    print(f"\nPostgreSQL cluster ready in {postgres_cluster.start_seconds:.1f} s; prefect "
          f"server on it healthy in {server.start_seconds:.1f} s; `prefect deploy --all` "
          f"{deploy_seconds:.1f} s; deployment run trigger -> {state} {elapsed:.1f} s")
    return YamlDeploymentRun(
        server=server, postgres=postgres_cluster, deploy_output=deployed.stdout,
        deploy_seconds=deploy_seconds, flow_run_id=flow_run_id, state=state,
        trigger_to_final_seconds=elapsed, worker_log=worker_log,
    )


@pytest.fixture
def client(yaml_deployment_run: YamlDeploymentRun) -> Iterator[SyncPrefectClient]:
    with SyncPrefectClient(yaml_deployment_run.server.api_url) as api:
        yield api


def test_deploy_all_created_the_yaml_deployments(yaml_deployment_run: YamlDeploymentRun,
                                                 client: SyncPrefectClient) -> None:
    output = yaml_deployment_run.deploy_output
    for spec in CONFIG["deployments"]:
        flow_name = {"flows/ensemble.py:ensemble": "ensemble",
                     "flows/getting_started.py:getting_started": "getting-started"}[
                         spec["entrypoint"]]
        assert f"Deployment '{flow_name}/{spec['name']}' successfully created" in output, output
        deployment = client.read_deployment_by_name(f"{flow_name}/{spec['name']}")
        assert deployment.entrypoint == spec["entrypoint"]
        assert deployment.work_pool_name == POOL
        assert deployment.parameters == spec["parameters"]
        assert deployment.job_variables == spec["work_pool"]["job_variables"]
        assert sorted(deployment.tags) == sorted(spec["tags"])
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
            "directory": str(ROOT)}}], "flow runs start in the checkout `prefect deploy` ran in"
        crons = sorted(s.schedule.cron for s in deployment.schedules
                       if hasattr(s.schedule, "cron"))
        intervals = sorted(s.schedule.interval for s in deployment.schedules
                           if hasattr(s.schedule, "interval"))
        assert crons == sorted(s["cron"] for s in spec["schedules"] if "cron" in s)
        assert intervals == sorted(datetime.timedelta(seconds=s["interval"])
                                   for s in spec["schedules"] if "interval" in s)
        assert all(s.active for s in deployment.schedules)
        assert {s.schedule.timezone for s in deployment.schedules} == {"UTC"}


def test_deployment_run_completed_with_task_runs(yaml_deployment_run: YamlDeploymentRun,
                                                 client: SyncPrefectClient) -> None:
    run = client.read_flow_run(UUID(yaml_deployment_run.flow_run_id))
    assert run.state_type == StateType.COMPLETED, (
        f"flow run ended {run.state_type}: {run.state and run.state.message}\n"
        f"--- worker log ---\n{log_tail(yaml_deployment_run.worker_log)}"
    )
    assert run.work_pool_name == POOL
    assert run.parameters["members"] == MEMBERS
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
    task_runs = poll(
        lambda: client.read_task_runs(flow_run_filter=flow_runs),
        lambda runs: len(runs) >= EXPECTED_TASK_RUNS
        and all(r.state_type == StateType.COMPLETED for r in runs),
    )
    names = sorted(r.name.rsplit("-", 1)[0] for r in task_runs)
    assert names == ["aggregate"] + ["analyse"] * MEMBERS + ["simulate"] * MEMBERS
    assert all(r.state_type == StateType.COMPLETED for r in task_runs), [
        (r.name, r.state_type) for r in task_runs]


def test_server_database_is_postgres(yaml_deployment_run: YamlDeploymentRun) -> None:
    """The server wrote the run to PostgreSQL, not to a SQLite file in its home."""
    cluster = yaml_deployment_run.postgres
    assert not (yaml_deployment_run.server.home / "prefect.db").exists()

    async def rows() -> dict[str, Any]:
        connection = await asyncpg.connect(cluster.url.replace("postgresql+asyncpg", "postgresql"))
        try:
            flow_run = await connection.fetchrow(
                "SELECT state_type, parameters FROM flow_run WHERE id = $1",
                UUID(yaml_deployment_run.flow_run_id))
            task_runs = await connection.fetchval(
                "SELECT count(*) FROM task_run WHERE flow_run_id = $1",
                UUID(yaml_deployment_run.flow_run_id))
            deployments = await connection.fetchval("SELECT count(*) FROM deployment")
        finally:
            await connection.close()
        return {"flow_run": flow_run, "task_runs": task_runs, "deployments": deployments}

    found = poll(lambda: asyncio.run(rows()), lambda r: r["task_runs"] >= EXPECTED_TASK_RUNS)
    assert found["flow_run"] is not None, "no flow_run row in PostgreSQL"
    assert found["flow_run"]["state_type"] == "COMPLETED"
    parameters = found["flow_run"]["parameters"]  # jsonb: asyncpg returns its text
    if isinstance(parameters, str):
        parameters = json.loads(parameters)
    assert parameters["members"] == MEMBERS
    assert found["task_runs"] == EXPECTED_TASK_RUNS
    assert found["deployments"] == len(CONFIG["deployments"])
