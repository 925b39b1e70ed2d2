"""The package's layers import one way: adapter -> backends -> body -> core.

Reads every module's imports (module level and inside functions) with `ast`, so a
new import against the direction fails here, whether or not it runs in a test.
"""

from __future__ import annotations

import ast
import pathlib
import warnings

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "rhapsody_prefect"

#: layer -> the layers of this package it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "body": {"core"},
    "backends": {"core", "body"},
    "adapter": {"core", "body", "backends"},
}
#: Modules of a layer that may import Prefect (everything else below the adapter may not).
PREFECT_ALLOWED = {"body/prefect_context.py"}
#: About this many lines is a review warning: look for a second concept (never split to get
#: under the number). Past HARD_MAX_LINES a module is failed.
MAX_LINES = 400
HARD_MAX_LINES = 500


def _imports(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, a module under `root`."""
    package_parts = ["rhapsody_prefect", *path.relative_to(root).parent.parts]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
                if node.module is None:  # `from . import x`: x is a module of base
                    found.extend((node.lineno, f"{module}.{a.name}") for a in node.names)
                    continue
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_the_four_layers() -> None:
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(ALLOWED)


def _violations(relative: str, imports: list[tuple[int, str]]) -> list[str]:
    layer = relative.split("/")[0] if "/" in relative else "root"
    if layer == "root":
        return []  # the package's front door re-exports every layer
    wrong = []
    for line, module in imports:
        parts = module.split(".")
        if parts[0] in ("prefect", "prefect_dask"):
            if layer != "adapter" and relative not in PREFECT_ALLOWED:
                wrong.append(f"line {line}: {module} (Prefect below the adapter)")
        elif parts[0] == "rhapsody_prefect" and len(parts) > 1:
            target = parts[1]
            if target in ALLOWED and target != layer and target not in ALLOWED[layer]:
                wrong.append(f"line {line}: {module} ({layer} may not import {target})")
            elif target not in ALLOWED:
                wrong.append(f"line {line}: {module} (a root module, not a layer)")
    return wrong


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path: pathlib.Path) -> None:
    relative = str(path.relative_to(PACKAGE))
    wrong = _violations(relative, _imports(path))
    assert not wrong, f"{relative} imports against the layers: {wrong}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small_and_say_what_they_are(path: pathlib.Path) -> None:
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= HARD_MAX_LINES, f"{path.name}: {lines} lines, over {HARD_MAX_LINES}"
    if lines > MAX_LINES:
        warnings.warn(f"{path.name}: {lines} lines: is there a second concept in it?",
                      stacklevel=1)
    assert ast.get_docstring(ast.parse(text)), f"{path.name} has no module docstring"


def test_the_checker_sees_wrong_imports(tmp_path: pathlib.Path) -> None:
    """The check can fail: relative and lazy imports against the direction are caught."""
    module = tmp_path / "core" / "engine.py"
    module.parent.mkdir()
    module.write_text("from ..adapter import runner\n\ndef f():\n    import prefect.states\n")
    imports = _imports(module, root=tmp_path)
    assert imports == [(1, "rhapsody_prefect.adapter"), (4, "prefect.states")]
    assert len(_violations("core/engine.py", imports)) == 2
    assert _violations("adapter/runner.py", imports) == []
    assert _violations("body/capture.py", [(9, "rhapsody_prefect.backends.dask")])
