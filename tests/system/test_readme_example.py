"""The README's first example runs as written (issue 23 point 4): `./md-sim` is the user's
program in the directory the flow runs from, on every backend.

The example is taken from README.md (its first python block) and run in a directory
with an `md-sim` of its own; the flow as written targets a local RADICAL-Pilot pilot,
and the same flow runs with `with_options(task_runner=...)` on `concurrent` and `dask`.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

from rhapsody_prefect import RhapsodyRunner

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
MD_SIM = "#!/bin/sh\n# a stand-in simulation: prints its seed's energy last\necho energy $2.5\n"


def first_example() -> str:
    return re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)


def example_flow(workdir: pathlib.Path) -> Any:
    sim = workdir / "md-sim"
    sim.write_text(MD_SIM)
    sim.chmod(0o755)
    namespace: dict[str, Any] = {}
    exec(compile(first_example(), str(README), "exec"), namespace)
    return namespace["ensemble"]


@pytest.mark.parametrize("backend", [
    pytest.param(None, id="as-written-radical_pilot",
                 marks=[pytest.mark.slow, pytest.mark.radical_pilot]),
    pytest.param(("concurrent", {}), id="concurrent"),
    pytest.param(("dask", {"resources": {"threads": 2}}), id="dask", marks=pytest.mark.dask),
])
def test_the_first_example_runs_as_written(
    backend: tuple[str, dict] | None, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ensemble = example_flow(tmp_path)
    if backend is not None:
        name, kwargs = backend
        ensemble = ensemble.with_options(task_runner=RhapsodyRunner(name, **kwargs))
    # members 0..3 print energies 0.5, 1.5, 2.5, 3.5
    assert ensemble(members=4) == pytest.approx(2.0)
