"""The Prefect UI shows a deployment's flow run, its task runs and where their bodies ran.

    .venv/bin/python -m pytest tests/test_ui.py -q      # needs Debian's chromium + playwright

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
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from .fixtures_prefect_server import DeploymentRun

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
