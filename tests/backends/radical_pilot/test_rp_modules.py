"""The radical_pilot package's modules: no import circle, one owner per constant.

Reads the modules with `ast` (nothing is imported, so this runs without RADICAL-Pilot):
every relative import counts, at module level, inside functions and under
`if TYPE_CHECKING:`, so a module that imports one importing it back fails here even
when the circle only exists for the type checker.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = (pathlib.Path(__file__).resolve().parents[3]
           / "rhapsody_prefect" / "backends" / "radical_pilot")


def sibling_imports(path: pathlib.Path) -> set[str]:
    """The modules of the same package that `path` imports (`from .x import`, `from .
    import x`), wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def import_graph(package: pathlib.Path) -> dict[str, set[str]]:
    modules = {path.stem: path for path in package.glob("*.py")}
    return {name: sibling_imports(path) & set(modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once, as the path from its smallest module back to it."""
    found: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for target in sorted(graph[path[-1]]):
            if target == start:
                found.append([*path, start])
            elif target > start and target not in path:
                walk(start, [*path, target])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph(PACKAGE)
    assert {"backend", "session", "lifecycle", "sharing", "processes"} <= set(graph)
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_type_checking_circle(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.py").write_text("from .b import B\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n")
    (tmp_path / "c.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "d.py").write_text("from .a import A\n")
    assert cycles(import_graph(tmp_path)) == [["a", "b", "c", "a"]]


def constants(path: pathlib.Path) -> list[object]:
    """The literal values in `path`'s code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and id(node) not in docstrings]


def owners(predicate: object) -> set[str]:
    assert callable(predicate)
    return {path.stem for path in PACKAGE.glob("*.py")
            if any(predicate(value) for value in constants(path))}


def test_each_constant_has_one_owner() -> None:
    # the helper executables, TMPDIR, the venv's bin, the pending_timeout default
    assert owners(lambda v: v == "radical-pilot-bridge") == {"processes"}
    assert owners(lambda v: v == "TMPDIR") == {"processes"}
    assert owners(lambda v: v == 86400.0 and not isinstance(v, bool)) == {"config"}
    bin_path = {path.stem for path in PACKAGE.glob("*.py")
                if "Path(sys.executable).parent" in path.read_text()}
    assert bin_path == {"processes"}
