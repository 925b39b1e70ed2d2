"""run_call with a capture context: the Prefect run context a body gets, and its cost."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import uuid

import prefect  # noqa: F401  (a body's process with Prefect loaded gets a run context)
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from rhapsody_prefect.body.calls import run_call
from rhapsody_prefect.body.capture import BodyContext


def _context() -> BodyContext:
    return BodyContext(
        task_run={"id": str(uuid.uuid4()), "name": "square-a1b", "flow_run_id": None,
                  "task_key": "square-key"},
        task_name="square",
    )


def _inspect_run() -> tuple[str, list[str], object]:
    run_context = TaskRunContext.get()
    assert run_context is not None
    get_run_logger().info("inside the body")
    task_run = run_context.task_run
    return task_run.name, task_run.tags, task_run.empirical_policy


def test_body_gets_a_task_run_context_with_defaults_filled_in():
    outcome = run_call(_inspect_run, (), {}, _context())
    name, tags, policy = outcome.return_value
    assert name == "square-a1b"
    assert tags == [] and policy is not None
    assert [line.message for line in outcome.logs] == ["inside the body"]


CYCLE_PROBE = """
import gc
import prefect
from tests.unit.body.test_remote import _context, _inspect_run
from rhapsody_prefect.body.calls import run_call
context = _context()
run_call(_inspect_run, (), {}, context)
gc.collect()
gc.disable()
for _ in range(100):
    run_call(len, ([1],), {}, context)
print(gc.collect())
"""


def test_building_the_context_leaves_no_reference_cycles():
    # In a fresh process: threads left by earlier tests (Dask, servers) make garbage too.
    root = pathlib.Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", CYCLE_PROBE], cwd=root, capture_output=True,
                          text=True, timeout=120, check=True)
    unreachable = int(done.stdout.split()[-1])
    # pydantic's model_construct parsed `list`'s signature per body (about 26 cyclic
    # objects each).
    assert unreachable < 100, f"{unreachable} objects in reference cycles after 100 bodies"


def _log_then_raise() -> None:
    get_run_logger().warning("about to fail")
    raise ValueError("boom")


def test_a_failing_body_keeps_its_logs_and_a_portable_error():
    outcome = run_call(_log_then_raise, (), {}, _context())
    assert outcome.state.value == "FAILED"
    assert isinstance(outcome.exception, ValueError)
    assert any("Remote traceback" in note for note in outcome.exception.__notes__)
    assert [(line.levelno, line.message) for line in outcome.logs] == [(30, "about to fail")]
