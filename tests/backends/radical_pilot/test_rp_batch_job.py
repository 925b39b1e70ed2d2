"""The pieces of the pilot monitor that need no batch system: reasons, notices, sbatch's error.

The monitor itself (`lifecycle.PilotMonitor`) runs against the real Slurm cluster in
tests/backends/radical_pilot/test_slurm_radical_pilot.py; here: which Slurm pending reasons
count as hopeless, how notices reach subscribers (or the log), and how sbatch's message is
read from a RADICAL-Pilot launcher log as RP 1.103 writes it (the text below is copied from a
real session's `pmgr_launching.0000.log`).
"""

from __future__ import annotations

import logging
import pathlib
import types

import pytest

rp = pytest.importorskip("radical.pilot")

from rhapsody_prefect.backends.radical_pilot.batch_job import (  # noqa: E402
    BatchJob,
    batch_system,
    launch_error,
    launcher_environment,
)
from rhapsody_prefect.backends.radical_pilot.config import pilot_config  # noqa: E402
from rhapsody_prefect.backends.radical_pilot.lifecycle import (  # noqa: E402
    PilotEvents,
    PilotMonitor,
)
from rhapsody_prefect.core.exceptions import BackendError  # noqa: E402
from rhapsody_prefect.core.notices import Notices  # noqa: E402
from tests.helpers import wait_until  # noqa: E402

LAUNCHER_LOG = """\
1795613502.075 : pmgr_launching.0000  : 19215 : 139939607874432 : DEBUG    : add pid 19215
1795613507.049 : pmgr_launching.0000  : 19215 : 139939161306816 : ERROR    : bulk launch failed
Traceback (most recent call last):
  File ".../radical/pilot/pmgr/launching/base.py", line 297, in work
    self._start_pilot_bulk(resource, schema, pilots)
  File ".../psij/executors/batch/batch_scheduler_executor.py", line 251, in submit
    raise SubmitException(ex.output) from None
psij.exceptions.SubmitException: sbatch: error: invalid partition specified: nope
sbatch: error: Batch job submission failed: Invalid partition name specified

1795613507.101 : pmgr_launching.0000  : 19215 : 139939161306816 : DEBUG    : next
"""

SLURM = {"schemas": {"local": {"job_manager_endpoint": "slurm://localhost/"}},
         "default_schema": "local", "resource_manager": "SLURM"}
FORK = {"schemas": {"local": {"job_manager_endpoint": "fork://localhost/"}},
        "default_schema": "local", "resource_manager": "FORK"}


@pytest.mark.parametrize(
    ("state", "reason", "hopeless"),
    [
        ("PENDING", "PartitionConfig", True),
        ("PENDING", "QOSMaxCpuPerJobLimit", True),
        ("PENDING", "Resources", False),
        ("PENDING", "Priority", False),
        ("RUNNING", "PartitionConfig", False),
    ],
)
def test_hopeless_reasons(state: str, reason: str, hopeless: bool) -> None:
    assert BatchJob("7", state, reason).hopeless is hopeless


def test_describe_and_final() -> None:
    job = BatchJob("14", "PENDING", "Resources")
    assert job.describe() == ("batch job 14 PENDING (reason Resources: waiting for nodes "
                              "to become free)")
    assert BatchJob("14", "TIMEOUT", "TimeLimit").final
    assert BatchJob("14", "GONE", "").describe() == (
        "batch job 14 is no longer known to the batch system")
    assert BatchJob("14", "RUNNING", "None").describe() == "batch job 14 RUNNING"


def test_sbatch_message_from_the_launcher_log(tmp_path: pathlib.Path) -> None:
    (tmp_path / "pmgr_launching.0000.log").write_text(LAUNCHER_LOG)
    assert launch_error(tmp_path) == (
        "sbatch: error: invalid partition specified: nope\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified")
    assert launch_error(tmp_path / "missing") is None


def test_only_batch_resources_are_watched_and_get_their_own_home(
    tmp_path: pathlib.Path,
) -> None:
    assert batch_system(SLURM) is not None and batch_system(FORK) is None
    assert launcher_environment(SLURM, None, tmp_path) == {"HOME": str(tmp_path / "home")}
    assert launcher_environment(FORK, None, tmp_path) == {}
    ssh = {**SLURM, "schemas": {"local": {"job_manager_endpoint": "ssh+slurm://login/"}}}
    assert launcher_environment(ssh, None, tmp_path) == {}


def test_notices_go_to_subscribers_or_the_log(caplog: pytest.LogCaptureFixture) -> None:
    notices = Notices("rhapsody_prefect.test_notices")
    with caplog.at_level(logging.INFO, "rhapsody_prefect.test_notices"):
        notices.post(logging.INFO, "queued", waiting="job 1 PENDING")
    assert "queued" in caplog.text and notices.waiting == "job 1 PENDING"
    seen: list[tuple[int, str]] = []
    notices.subscribe(lambda level, message: seen.append((level, message)))
    assert seen == [(logging.INFO, "queued")]  # the last notice, replayed
    caplog.clear()
    notices.post(logging.INFO, "active", waiting=None)
    notices.post(logging.ERROR, "lost", log_alone=False)
    assert seen[1:] == [(logging.INFO, "active"), (logging.ERROR, "lost")]
    assert notices.waiting is None and caplog.text == ""


@pytest.mark.parametrize("refused", [False, True])
def test_the_monitor_reports_a_pilot_that_ended(tmp_path: pathlib.Path, refused: bool) -> None:
    """The monitor tells the run (`PilotEvents.cannot_run`) and its users; it breaks
    nothing itself. A pilot sbatch refused is named by sbatch's message, read from the
    session directory the monitor was given."""
    if refused:
        (tmp_path / "pmgr_launching.0000.log").write_text(LAUNCHER_LOG)
    pilot = types.SimpleNamespace(uid="pilot.0007", state=rp.FAILED, stderr="agent died",
                                  pilot_sandbox="file://localhost/sandbox/pilot.0007")
    reports: list[tuple[BackendError, bool]] = []
    marks: list[str] = []
    events = PilotEvents(mark=marks.append, job_found=lambda *_: None,
                         job_ended=lambda _: None,
                         cannot_run=lambda error, cancel: reports.append((error, cancel)))
    monitor = PilotMonitor(pilot_config({"cores": 1}, raptor=False), "run.1", tmp_path,
                           lambda: pilot, events)
    notices = Notices("rhapsody_prefect.test_monitor")
    seen: list[tuple[int, str]] = []
    notices.subscribe(lambda level, message: seen.append((level, message)))
    monitor.attach(notices)
    monitor.start()
    try:
        assert wait_until(lambda: bool(reports), timeout=10)
        ((error, cancel),) = reports
        if refused:
            assert "pilot.0007 on local.localhost could not be submitted" in str(error)
            assert "Invalid partition name specified" in str(error)
        else:
            assert "pilot.0007 on local.localhost ended in state FAILED" in str(error)
            assert "agent died" in str(error) and "/sandbox/pilot.0007" in str(error)
        assert cancel is False  # no batch job on local.localhost
        assert seen == [(logging.INFO, "Pilot pilot.0007 on local.localhost submitted; "
                                       "waiting for its agent")]
        assert monitor.wait_active(0) is False and marks == []
        monitor.failed(error)  # what the run does once it decided: the users are told
        assert seen[-1] == (logging.ERROR, str(error)) and len(reports) == 1
    finally:
        monitor.stop()
