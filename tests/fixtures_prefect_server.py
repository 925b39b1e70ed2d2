"""A real `prefect server` on loopback, a process work pool, a deployment and a worker run.

    def test_something(prefect_server):            # the server: api_url, ui_url, env
        ...

    def test_run(ensemble_deployment_run):         # a finished run of ensemble/ensemble-nightly
        assert ensemble_deployment_run.state == "COMPLETED"

Both fixtures are session-scoped, so `test_deployment.py` and `test_ui.py`
share one server (SQLite in a temporary `PREFECT_HOME`) and one flow run.
Every process started here (server, worker and the worker's flow runs) runs in
its own process group and is stopped in the fixture's teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
POOL = "rhapsody-process"
DEPLOYMENT = "ensemble/ensemble-nightly"
RUN_PARAMETERS = {"members": 3, "samples": 5000}
SERVER_START_TIMEOUT = 180.0
RUN_TIMEOUT = 300.0


@dataclasses.dataclass
class PrefectServer:
    api_url: str
    ui_url: str
    home: pathlib.Path
    env: dict[str, str]
    log: pathlib.Path
    start_seconds: float

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a command against this server; fail the test with its output if it fails."""
        done = subprocess.run(
            list(args), env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            pytest.fail(f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done


@dataclasses.dataclass
class DeploymentRun:
    server: PrefectServer
    deployment_id: str
    flow_run_id: str
    state: str
    trigger_to_final_seconds: float
    worker_log: pathlib.Path
    #: stdout and stderr of `python deployments/deploy.py`
    deploy_output: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_group(argv: list[str], env: dict[str, str], log: pathlib.Path) -> subprocess.Popen[Any]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def stop_group(process: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def log_tail(path: pathlib.Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def server_env(home: pathlib.Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.5",
        DO_NOT_TRACK="1",
        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def wait_healthy(api_url: str, process: subprocess.Popen[Any], log: pathlib.Path,
                 timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prefect server exited {process.returncode}:\n{log_tail(log)}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{api_url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout:.0f} s:\n{log_tail(log)}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`prefect server start` on 127.0.0.1 with SQLite in a temporary PREFECT_HOME."""
    base = tmp_path_factory.mktemp("prefect-server")
    home = base / "home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = base / "server.log"
    env = server_env(home)
    # The UI asks this address for the API (the default is port 4200).
    env["PREFECT_UI_API_URL"] = api_url
    started = time.monotonic()
    process = start_group(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env, log,
    )
    try:
        wait_healthy(api_url, process, log, SERVER_START_TIMEOUT)
        yield PrefectServer(
            api_url=api_url, ui_url=f"http://127.0.0.1:{port}", home=home,
            env=server_env(home, api_url), log=log,
            start_seconds=time.monotonic() - started,
        )
    finally:
        stop_group(process)


def wait_process_exit(infrastructure_pid: str | None, timeout: float = 60.0) -> None:
    """Wait for a process worker's flow run process ("host:pid") to end."""
    if not infrastructure_pid:
        return
    pid = int(str(infrastructure_pid).rsplit(":", 1)[-1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)


def _read_flow_run(api_url: str, flow_run_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api_url}/flow_runs/{flow_run_id}", timeout=10) as response:
        return json.loads(response.read())


def run_deployment(
    server: PrefectServer,
    deployment: str,
    params: list[str],
    worker: subprocess.Popen[bytes],
    worker_log: pathlib.Path,
) -> tuple[str, str, float]:
    """Trigger `deployment` and wait for its flow run's final state (RUN_TIMEOUT).

    Returns (flow run id, final state type, seconds from trigger to that state);
    fails the test if the worker exits meanwhile.
    """
    triggered = time.monotonic()
    out = server.run(str(BIN / "prefect"), "deployment", "run", deployment, *params)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout)
    assert match, f"no flow run id in `prefect deployment run` output:\n{out.stdout}"
    flow_run_id = match.group(1)
    deadline = time.monotonic() + RUN_TIMEOUT
    state = "SCHEDULED"
    while time.monotonic() < deadline:
        state = (_read_flow_run(server.api_url, flow_run_id).get("state") or {}).get(
            "type", "UNKNOWN")
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        if worker.poll() is not None:
            pytest.fail(f"worker exited {worker.returncode}:\n{log_tail(worker_log)}")
        time.sleep(1)
    elapsed = time.monotonic() - triggered
    # The flow run process sends its last logs after its final state: let it
    # exit before the worker's process group is stopped.
    wait_process_exit(_read_flow_run(server.api_url, flow_run_id).get("infrastructure_pid"))
    return flow_run_id, state, elapsed


@pytest.fixture(scope="session")
def ensemble_deployment_run(prefect_server: PrefectServer) -> DeploymentRun:
    """Pool, deployments (with schedules), a worker, one triggered run of the ensemble."""
    server = prefect_server
    server.run(str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process",
               "--overwrite")
    deployed = server.run(str(BIN / "python"), "deployments/deploy.py", "--pool", POOL,
                          timeout=180)
    ids = dict(line.split()[1:3] for line in deployed.stdout.splitlines()
               if line.startswith("deployment "))
    assert DEPLOYMENT in ids, deployed.stdout

    worker_log = server.home.parent / "worker.log"
    worker = start_group(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
        server.env, worker_log,
    )
    try:
        params = [arg for key, value in RUN_PARAMETERS.items()
                  for arg in ("--param", f"{key}={value}")]
        flow_run_id, state, elapsed = run_deployment(server, DEPLOYMENT, params, worker,
                                                     worker_log)
    finally:
        stop_group(worker)
    return DeploymentRun(
        server=server, deployment_id=ids[DEPLOYMENT], flow_run_id=flow_run_id, state=state,
        trigger_to_final_seconds=elapsed, worker_log=worker_log,
        deploy_output=deployed.stdout + deployed.stderr,
    )
