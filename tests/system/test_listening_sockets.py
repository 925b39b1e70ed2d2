"""Nothing a flow starts listens beyond loopback unless the user configured it (issue 16).

    PATH=$PWD/.venv/bin:$PATH VIRTUAL_ENV=$PWD/.venv \\
        .venv/bin/python -m pytest tests/system/test_listening_sockets.py -m "slow or not slow" -v

Each case runs a real flow with `RhapsodyRunner(<backend>, ...)` in a fresh Python
process (its own temporary directory and Prefect home, so its ephemeral Prefect API
server is one of its children). While the flow runs, the test lists every listening
socket of that process and everything it started, over and over (about 3 times a
second): TCP sockets in LISTEN and UDP sockets with no remote address, from
`psutil.net_connections(kind="inet")`. "Everything it started" is the flow process,
all its descendants (`psutil.Process.children(recursive=True)`) and every process
whose working directory is inside the case's temporary directory: RADICAL-Pilot's
bridges daemonize (their parent becomes pid 1), so they are no descendants, but
they work in the run directory. The tasks (two Python functions and one
executable) sleep a few seconds, so several samples fall while they run.

A case fails, listing pid, process name, protocol, address and command line, on
any address other than 127.0.0.1 and ::1 that the case did not configure. The
dask case that configures its dashboard on 0.0.0.0 checks that an explicit
setting is allowed (and seen).

The Slurm case (`slurm` marker: root and the test cluster) runs the flow on a batch
pilot with `network_interface="lo"`, its sandbox under the case's directory so the
agent's processes are sampled too; Slurm's own `srun` processes are listed but allowed
(they bind all interfaces whatever RP does; docs/network.md).

Before the fixes the dask and radical_pilot cases failed (a started cluster's
dashboard on 0.0.0.0:8787, RP's ZMQ bridges on 0.0.0.0); `-rA` prints what each
case saw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

LOOPBACK = frozenset({"127.0.0.1", "::1"})
SAMPLE_INTERVAL = 0.3
#: Samples that must fall while the tasks run (all started, flow not finished).
MIN_SAMPLES_WHILE_RUNNING = 3
BIN = Path(sys.executable).parent

#: The flow a case runs, in its own Python process: argv[1] is a JSON spec.
FLOW_SCRIPT = textwrap.dedent('''
    """Listening-sockets probe flow: two function tasks and one executable task hold
    for `seconds` each; the functions leave a marker file when they start."""
    import json
    import pathlib
    import sys

    from prefect import flow, task

    from rhapsody_prefect import RhapsodyRunner, executable_task

    SPEC = json.loads(sys.argv[1])


    @task
    def hold(index: int, seconds: float, markers: str) -> int:
        import pathlib
        import time

        pathlib.Path(markers, f"started-{index}").touch()
        time.sleep(seconds)
        return index


    @executable_task
    def hold_command(seconds: float) -> list[str]:
        return ["sleep", str(seconds)]


    @flow(task_runner=RhapsodyRunner(SPEC["backend"], **SPEC["kwargs"]))
    def listening_probe(seconds: float, markers: str) -> list[int]:
        functions = [hold.submit(i, seconds, markers) for i in range(2)]
        command = hold_command.submit(seconds)
        values = [future.result() for future in functions]
        assert command.result().exit_code == 0
        return values


    if __name__ == "__main__":
        values = listening_probe(SPEC["seconds"], SPEC["markers"])
        assert values == [0, 1], values
        pathlib.Path(SPEC["markers"], "done").touch()
''')


# ------------------------------------------------------------------- sampling
class ExposedSockets(AssertionError):
    """Sockets listen beyond loopback without being configured (what the xfails expect;
    any other failure, e.g. a flow that hangs, fails those cases for real)."""


@dataclasses.dataclass(frozen=True)
class Listener:
    """One listening socket of one process (name and command line as first seen)."""

    pid: int
    name: str
    proto: str
    ip: str
    port: int
    cmdline: str
    #: the process's working directory (RP's agent-side processes work in the sandbox)
    cwd: str = ""

    def __str__(self) -> str:
        address = f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"
        return f"pid {self.pid} ({self.name}) {self.proto} {address}  <- {self.cmdline}"


def processes_of(root_pid: int, workdir: Path) -> dict[int, psutil.Process]:
    """`root_pid`, its descendants, and every process working inside `workdir`."""
    procs: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(root_pid)
        procs[root.pid] = root
        for child in root.children(recursive=True):
            procs[child.pid] = child
    prefix = str(workdir.resolve()) + os.sep
    for proc in psutil.process_iter():
        if proc.pid in procs:
            continue
        with contextlib.suppress(psutil.Error, OSError):  # gone meanwhile
            if (proc.cwd() + os.sep).startswith(prefix):
                procs[proc.pid] = proc
    return procs


def listeners(procs: dict[int, psutil.Process]) -> dict[tuple[int, str, str, int], Listener]:
    """Every TCP socket in LISTEN and every UDP socket without a remote address,
    by (pid, protocol, ip, port)."""
    found: dict[tuple[int, str, str, int], Listener] = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid not in procs or not conn.laddr:
            continue
        tcp_listen = conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN
        udp_unconnected = conn.type == socket.SOCK_DGRAM and not conn.raddr
        if not (tcp_listen or udp_unconnected):
            continue
        proc = procs[conn.pid]
        try:
            name, cmdline = proc.name(), " ".join(proc.cmdline())[:160]
        except psutil.Error:
            name, cmdline = "?", "?"
        try:
            cwd = proc.cwd()
        except (psutil.Error, OSError):
            cwd = ""
        proto = "tcp" if tcp_listen else "udp"
        key = (conn.pid, proto, conn.laddr.ip, conn.laddr.port)
        found[key] = Listener(conn.pid, name, proto, conn.laddr.ip, conn.laddr.port, cmdline,
                              cwd)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------- the runs
@dataclasses.dataclass
class ProbeRun:
    listeners: set[Listener]
    samples: int
    samples_while_running: int
    returncode: int
    output: str
    #: what `after_exit` returned (called once the flow process ended, before the reap)
    after: Any = None


@pytest.fixture(scope="module")
def prefect_home() -> Iterator[Path]:
    """One Prefect home for all cases: the first flow pays for the database set-up."""
    with tempfile.TemporaryDirectory(prefix="rhapsody-listening-prefect-") as home:
        yield Path(home)


def _reap(workdir: Path) -> None:
    """Kill what a case left running (only processes working inside its directory)."""
    prefix = str(workdir.resolve()) + os.sep
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if (proc.cwd() + os.sep).startswith(prefix):
                proc.kill()
                left.append(proc)
    psutil.wait_procs(left, timeout=10)


def run_probe(backend: str, kwargs: dict[str, Any], prefect_home: Path, tmp_path: Path,
              seconds: float, timeout: float,
              after_exit: Callable[[], Any] | None = None) -> ProbeRun:
    """Run the probe flow in a fresh process and sample its listening sockets.

    The case's directory is `tmp_path / "run"` (the flow's cwd); `after_exit` runs
    when the flow process has ended, before what it left in that directory is killed.
    """
    workdir = tmp_path / "run"
    markers = workdir / "markers"
    markers.mkdir(parents=True)
    script = workdir / "listening_probe.py"
    script.write_text(FLOW_SCRIPT)
    spec = {"backend": backend, "kwargs": kwargs, "seconds": seconds, "markers": str(markers)}
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(prefect_home),
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    env.pop("PREFECT_API_URL", None)
    log = workdir / "flow.log"
    seen: dict[tuple[int, str, str, int], Listener] = {}
    samples = while_running = 0
    after = None
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(script), json.dumps(spec)], cwd=workdir, env=env,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait(30)
                pytest.fail(f"the {backend} probe flow did not finish in {timeout:.0f} s:\n"
                            + log.read_text(errors="replace")[-4000:])
            running = (all((markers / f"started-{i}").exists() for i in range(2))
                       and not (markers / "done").exists())
            for key, listener in listeners(processes_of(process.pid, workdir)).items():
                seen.setdefault(key, listener)
            samples += 1
            while_running += running
            time.sleep(SAMPLE_INTERVAL)
        if after_exit is not None:
            after = after_exit()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        _reap(workdir)
    return ProbeRun(set(seen.values()), samples, while_running, process.returncode,
                    log.read_text(errors="replace"), after)


def check_listeners(run: ProbeRun, allowed: set[tuple[str, int]] = frozenset(),
                    allowed_names: frozenset[str] = frozenset()) -> None:
    """The run finished, was sampled while its tasks ran, and listened on loopback only
    (or on an address in `allowed`: (ip, port) pairs the case configured; or in a
    process named in `allowed_names`: not ours to bind, printed and documented)."""
    print(f"{run.samples} samples, {run.samples_while_running} while the tasks ran; listening:")
    for lst in sorted(run.listeners, key=lambda lst: (lst.pid, lst.port)):
        print(f"  {lst}")
    assert run.returncode == 0, f"the probe flow failed:\n{run.output[-4000:]}"
    assert run.samples_while_running >= MIN_SAMPLES_WHILE_RUNNING, (
        f"only {run.samples_while_running} of {run.samples} samples fell while the tasks ran"
    )
    assert run.listeners, "no listening socket seen at all (not even the Prefect API server)"
    exposed = sorted(
        (lst for lst in run.listeners
         if lst.ip not in LOOPBACK and (lst.ip, lst.port) not in allowed
         and lst.name not in allowed_names),
        key=lambda lst: (lst.pid, lst.port),
    )
    if exposed:
        raise ExposedSockets(
            f"{len(exposed)} socket(s) listen beyond loopback without being configured:\n  "
            + "\n  ".join(map(str, exposed))
        )


# ---------------------------------------------------------------------- cases
CASES = [
    pytest.param("concurrent", {"max_workers": 2, "executor": "thread"}, 4.0, 180.0,
                 id="concurrent-thread"),
    pytest.param("concurrent", {"max_workers": 2, "executor": "process"}, 4.0, 180.0,
                 id="concurrent-process"),
    pytest.param("dask", {"resources": {"threads": 2}}, 4.0, 240.0, id="dask",
                 marks=[pytest.mark.dask]),
    # A local pilot starts in 20-45 s on a quiet machine, 90 s and more on a loaded one.
    pytest.param("radical_pilot", {}, 8.0, 780.0, id="radical_pilot",
                 marks=[pytest.mark.radical_pilot, pytest.mark.timeout(900)]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "kwargs", "seconds", "timeout"), CASES)
def test_only_loopback_listens(backend: str, kwargs: dict[str, Any], seconds: float,
                               timeout: float, prefect_home: Path, tmp_path: Path) -> None:
    if backend != "concurrent":
        pytest.importorskip("distributed" if backend == "dask" else "radical.pilot")
    run = run_probe(backend, kwargs, prefect_home, tmp_path, seconds, timeout)
    check_listeners(run)


@pytest.mark.slow
@pytest.mark.dask
def test_configured_dashboard_may_listen_everywhere(prefect_home: Path, tmp_path: Path) -> None:
    """A dashboard the user put on 0.0.0.0 is theirs to expose; nothing else may be."""
    pytest.importorskip("distributed")
    port = free_port()
    kwargs = {"resources": {"threads": 2},
              "cluster_kwargs": {"dashboard_address": f"0.0.0.0:{port}"}}
    run = run_probe("dask", kwargs, prefect_home, tmp_path, 4.0, 240.0)
    check_listeners(run, allowed={("0.0.0.0", port)})
    assert ("0.0.0.0", port) in {(lst.ip, lst.port) for lst in run.listeners}, (
        f"the configured dashboard 0.0.0.0:{port} was never seen listening"
    )


# ------------------------------------------------------- a pilot on Slurm
#: Slurm's own client: `srun` (the agent's launcher for raptor and executables) listens
#: for its step's messages and I/O on all interfaces (no bind-address setting found in
#: Slurm 22.05; `SrunPortRange` limits the ports). Not RADICAL-Pilot's, not ours to
#: bind: printed, and documented in docs/network.md.
SLURM_OWN_LISTENERS = frozenset({"srun"})


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.radical_pilot
@pytest.mark.timeout(2400)
def test_slurm_pilot_with_network_interface_lo_listens_on_loopback_only(
    slurm_cluster: Any, prefect_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`network_interface="lo"` on a batch pilot: the client's endpoints (flow process,
    what it forks, the bridges RP starts from PATH) and the agent's (on the job's first
    node, the sandbox under the case's directory, so its processes are sampled) all
    listen on 127.0.0.1; raptor function tasks and an executable run meanwhile; no
    Slurm job outlives the flow."""
    pytest.importorskip("radical.pilot")
    from tests.backends.radical_pilot.test_slurm_radical_pilot import (
        slurm_entry,
        squeue,
        wait_queue_empty,
    )

    assert squeue() == [], "the cluster is busy with another test's job"
    sandboxes = tmp_path / "run" / "sandboxes"  # the case's directory: agent processes sampled
    home = tmp_path / "user"
    configs = home / ".radical" / "pilot" / "configs"
    configs.mkdir(parents=True)
    (configs / "resource_local.json").write_text(
        json.dumps({"slurm": slurm_entry(slurm_cluster, sandboxes)}))
    monkeypatch.setenv("RADICAL_CONFIG_USER_DIR", str(home))  # label local.slurm, as users do
    kwargs = {
        "resources": {"resource": "local.slurm", "nodes": len(slurm_cluster.nodes),
                      "runtime": 30},
        "raptor": {"workers": 1, "cores_per_worker": 1},
        "network_interface": "lo",
    }
    started = time.monotonic()
    run = run_probe("radical_pilot", kwargs, prefect_home, tmp_path, 10.0, 2100.0,
                    after_exit=lambda: (time.monotonic(), wait_queue_empty(timeout=60)))
    ended, jobs_left = run.after
    print(f"\nflow with a Slurm pilot: {ended - started:.1f} s")
    for line in run.output.splitlines():
        if "is active" in line or "batch job" in line:
            print(f"  {line.strip()[-160:]}")
    check_listeners(run, allowed_names=SLURM_OWN_LISTENERS)
    agent_side = [lst for lst in run.listeners if lst.cwd.startswith(str(sandboxes))]
    rp_agent_side = [lst for lst in agent_side if lst.name.startswith("rp.")]
    client_side = [lst for lst in run.listeners if lst not in agent_side]
    slurm_own = [lst for lst in run.listeners if lst.name in SLURM_OWN_LISTENERS]
    print(f"listeners: {len(run.listeners)} in {len({lst.pid for lst in run.listeners})} "
          f"processes; client side {len(client_side)}, agent side {len(agent_side)} "
          f"({len(rp_agent_side)} in rp.* processes), Slurm's srun {len(slurm_own)}")
    assert rp_agent_side, ("no listener of the agent's rp.* processes was seen: the agent "
                           f"side was not sampled (sandbox {sandboxes})")
    assert "rp.agent.0" in {lst.name for lst in rp_agent_side}, sorted(rp_agent_side)
    assert any(lst.name.startswith("rp.") for lst in client_side), "no client bridge seen"
    assert jobs_left == [], f"Slurm jobs outlived the flow: {jobs_left}"
