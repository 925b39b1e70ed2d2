"""The benchmark's shared environment: an offline Prefect server, a Dask cluster, child env.

One `prefect server` (SQLite, temporary PREFECT_HOME, no analytics, no UI) serves
every measurement, so that each child process does not start its own ephemeral
server. One `LocalCluster(n_workers=2, threads_per_worker=1)` serves both
`RhapsodyRunner("dask")` and `DaskTaskRunner` (same address).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def base_env(home: Path) -> dict[str, str]:
    """Environment variables every benchmark process gets (offline, quiet Prefect)."""
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != str(VENV_BIN):
        path = f"{VENV_BIN}{os.pathsep}{path}"
    env = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p
        ),
        "PATH": path,
        "RADICAL_REPORT": "False",
        "TMPDIR": str(home / "tmp"),
    }
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def prefect_server(env: dict[str, str], log: Path, timeout: float = 240.0) -> Iterator[str]:
    """Run `prefect server start` for the benchmark; yields PREFECT_API_URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    with open(log, "w") as stream:
        process = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(port), "--no-ui"],
            env={**os.environ, **env}, stdout=stream, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{url}/health", timeout=2
            ) as response:
                if response.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        _stop_tree(process.pid)


def server_settle(api_url: str, max_seconds: float = 20.0, threshold: float = 15.0) -> None:
    """Wait (bounded) until the server has digested the last run's events (CPU idle)."""
    port = int(api_url.rsplit(":", 1)[1].split("/")[0])
    servers = [
        p for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "server" in p.info["cmdline"]
        and str(port) in p.info["cmdline"]
    ]
    deadline = time.monotonic() + max_seconds
    while servers and time.monotonic() < deadline:
        busy = 0.0
        for server in servers:
            with contextlib.suppress(psutil.Error):
                busy += server.cpu_percent(interval=None)
        time.sleep(0.5)
        busy = 0.0
        for server in servers:
            with contextlib.suppress(psutil.Error):
                busy += server.cpu_percent(interval=None)
        if busy < threshold:
            return


def _stop_tree(pid: int) -> None:
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        processes = [*parent.children(recursive=True), parent]
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()


@contextlib.contextmanager
def dask_cluster() -> Iterator[Any]:
    """A 2-worker, 1-thread-each LocalCluster (processes) for both Dask rows."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
    )
    try:
        yield cluster
    finally:
        cluster.close()
