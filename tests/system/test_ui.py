"""The Prefect UI shows a deployment's flow run, its task runs and where their bodies ran.

    .venv/bin/python -m pytest tests/system/test_ui.py -q   # needs Debian's chromium + playwright

Headless Chromium (`/usr/bin/chromium`, driven by playwright; no browser
download) opens the flow run page of the shared server's ensemble run (see
tests/fixtures_prefect_server.py), checks the run's state, the backend
transition lines in its logs and every task run in the Task Runs tab, and saves
screenshots to a temporary directory. `make screenshot` regenerates the committed
docs/ui-flow-run.png: it sets RHAPSODY_UI_SCREENSHOT to that path, and the test
copies its flow run screenshot there (a plain test run changes no tracked file).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tests.fixtures_prefect_server import DeploymentRun

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.ui, pytest.mark.timeout(900)]

CHROMIUM = os.environ.get("RHAPSODY_CHROMIUM", "/usr/bin/chromium")
#: Where to copy the flow run screenshot (`make screenshot`: docs/ui-flow-run.png); unset: nowhere.
SCREENSHOT_ENV = "RHAPSODY_UI_SCREENSHOT"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is not installed: pip install 'rhapsody-prefect[test]' "
                    "(the Python package only; the browser is Debian's chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()


def test_flow_run_page_shows_task_runs_and_backend(
    ensemble_deployment_run: DeploymentRun, page: Any, tmp_path: pathlib.Path
) -> None:
    server = ensemble_deployment_run.server
    run_id = ensemble_deployment_run.flow_run_id
    with SyncPrefectClient(server.api_url) as client:
        flow_run = client.read_flow_run(run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    assert task_runs, "no task runs to look for"

    try:
        page.goto(f"{server.ui_url}/runs/flow-run/{run_id}")
        # Header: the flow run's name and its final state.
        page.get_by_text(flow_run.name, exact=False).first.wait_for()
        page.get_by_text("Completed").first.wait_for()

        # Logs tab (the default): task run logs with where and how each body ran.
        page.get_by_text("Backend 'concurrent' task simulate-").first.wait_for()
        page.get_by_text("finished: RHAPSODY COMPLETED (Prefect Completed)").first.wait_for()
        page.get_by_text("pi ~").first.wait_for()
        page.wait_for_timeout(1500)  # let the flow graph finish drawing
        shot = tmp_path / "ui-flow-run.png"
        # Header, task graph and the first logs, with the backend transition lines
        # (the app scrolls inside its own container: make the viewport tall).
        page.set_viewport_size({"width": 1440, "height": 1750})
        page.get_by_text("finished: RHAPSODY COMPLETED (Prefect Completed)").first.wait_for()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shot))

        # Task Runs tab: every task run, by name, with its state.
        page.get_by_text("Task Runs", exact=True).first.click()
        for run in task_runs:
            page.get_by_text(run.name, exact=True).first.wait_for()
        body = page.inner_text("body")
        assert body.count("Completed") >= len(task_runs)
        page.screenshot(path=str(tmp_path / "ui-task-runs.png"))

        # A task run's own page shows its backend transitions.
        simulate = next(r for r in task_runs if r.name.startswith("simulate"))
        page.goto(f"{server.ui_url}/runs/task-run/{simulate.id}")
        page.get_by_text(f"Backend 'concurrent' task {simulate.name}.").first.wait_for()

    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(f"\n--- {page.url} ---\n{page.inner_text('body')[:4000]}\n--- {tmp_path}")
        raise
    assert shot.stat().st_size > 10_000, "screenshot looks empty"
    if os.environ.get(SCREENSHOT_ENV):
        target = pathlib.Path(os.environ[SCREENSHOT_ENV])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
        print(f"\nscreenshot saved to {target}")


ENSEMBLE_SCRIPT = """
import sys, time
from prefect import flow, task
from prefect.context import get_run_context
from rhapsody_prefect import RhapsodyRunner, ensemble_map

@task
def nap(i: int) -> int:
    time.sleep(0.1)
    return i

@flow(name="ui-ensemble", task_runner=RhapsodyRunner("concurrent", max_workers=2))
def sweep() -> str:
    assert ensemble_map(nap, range(30), progress_interval=0.5).result() == list(range(30))
    return str(get_run_context().flow_run.id)

print("FLOW-RUN", sweep())
"""


def test_flow_run_page_shows_the_ensemble_artifacts(
    prefect_server: Any, page: Any, tmp_path: pathlib.Path
) -> None:
    """ensemble_map's progress bar and summary table, on the flow run's page."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    script = tmp_path / "ui_ensemble.py"
    script.write_text(ENSEMBLE_SCRIPT)
    done = prefect_server.run(sys.executable, str(script), timeout=300)
    run_id = done.stdout.split("FLOW-RUN", 1)[1].split()[0]
    with SyncPrefectClient(prefect_server.api_url) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    by_type = {artifact.type: artifact for artifact in artifacts}
    assert sorted(by_type) == ["progress", "table"], artifacts
    try:
        page.goto(f"{prefect_server.ui_url}/runs/flow-run/{run_id}")
        page.get_by_text("Completed").first.wait_for()
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("30 of 30 members done").first.wait_for()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "ui-ensemble-artifacts.png"), full_page=True)
        # The summary table, on its artifact's page.
        page.goto(f"{prefect_server.ui_url}/artifacts/artifact/{by_type['table'].id}")
        page.get_by_text("utilisation (busy / available core-seconds)").first.wait_for()
        page.get_by_text("queue time per attempt").first.wait_for()
        body = page.inner_text("body")
        assert "where they ran" in body and "host " in body
        page.screenshot(path=str(tmp_path / "ui-ensemble-summary.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(f"\n--- {page.url} ---\n{page.inner_text('body')[:4000]}\n--- {tmp_path}")
        raise
