"""The radical_pilot backend on the real Slurm cluster (tests/fixtures_slurm.py).

A pilot is one `sbatch` job of RADICAL-Pilot's; its tasks are `srun` steps on n1 and
n2. These tests use the resource configs users write (a `resource_local.json` in the
user's config directory, an inline `resource_config=`), and the failures a batch
system has: a partition that does not exist, a job too large for its partition, a
job that waits too long, a job cancelled with scancel or killed at its walltime, a
client killed with SIGKILL. Pilot sandboxes, RADICAL-Pilot's config and psij's files
go to temporary directories; each test checks that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("radical.pilot")

from rhapsody_prefect import BackendError, ConfigurationError, RhapsodyRunner, TaskError
from rhapsody_prefect.backends.radical_pilot import RadicalPilotBackend
from rhapsody_prefect.backends.radical_pilot.processes import marked_processes
from tests.fixtures_slurm import SlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.radical_pilot]

#: Seconds a pilot may take to become active on this 2-core machine (measured: 56-64 s at
#: load average 15-25, over 420 s at 60).
ACTIVE_DEADLINE = 900


def slurm_entry(cluster: SlurmCluster, sandboxes: pathlib.Path) -> dict[str, Any]:
    """A RADICAL-Pilot resource config entry for the fixture's cluster."""
    return {
        "description": "the test Slurm cluster (scripts/slurm-cluster.sh)",
        "default_schema": "local",
        "schemas": {"local": {"job_manager_endpoint": "slurm://localhost/",
                              "filesystem_endpoint": "file://localhost/"}},
        "default_queue": cluster.partition,
        "resource_manager": "SLURM",
        "agent_scheduler": "CONTINUOUS",
        "agent_spawner": "POPEN",
        "launch_methods": {"order": ["SRUN"], "SRUN": {}},
        "cores_per_node": cluster.cpus_per_node,
        "gpus_per_node": 0,
        "default_remote_workdir": str(sandboxes),
        "rp_version": "installed",
        "virtenv_mode": "local",
        "python_dist": "default",
    }


@pytest.fixture
def user_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
             slurm_cluster: SlurmCluster) -> pathlib.Path:
    """RADICAL_CONFIG_USER_DIR with `resource_local.json` {"slurm": ...}: label local.slurm."""
    home = tmp_path / "user"
    configs = home / ".radical" / "pilot" / "configs"
    configs.mkdir(parents=True)
    entry = slurm_entry(slurm_cluster, tmp_path / "sandboxes")
    (configs / "resource_local.json").write_text(json.dumps({"slurm": entry}))
    monkeypatch.setenv("RADICAL_CONFIG_USER_DIR", str(home))
    return configs


def snapshot(directory: pathlib.Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in directory.iterdir()}


async def run(*argv: str, cwd: pathlib.Path | None = None) -> str:
    done = await asyncio.to_thread(subprocess.run, list(argv), capture_output=True, text=True,
                                   check=True, timeout=30, cwd=cwd)
    return done.stdout


def squeue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i|%T|%r|%Z"], capture_output=True,
                          text=True, check=True, timeout=30).stdout.splitlines()


