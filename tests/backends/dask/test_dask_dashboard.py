"""The dask backend's `dashboard=` option (issue 16): a cluster the backend starts
serves nothing beyond loopback unless asked, and says where its dashboard is.

Staged with `.staging/network/dask.patch`; move to `tests/backends/dask/test_dask_dashboard.py`
when the patch is integrated:

    .venv/bin/python -m pytest tests/backends/dask/test_dask_dashboard.py -v

Real LocalClusters (2 workers x 1 thread, ~3-5 s each) and, when dask-jobqueue is
installed, a real SLURMCluster scheduler (no job is submitted: no worker is asked
for). Listening sockets are those of this process and its children that appeared
after the backend started (other tests' fixtures may hold their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import urllib.request

import psutil
import pytest

import rhapsody_prefect as rhapsody
from rhapsody_prefect import ConfigurationError

pytestmark = pytest.mark.dask
pytest.importorskip("distributed")

LOOPBACK = {"127.0.0.1", "::1"}


def listening() -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN of this process and its children."""
    me = psutil.Process()
    pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.pid in pids and conn.status == psutil.CONN_LISTEN and conn.laddr:
            found.add((conn.pid, conn.laddr.ip, conn.laddr.port))
    return found


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read()


@contextlib.asynccontextmanager
async def started(**kwargs):
    before = listening()
    backend = rhapsody.get_backend("dask", resources={"threads": 2}, **kwargs)
    async with backend:
        await backend.submit_tasks([{"uid": "t", "function": sum, "args": ([1, 2],)}])
        await backend.wait()
        assert backend.get_task("t")["return_value"] == 3
        yield backend, listening() - before


async def test_default_dashboard_off_and_everything_on_loopback() -> None:
    async with started() as (backend, new):
        assert new, "the started cluster listens somewhere"
        assert {ip for _, ip, _ in new} <= LOOPBACK, new
        assert backend.dashboard_link is None
        assert 8787 not in {port for _, _, port in new}, "a free port, not Dask's 8787"


async def test_dashboard_true_on_loopback_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rhapsody_prefect")
    async with started(dashboard=True) as (backend, new):
        link = backend.dashboard_link
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/status", link or "")
        assert match, link
        assert (int(match.group(1))) in {port for _, ip, port in new if ip == "127.0.0.1"}
        assert {ip for _, ip, _ in new} <= LOOPBACK, new
        assert any(link in record.getMessage() for record in caplog.records), caplog.text
        health = await asyncio.to_thread(_get, link.replace("/status", "/health"))
        assert health == b"ok"


async def test_dashboard_address_as_given() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with started(dashboard=f"0.0.0.0:{port}") as (_backend, new):
        exposed = {(ip, p) for _, ip, p in new if ip not in LOOPBACK}
        assert exposed == {("0.0.0.0", port)}, new


async def test_users_cluster_kwargs_win() -> None:
    async with started(cluster_kwargs={"dashboard_address": "127.0.0.1:0"}) as (_backend, new):
        assert {ip for _, ip, _ in new} <= LOOPBACK, new


async def test_in_process_workers_on_loopback() -> None:
    async with started(cluster_kwargs={"processes": False}) as (_backend, new):
        assert new
        assert {ip for _, ip, _ in new} <= LOOPBACK, new


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dashboard": 8787}, "dashboard must be"),
        ({"dashboard": ""}, "dashboard must be"),
        ({"dashboard": True, "address": "tcp://127.0.0.1:8786"}, "cluster the backend starts"),
        ({"dashboard": True, "cluster_kwargs": {"dashboard_address": ":0"}}, "not both"),
    ],
)
def test_dashboard_option_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        rhapsody.get_backend("dask", **kwargs)
    assert raised.value.config_key == "dashboard"


async def test_jobqueue_scheduler_dashboard_on_loopback() -> None:
    """dask-jobqueue's scheduler runs here: its dashboard (":8787" by default) too."""
    pytest.importorskip("dask_jobqueue")
    before = listening()
    backend = rhapsody.get_backend(
        "dask", cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs={"cores": 1, "memory": "1GB", "processes": 1,
                        "scheduler_options": {"host": "127.0.0.1"}},
    )
    async with backend:  # starts the cluster's scheduler; no worker is asked for
        new = listening() - before
        assert new
        assert {ip for _, ip, _ in new} <= LOOPBACK, new
        assert backend.dashboard_link is None
