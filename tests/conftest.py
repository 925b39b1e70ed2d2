"""Shared test set-up: an isolated, offline Prefect home and backend specs.

Backend-specific fixtures live in `tests/fixtures_<backend>.py` and are loaded
as plugins. Each provides a `<backend>_backend_spec` fixture returning
`(registry_name, constructor_kwargs)`, which the parametrised contract suite
(`test_backend_contract.py`) and the Prefect runner suite use.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

_HOME = pathlib.Path(tempfile.mkdtemp(prefix="rhapsody-prefect-tests-"))
# Must be set before prefect is imported anywhere in the test session.
os.environ.setdefault("PREFECT_HOME", str(_HOME / "prefect"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

pytest_plugins = sorted(
    f"tests.{path.stem}" for path in pathlib.Path(__file__).parent.glob("fixtures_*.py")
)


@pytest.fixture
def concurrent_thread_backend_spec() -> tuple[str, dict]:
    return "concurrent", {"max_workers": 2, "executor": "thread"}


@pytest.fixture
def concurrent_process_backend_spec() -> tuple[str, dict]:
    return "concurrent", {"max_workers": 2, "executor": "process"}


#: Every backend configuration the contract and runner suites run against.
BACKEND_SPECS = [
    pytest.param("concurrent_thread", id="concurrent-thread"),
    pytest.param("concurrent_process", id="concurrent-process"),
    pytest.param("dask", id="dask", marks=pytest.mark.dask),
    pytest.param(
        "radical_pilot", id="radical_pilot", marks=[pytest.mark.radical_pilot, pytest.mark.slow]
    ),
]


@pytest.fixture
def backend_spec(request: pytest.FixtureRequest) -> tuple[str, dict]:
    """(name, kwargs) for the backend named by the test's `backend_spec` param."""
    return request.getfixturevalue(f"{request.param}_backend_spec")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Print a failure as it happens: a CI run cut off by its time limit still shows why."""
    if report.failed and os.environ.get("CI"):
        print(f"\n=== FAILED {report.nodeid} ({report.when}, {report.duration:.0f} s)")
        print(report.longreprtext[-6000:], flush=True)
