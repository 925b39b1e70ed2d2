"""Dask fixtures (auto-loaded plugin): real clusters, no mocks.

- `dask_cluster`: a module-wide `distributed.LocalCluster` (2 worker processes x 1 thread).
- `dask_backend_spec`: ("dask", {"address": <that cluster's scheduler>}) for the
  contract and Prefect runner suites.
- `dask_process_pair`: a `dask scheduler` + `dask worker` started as subprocesses on
  127.0.0.1 (module scope), reached by `address=`.
- `dask_pair_factory`: starts more such pairs (e.g. one a test may kill); all reaped
  on teardown, with everything they started.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


@dataclass
class DaskPair:
    """A `dask scheduler` + `dask worker` pair running as subprocesses."""

    address: str
    scheduler: subprocess.Popen
    worker: subprocess.Popen
    workdir: pathlib.Path
    descendants: set[int] = field(default_factory=set)

    def snapshot_descendants(self) -> None:
        """Remember every process the pair started (they may outlive their parent)."""
        import psutil

        for proc in (self.scheduler, self.worker):
            with contextlib.suppress(psutil.Error):
                self.descendants.update(
                    p.pid for p in psutil.Process(proc.pid).children(recursive=True)
                )

    def kill_scheduler(self) -> None:
        self.scheduler.kill()
        self.scheduler.wait(10)

    def close(self) -> None:
        import psutil

        self.snapshot_descendants()
        for proc in (self.worker, self.scheduler):
            if proc.poll() is None:
                proc.terminate()
        for proc in (self.worker, self.scheduler):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for pid in self.descendants:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def start_dask_pair(
    workdir: pathlib.Path, nthreads: int = 2, resources: str | None = "CPU=2 GPU=1"
) -> DaskPair:
    """Start `dask scheduler` and one `dask worker` (1 process) on 127.0.0.1."""
    workdir.mkdir(parents=True, exist_ok=True)
    scheduler_file = workdir / "scheduler.json"
    common = {"cwd": str(REPO), "env": _env(), "start_new_session": True}
    with open(workdir / "scheduler.log", "wb") as log:
        scheduler = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(scheduler_file)],
            stdout=log, stderr=subprocess.STDOUT, **common,
        )
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "dask scheduler did not start: " + (workdir / "scheduler.log").read_text()
                )
            time.sleep(0.1)
        time.sleep(0.1)  # the file is written in one go, but be safe
        address = json.loads(scheduler_file.read_text())["address"]
        argv = [str(BIN / "dask"), "worker", address, "--nworkers", "1",
                "--nthreads", str(nthreads), "--no-dashboard", "--host", "127.0.0.1",
                "--death-timeout", "30", "--local-directory", str(workdir)]
        if resources:
            argv += ["--resources", resources]
        with open(workdir / "worker.log", "wb") as log:
            worker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **common)
        pair = DaskPair(address, scheduler, worker, workdir)
        from distributed import Client

        with Client(address, set_as_default=False, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        pair.snapshot_descendants()
        return pair
    except BaseException:
        for proc in (worker, scheduler):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        raise


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[object]:
    """A real LocalCluster: 2 worker processes x 1 thread, shared by a test module.

    Module scope, not session: an idle cluster still costs CPU, and on a 2-core
    machine that slows every later test of the session.
    """
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        host="127.0.0.1",
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _busy_threads(dask_worker) -> int:
    return len(dask_worker.active_threads)


def settle(address: str, grace: float = 2.0) -> None:
    """Leave a shared cluster idle for the next test.

    A cancelled Python function keeps running in its worker thread (threads cannot
    be killed); give such leftovers `grace` seconds, then restart the workers.
    """
    from distributed import Client

    with Client(address, set_as_default=False, timeout="30s") as client:
        deadline = time.monotonic() + grace
        while sum(client.run(_busy_threads).values()):
            if time.monotonic() > deadline:
                client.restart(wait_for_workers=True, timeout=120)
                break
            time.sleep(0.1)


@pytest.fixture
def dask_backend_spec(dask_cluster) -> Iterator[tuple[str, dict]]:
    yield "dask", {"address": dask_cluster.scheduler_address}
    settle(dask_cluster.scheduler_address)


@pytest.fixture
def dask_pair_factory() -> Iterator[Callable[..., DaskPair]]:
    """Start scheduler + worker subprocess pairs; all are reaped on teardown."""
    pytest.importorskip("distributed")
    pairs: list[DaskPair] = []
    root = pathlib.Path(tempfile.mkdtemp(prefix="rhapsody-dask-pair-"))

    def start(**kwargs) -> DaskPair:
        pair = start_dask_pair(root / f"pair-{len(pairs)}", **kwargs)
        pairs.append(pair)
        return pair

    try:
        yield start
    finally:
        for pair in pairs:
            pair.close()


@pytest.fixture(scope="module")
def dask_process_pair() -> Iterator[DaskPair]:
    """A module-wide `dask scheduler` + `dask worker` pair (1 process, 2 threads,
    resources CPU=2 GPU=1) reached by address."""
    pytest.importorskip("distributed")
    pair = start_dask_pair(pathlib.Path(tempfile.mkdtemp(prefix="rhapsody-dask-pair-")))
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def dask_pair_backend_spec(dask_process_pair) -> Iterator[tuple[str, dict]]:
    yield "dask", {"address": dask_process_pair.address}
    settle(dask_process_pair.address)