def wait_queue_empty(timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while (jobs := squeue()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


def job_field(job_id: str, name: str) -> str | None:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                         text=True, timeout=30).stdout
    match = re.search(rf"\b{name}=(\S*)", out)
    return match.group(1) if match else None


def psij_files_of(run_id: str) -> list[str]:
    """Files psij wrote for this run into the real ~/.psij (there should be none)."""
    found = []
    for path in (pathlib.Path.home() / ".psij" / "work").rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_size < 1_000_000 and \
                    run_id in path.read_text(errors="replace"):
                found.append(str(path))
    return found


def assert_nothing_left(backend: RadicalPilotBackend, sandboxes: pathlib.Path) -> None:
    """terminate() left no job, no process, no sandbox, no psij or temp file."""
    run_id = backend.run_id
    assert run_id is not None
    assert wait_queue_empty() == [], "a Slurm job outlived terminate()"
    assert [p.pid for p, _ in marked_processes(run_id)] == []
    assert backend.run_dir is not None and not backend.run_dir.exists()
    assert not list(sandboxes.glob(f"**/{run_id}*")), list(sandboxes.rglob("*"))[:20]
    assert psij_files_of(run_id) == []
    temp = pathlib.Path(tempfile.gettempdir())
    assert not [p for p in temp.glob("rp.agent_cfg.*") if run_id in p.read_text()]


class Told:
    """What the backend told its user, with the times it did."""

    def __init__(self, backend: RadicalPilotBackend) -> None:
        self.lines: list[tuple[float, int, str]] = []
        backend.notices.subscribe(lambda level, msg: self.lines.append((time.time(), level, msg)))

    def text(self) -> str:
        return "\n".join(msg for _, _, msg in self.lines)


@contextlib.contextmanager
def enforce_part_limits(cluster: SlurmCluster, value: str) -> Iterator[None]:
    """Slurm's EnforcePartLimits for a while (`scontrol reconfigure`), then back."""
    original = cluster.conf.read_text()
    cluster.conf.write_text(re.sub(r"(?m)^EnforcePartLimits=\w+", f"EnforcePartLimits={value}",
                                   original))
    subprocess.run(["scontrol", "reconfigure"], check=True, timeout=60)
    try:
        yield
    finally:
        cluster.conf.write_text(original)
        subprocess.run(["scontrol", "reconfigure"], check=True, timeout=60)


async def wait_failed(backend: RadicalPilotBackend, timeout: float) -> BaseException:
    with pytest.raises(TaskError) as info:
        await backend.wait(timeout=timeout)
    return info.value


# ---------------------------------------------------------------- no pilot job
def test_config_is_checked_before_anything_is_submitted(user_dir, tmp_path) -> None:
    with pytest.raises(ConfigurationError) as info:
        RadicalPilotBackend({"resource": "local.slurm", "cores": 2}, work_dir=tmp_path / "w")
    assert info.value.config_key == "raptor"
    assert "A pilot of 2 core(s)" in str(info.value) and "raptor needs 2" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        RadicalPilotBackend({"resource": "local.nosuch", "cores": 2})
    assert info.value.config_key == "resource"
    assert "'local.slurm'" in str(info.value) and str(user_dir) in str(info.value)
    assert squeue() == []


# ---------------------------------------------------------- a pilot on Slurm
@pytest.mark.timeout(1500)
async def test_user_config_pilot_on_both_nodes_mpi_spans_them_scancel_fails_tasks(
    user_dir: pathlib.Path, slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    """Label local.slurm from the user's config dir (used unmodified): tasks on n1 and n2,
    a task of one rank per node launched by srun across both; then scancel of the job."""
    before = snapshot(user_dir)
    nodes, cpus = len(slurm_cluster.nodes), slurm_cluster.cpus_per_node
    backend = RadicalPilotBackend({"resource": "local.slurm", "nodes": nodes, "runtime": 20},
                                  raptor=False, work_dir=tmp_path / "work")
    told = Told(backend)
    assert not backend.local and backend.shape.task_cores == nodes * cpus
    started = time.monotonic()
    try:
        await backend.wait_active(timeout=ACTIVE_DEADLINE)
        active = time.monotonic() - started
        print(f"\npilot active {active:.1f} s after start: {backend.timings}")
        job_id = backend._run.monitor.job_id  # type: ignore[union-attr]
        assert job_id is not None
        rows = [row.split("|") for row in squeue()]
        assert [job_id, "RUNNING"] in [row[:2] for row in rows], rows
        assert f"batch job {job_id}" in told.text() and "is active" in told.text()
        spread = [{"uid": f"where.{i}", "executable": "/bin/sh",
                   "arguments": ["-c", "echo $SLURMD_NODENAME; sleep 3"]}
                  for i in range(nodes * cpus)]
        mpi = {"uid": "mpi", "executable": "/bin/sh", "ranks": nodes, "cores_per_rank": cpus,
               "arguments": ["-c", "echo rank=$SLURM_PROCID node=$SLURMD_NODENAME"]}
        await backend.submit_tasks([*spread, mpi])
        await backend.wait(timeout=300)
        seen = {backend.get_task(t["uid"])["stdout"].strip() for t in spread}
        assert seen == set(slurm_cluster.nodes)
        lines = backend.get_task("mpi")["stdout"].split("\n")
        pairs = [dict(kv.split("=") for kv in line.split()) for line in lines if line]
        assert sorted(int(p["rank"]) for p in pairs) == list(range(nodes)), lines
        assert sorted(p["node"] for p in pairs) == list(slurm_cluster.nodes), lines

        # A batch pilot's whole output and files in and out (issue 23): 200 KB of stdout
        # read from the task sandbox (RP keeps 1,024 characters), an input staged in and an
        # output staged out by RP's directives; a missing input and a taken target fail
        # before anything runs.
        files = tmp_path / "files"
        files.mkdir()
        (files / "in.txt").write_text("batch\n")
        (files / "taken.txt").write_text("keep\n")
        big = {"uid": "big", "executable": "/bin/sh",
               "arguments": ["-c", "head -c 200000 /dev/zero | tr '\\0' b"]}
        staged = {"uid": "staged", "executable": "/bin/sh",
                  "arguments": ["-c", "tr a-z A-Z < in.txt > out.txt"],
                  "input_files": [str(files / "in.txt")],
                  "output_files": [("out.txt", str(files / "member" / "out.txt"))]}
        no_input = {"uid": "no-input", "executable": "/bin/true",
                    "input_files": [str(files / "absent.txt")]}
        taken = {"uid": "taken", "executable": "/bin/true",
                 "output_files": [("x", str(files / "taken.txt"))]}
        await backend.submit_tasks([big, staged, no_input, taken])
        with pytest.raises(TaskError):
            await backend.wait(timeout=300)
        assert big["stdout"] == "b" * 200000
        assert (files / "member" / "out.txt").read_text() == "BATCH\n"
        assert staged["staged_outputs"] == (str(files / "member" / "out.txt"),)
        assert "absent.txt" in str(no_input["exception"])
        assert "taken.txt" in str(taken["exception"])
        assert (files / "taken.txt").read_text() == "keep\n"

        # scancel: the outstanding task fails, naming the batch job's end
        await backend.submit_tasks([{"uid": "long", "executable": "/bin/sleep",
                                     "arguments": ["600"]}])
        await asyncio.sleep(3)
        cancelled = time.monotonic()
        await run("scancel", job_id)
        error = await wait_failed(backend, timeout=120)
        detected = time.monotonic() - cancelled
        print(f"scancel -> task failed: {detected:.1f} s")
        assert detected < 60
        assert isinstance(backend.get_task("long")["exception"], BackendError)
        assert f"batch job {job_id} CANCELLED" in str(error), error
    finally:
        closing = time.monotonic()
        await backend.terminate()
        print(f"terminate: {time.monotonic() - closing:.1f} s")
    assert_nothing_left(backend, tmp_path / "sandboxes")
    assert snapshot(user_dir) == before


@pytest.mark.timeout(1500)
def test_inline_config_raptor_functions_beside_executables_in_a_flow(
    slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    """A self-contained flow file: resource_config= inline, raptor 1 worker x 1 core started
    with the pilot; a function task and an executable run side by side; the flow's log
    follows the pilot (batch job, queue state, active)."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from rhapsody_prefect import RhapsodyRunner, executable_task

    nodes = len(slurm_cluster.nodes)
    runner = RhapsodyRunner(
        "radical_pilot",
        resources={"resource": "mysite.slurm", "nodes": nodes, "runtime": 20},
        resource_config=slurm_entry(slurm_cluster, tmp_path / "sandboxes"),
        raptor={"workers": 1, "cores_per_worker": 1}, work_dir=tmp_path / "work",
    )

    # A rendezvous: each task announces itself and waits (up to 5 min) for the other, so
    # both complete only if a function task and an executable run at the same time.
    mine, theirs = tmp_path / "function-here", tmp_path / "command-here"

    @task
    def meet(here: str, other: str) -> str:
        pathlib.Path(here).touch()
        deadline = time.monotonic() + 300
        while not pathlib.Path(other).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the executable never ran beside this function task")
            time.sleep(0.2)
        return os.environ.get("SLURMD_NODENAME", "?")

    @executable_task
    def meet_command(here: str, other: str) -> list[str]:
        return ["/bin/sh", "-c", f"touch {here}; i=0; while [ ! -e {other} ]; do "
                f"i=$((i+1)); [ $i -gt 1500 ] && exit 3; sleep 0.2; done; "
                "echo $SLURMD_NODENAME"]

    @flow(task_runner=runner)
    def side_by_side() -> tuple[Any, Any, str]:
        from prefect.context import get_run_context

        function = meet.submit(str(mine), str(theirs))
        command = meet_command.submit(str(theirs), str(mine))
        return function.result(), command.result(), str(get_run_context().flow_run.id)

    started = time.monotonic()
    _, command, flow_run_id = side_by_side()
    print(f"\nflow with a pilot on Slurm: {time.monotonic() - started:.1f} s")
    assert command.stdout.strip() in slurm_cluster.nodes
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 60
        while True:
            logs = [log.message for log in client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
            text = "\n".join(logs)
            if "is active" in text or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert "Pilot pilot.0000 on mysite.slurm submitted" in text, text
    assert re.search(r"batch job \d+ (PENDING|RUNNING)", text), text
    assert "is active" in text, text
    assert "waiting: RHAPSODY READY (Prefect Pending); Pilot pilot.0000" in text, text
    assert wait_queue_empty() == []
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    assert not list((tmp_path / "sandboxes").rglob("pilot.0000"))


# ------------------------------------------------------ the batch system says no
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no such partition", "invalid partition specified: nope"),
        ("more cores than the cluster", "More processors requested than permitted"),
    ],
)
async def test_a_job_sbatch_refuses_fails_the_tasks_quoting_sbatch(
    user_dir, slurm_cluster: SlurmCluster, tmp_path: pathlib.Path, case: str, expected: str
) -> None:
    nodes = len(slurm_cluster.nodes)
    resources: dict[str, Any] = {"resource": "local.slurm", "nodes": nodes, "runtime": 10}
    if case == "no such partition":
        resources["queue"] = "nope"
    else:
        resources["nodes"] = nodes + 1
    backend = RadicalPilotBackend(resources, raptor=False, work_dir=tmp_path / "work")
    try:
        await backend.submit_tasks([{"uid": "t", "executable": "/bin/true"}])
        submitted = time.monotonic()
        error = await wait_failed(backend, timeout=120)
        print(f"\n{case}: task failed {time.monotonic() - submitted:.1f} s after submission")
        assert time.monotonic() - submitted < 60
        assert expected in str(error) and "sbatch: error" in str(error), error
        with pytest.raises(BackendError, match=re.escape(expected)):
            await backend.wait_active(timeout=10)
    finally:
        await backend.terminate()
    assert_nothing_left(backend, tmp_path / "sandboxes")


@pytest.mark.timeout(600)
async def test_a_job_that_can_never_start_is_given_up_at_once(
    user_dir, slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    """EnforcePartLimits=NO: Slurm accepts a job larger than the partition; it would pend
    forever with reason PartitionConfig. The backend cancels it and fails the tasks."""
    nodes = len(slurm_cluster.nodes)
    with enforce_part_limits(slurm_cluster, "NO"):
        backend = RadicalPilotBackend({"resource": "local.slurm", "nodes": nodes + 1},
                                      raptor=False, work_dir=tmp_path / "work")
        told = Told(backend)
        try:
            await backend.submit_tasks([{"uid": "t", "executable": "/bin/true"}])
            error = await wait_failed(backend, timeout=120)
            found = [t for t, _, msg in told.lines if "PENDING (reason PartitionConfig" in msg]
            failed = [t for t, level, _ in told.lines if level >= 40]
            print(f"\nPartitionConfig seen -> given up: {failed[0] - found[0]:.1f} s")
            assert failed[0] - found[0] < 60
            assert "PartitionConfig" in str(error) and "cancelled" in str(error), error
        finally:
            await backend.terminate()
    assert_nothing_left(backend, tmp_path / "sandboxes")


@pytest.mark.timeout(600)
async def test_pending_timeout_gives_up_on_a_queued_pilot(
    user_dir, slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    blocker = (await run("sbatch", "--parsable", "-N", str(len(slurm_cluster.nodes)),
                         "--exclusive", "-o", "/dev/null", "--wrap", "sleep 600",
                         cwd=tmp_path)).strip().split(";")[0]
    backend = RadicalPilotBackend({"resource": "local.slurm", "nodes": 1}, raptor=False,
                                  work_dir=tmp_path / "work", pending_timeout=20)
    told = Told(backend)
    try:
        await backend.submit_tasks([{"uid": "t", "executable": "/bin/true"}])
        error = await wait_failed(backend, timeout=180)
        assert "pending_timeout=20 s" in str(error) and "PENDING" in str(error), error
        assert "waits in the batch queue" in told.text()
        assert backend.notices.waiting is None
    finally:
        await backend.terminate()
        await run("scancel", blocker)
    assert_nothing_left(backend, tmp_path / "sandboxes")


@pytest.mark.timeout(900)
async def test_walltime_fails_the_outstanding_tasks_naming_it(
    user_dir, slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    backend = RadicalPilotBackend({"resource": "local.slurm", "nodes": 1, "runtime": 2},
                                  raptor=False, work_dir=tmp_path / "work")
    try:
        await backend.submit_tasks([{"uid": "long", "executable": "/bin/sleep",
                                     "arguments": ["900"]}])
        error = await wait_failed(backend, timeout=420)
        failed = time.time()
        job_id = backend._run.monitor.job_id  # type: ignore[union-attr]
        assert job_id is not None
        assert "walltime" in str(error) or "runtime of 2 min" in str(error), error
        end = job_field(job_id, "EndTime")
        assert job_field(job_id, "JobState") == "TIMEOUT"
        if end:
            ended = time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S"))
            print(f"\njob ended (TIMEOUT) -> task failed: {failed - ended:.1f} s")
            assert failed - ended < 60
    finally:
        await backend.terminate()
    assert_nothing_left(backend, tmp_path / "sandboxes")


CHILD = """
import asyncio, sys
from rhapsody_prefect.backends.radical_pilot import RadicalPilotBackend

async def main():
    backend = RadicalPilotBackend({"resource": "local.slurm", "nodes": 1}, raptor=False,
                                  work_dir=sys.argv[1])
    await backend.start()
    while backend._run.monitor.job_id is None:
        await asyncio.sleep(0.2)
    print(backend._run.monitor.job_id, backend.run_id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.timeout(600)
def test_sigkill_of_the_client_cancels_the_pilot_job(
    user_dir, slurm_cluster: SlurmCluster, tmp_path: pathlib.Path
) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "work")],
                             stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        job_id, run_id = child.stdout.readline().split()  # type: ignore[union-attr]
        assert job_id in [row.split("|")[0] for row in squeue()]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        killed = time.monotonic()
        assert wait_queue_empty(timeout=90) == []
        print(f"\nSIGKILL -> job {job_id} gone: {time.monotonic() - killed:.1f} s")
        deadline = time.monotonic() + 60
        while list(marked_processes(run_id)) and time.monotonic() < deadline:
            time.sleep(1)
        assert [p.pid for p, _ in marked_processes(run_id)] == []
    finally:
        if child.poll() is None:
            child.kill()


def test_the_readme_example_runs_as_written_on_a_slurm_pilot(
    user_dir: pathlib.Path, slurm_cluster: SlurmCluster, tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """issue 23 point 4: `./md-sim` from the flow's directory runs in the pilot's task
    sandboxes on the Slurm nodes (the example's runner pointed at label local.slurm)."""
    from tests.system.test_readme_example import example_flow

    workdir = tmp_path / "project"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    ensemble = example_flow(workdir).with_options(task_runner=RhapsodyRunner(
        "radical_pilot",
        resources={"resource": "local.slurm", "nodes": len(slurm_cluster.nodes), "runtime": 20},
        raptor={"workers": 1, "cores_per_worker": 1}, work_dir=tmp_path / "work"))
    assert ensemble(members=4) == pytest.approx(2.0)
    assert wait_queue_empty() == []
