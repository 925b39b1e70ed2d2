"""`rhapsody-prefect backends` and `rhapsody-prefect doctor`.

    .venv/bin/python -m pytest tests/system/test_cli.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rhapsody_prefect import discover_backends, list_backends, why_unavailable
from rhapsody_prefect.backends.discovery import BackendRegistry
from rhapsody_prefect.cli import main
from tests.fixtures_prefect_server import free_port

SCRIPT = Path(sys.executable).parent / "rhapsody-prefect"


@pytest.fixture
def broken_backend() -> Iterator[str]:
    """A registered backend whose module does not exist."""
    name = "broken_for_cli_test"
    BackendRegistry.register_backend(name, "no_such_module_for_rhapsody:Backend")
    try:
        yield name
    finally:
        BackendRegistry._backends.pop(name, None)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_backends_table_matches_discovery(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["BACKEND", "AVAILABLE", "DETAILS"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows == {name: "yes" if ok else "no" for name, ok in discover_backends().items()}
    assert set(rows) >= {"concurrent", "dask", "radical_pilot"}


def test_backends_gives_reason_for_unavailable(broken_backend: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == list_backends()
    assert rows[broken_backend]["available"] is False
    assert rows[broken_backend]["detail"] == why_unavailable(broken_backend)
    assert "no_such_module_for_rhapsody" in rows[broken_backend]["detail"]
    assert rows["concurrent"]["available"] is True


def test_console_script_backends() -> None:
    assert SCRIPT.exists(), "pip install -e . installs the rhapsody-prefect script"
    done = run_cli("backends")
    assert done.returncode == 0, done.stderr
    assert "concurrent" in done.stdout
    assert "radical_pilot" in done.stdout


def test_doctor_passes_here(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    checks = {(c["area"], c["name"]): c for c in report["checks"]}
    assert checks[("concurrent", "available")]["required"] is True
    assert checks[("machine", "cpus")]["detail"].startswith(f"{len(os.sched_getaffinity(0))} ")
    assert ("machine", "gpus") in checks
    assert ("prefect", "api") in checks
    for area in ("dask", "radical_pilot"):
        assert (area, "available") in checks
    assert ("radical_pilot", "mpi launcher") in checks
    mpi = checks[("radical_pilot", "mpi launcher")]
    assert (mpi["status"] == "ok") == any(shutil.which(x) for x in ("mpiexec", "mpirun", "srun"))


def test_importing_the_cli_imports_no_radical_pilot() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, rhapsody_prefect.cli; "
         "print(sorted(m for m in sys.modules if m.startswith(('radical', "
         "'rhapsody_prefect.backends.radical_pilot'))))"],
        capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_doctor_checks_the_helpers_the_backend_requires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processes = pytest.importorskip("rhapsody_prefect.backends.radical_pilot.processes")
    from rhapsody_prefect.cli import _check_radical_pilot

    helpers = {c.name: c for c in _check_radical_pilot(required=False)}["helpers"]
    assert (helpers.status == "ok") == (not processes.helpers_missing())
    for name in processes.REQUIRED_HELPERS:
        assert name in helpers.detail
    # The backend does not import: the helpers are not checked, and that is said.
    monkeypatch.setitem(sys.modules, "rhapsody_prefect.backends.radical_pilot.processes", None)
    helpers = {c.name: c for c in _check_radical_pilot(required=False)}["helpers"]
    assert helpers.status == "warn" and helpers.detail.startswith("not checked: ")


def test_doctor_fails_when_required_backend_missing(
    broken_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not asked for: a warning, exit 0.
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"WARN    {broken_backend}" in out
    # Asked for: required, exit 1, and the reason is printed.
    assert main(["doctor", "--backend", broken_backend]) == 1
    out = capsys.readouterr().out
    assert f"FAIL*   {broken_backend}" in out
    assert "no_such_module_for_rhapsody" in out
    assert f"{broken_backend}/available" in out


def test_doctor_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--backend", "nope"]) == 2
    assert "Unknown backend(s) ['nope']" in capsys.readouterr().err


def test_doctor_fails_when_api_unreachable() -> None:
    env = dict(os.environ, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    done = run_cli("doctor", "--api-timeout", "2", env=env)
    assert done.returncode == 1, done.stdout
    assert "does not answer /health" in done.stdout
    assert "prefect/api" in done.stdout


@pytest.mark.slow
@pytest.mark.server
def test_doctor_checks_reachable_api(prefect_server) -> None:
    done = run_cli("doctor", env=prefect_server.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{prefect_server.api_url} answers /health" in done.stdout
