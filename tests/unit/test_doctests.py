"""Every module's docstring examples (`>>>`) run, as `pytest --doctest-modules` would.

    .venv/bin/python -m pytest tests/unit/test_doctests.py -q

One test per module of `rhapsody_prefect` whose source has an example. Modules are
found by reading the files (nothing is imported to collect), so a new example joins
by itself. A module whose import needs an optional extra that is not installed
(radical.pilot, dask) is skipped, naming the extra; the test environment has them all.
"""

from __future__ import annotations

import doctest
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "rhapsody_prefect"
#: Top-level modules an optional extra provides: a module needing one is skipped without it.
OPTIONAL = {"radical", "dask", "distributed", "dask_jobqueue"}


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" in path.read_text():
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_the_package_has_examples_to_run():
    assert "rhapsody_prefect.core.tasks" in MODULES, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name: str, capsys: pytest.CaptureFixture[str]):
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        if (error.name or "").partition(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs {error.name}, not installed")
        raise
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, name)
    assert tests, f"{name} has '>>>' in its source but no example doctest finds"
    for test in tests:
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    report = capsys.readouterr().out
    assert attempted > 0
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed:\n{report}"
