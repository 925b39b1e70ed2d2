"""Scheduled deployments on a process work pool, end to end, through a real `prefect server`.

    .venv/bin/python -m pytest tests/system/test_deployment.py -q

The session fixtures (tests/fixtures_prefect_server.py) start the server on
127.0.0.1 (SQLite), create the process pool, run `deployments/deploy.py`, start
`prefect worker start` and trigger `prefect deployment run ensemble/ensemble-nightly`.
These tests check the API's view of what happened.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType

from tests.fixtures_prefect_server import POOL, RUN_PARAMETERS, DeploymentRun, log_tail
from tests.helpers import poll

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.timeout(900)]

MEMBERS = RUN_PARAMETERS["members"]
#: simulate + analyse per member, and one aggregate.
EXPECTED_TASK_RUNS = 2 * MEMBERS + 1


@pytest.fixture
def client(ensemble_deployment_run: DeploymentRun) -> Iterator[SyncPrefectClient]:
    with SyncPrefectClient(ensemble_deployment_run.server.api_url) as api:
        yield api


def test_server_started(ensemble_deployment_run: DeploymentRun) -> None:
    server = ensemble_deployment_run.server
    run_seconds = ensemble_deployment_run.trigger_to_final_seconds
    print(f"\nprefect server healthy after {server.start_seconds:.1f} s; "
          f"deployment run trigger -> final state {run_seconds:.1f} s")
    assert server.api_url.startswith("http://127.0.0.1:")
    assert (server.home / "prefect.db").exists(), "the server should use SQLite in PREFECT_HOME"


def test_deploy_script_output(ensemble_deployment_run: DeploymentRun) -> None:
    """One `prefect.deploy()` for both deployments: Prefect's process-pool advice once."""
    output = ensemble_deployment_run.deploy_output
    assert output.count("Looks like you're deploying to a process work pool") == 1, output
    assert output.count("Successfully created/updated all deployments!") == 1, output
    assert "deployment getting-started/getting-started-hourly " in output, output


def test_flow_run_completed(ensemble_deployment_run: DeploymentRun, client: SyncPrefectClient):
    run = client.read_flow_run(ensemble_deployment_run.flow_run_id)
    assert run.state_type == StateType.COMPLETED, (
        f"flow run ended {run.state_type}: {run.state and run.state.message}\n"
        f"--- worker log ---\n{log_tail(ensemble_deployment_run.worker_log)}"
    )
    assert str(run.deployment_id) == ensemble_deployment_run.deployment_id
    assert run.work_pool_name == POOL
    assert run.parameters["members"] == MEMBERS
    assert run.infrastructure_pid, "a process worker records the flow run's process"


def test_all_task_runs_completed(ensemble_deployment_run: DeploymentRun,
                                 client: SyncPrefectClient):
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[ensemble_deployment_run.flow_run_id]))
    task_runs = poll(
        lambda: client.read_task_runs(flow_run_filter=flow_runs),
        lambda runs: len(runs) >= EXPECTED_TASK_RUNS
        and all(r.state_type == StateType.COMPLETED for r in runs),
    )
    names = sorted(r.name.rsplit("-", 1)[0] for r in task_runs)
    assert names == ["aggregate"] + ["analyse"] * MEMBERS + ["simulate"] * MEMBERS
    assert {r.name: r.state_type for r in task_runs} == {
        r.name: StateType.COMPLETED for r in task_runs
    }
    # The analyses record the simulations they read as upstream inputs.
    simulations = {str(r.id) for r in task_runs if r.name.startswith("simulate")}
    for analysis in (r for r in task_runs if r.name.startswith("analyse")):
        upstream = {str(i.id) for i in analysis.task_inputs.get("simulation", [])}
        assert len(upstream) == 1
        assert upstream <= simulations


def test_backend_transitions_and_result_logged(ensemble_deployment_run: DeploymentRun,
                                                client: SyncPrefectClient):
    flow_run_id = ensemble_deployment_run.flow_run_id
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    task_runs = client.read_task_runs(flow_run_filter=flow_runs)

    def logs() -> list[Any]:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )

    def complete(entries: list[Any]) -> bool:
        finished = {str(e.task_run_id) for e in entries if "finished: RHAPSODY COMPLETED"
                    in e.message}
        return len(finished) >= EXPECTED_TASK_RUNS and any("pi ~" in e.message for e in entries)

    entries = poll(logs, complete)
    for run in task_runs:
        messages = [e.message for e in entries if e.task_run_id == run.id]
        for expected in ("finished: RHAPSODY COMPLETED (Prefect Completed); queued ",
                         ", executing +"):
            assert any(m.startswith("Backend 'concurrent' task ") and expected in m
                       for m in messages), (
                f"{run.name} ({run.id}): no {expected!r} in {messages}; all logs: "
                f"{[(str(e.task_run_id), e.message) for e in entries]}")
    summary = [e.message for e in entries if e.message.startswith("pi ~")]
    assert summary, "the flow logs its aggregate"
    assert f"from {MEMBERS * RUN_PARAMETERS['samples']} samples in {MEMBERS} members" in summary[0]
    estimate = float(summary[0].split()[2])
    assert abs(estimate - 3.14159) < 0.1


def test_schedules(ensemble_deployment_run: DeploymentRun, client: SyncPrefectClient):
    ensemble = client.read_deployment_by_name("ensemble/ensemble-nightly")
    crons = [s.schedule.cron for s in ensemble.schedules if hasattr(s.schedule, "cron")]
    intervals = [s.schedule.interval for s in ensemble.schedules
                 if hasattr(s.schedule, "interval")]
    assert crons == ["0 2 * * *"]
    assert intervals == [datetime.timedelta(hours=6)]
    assert all(s.active for s in ensemble.schedules)
    assert ensemble.work_pool_name == POOL
    assert ensemble.job_variables == {"env": {"RHAPSODY_BACKEND": "concurrent"}}

    hourly = client.read_deployment_by_name("getting-started/getting-started-hourly")
    assert [s.schedule.interval for s in hourly.schedules] == [datetime.timedelta(hours=1)]

    # The server's scheduler turns the schedules into future runs (02:00 or every 6 h, UTC).
    scheduled = poll(
        lambda: client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[ensemble.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        ),
        bool,
    )
    assert scheduled, "the scheduler created no runs from the deployment's schedules"
    for run in scheduled:
        start = run.expected_start_time.astimezone(datetime.UTC)
        assert (start.minute, start.second) == (0, 0)
        assert start.hour == 2 or start.hour % 6 == 0, start
