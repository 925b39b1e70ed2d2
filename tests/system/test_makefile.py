"""The README's quickstart commands are Makefile targets; `make example` installs only the package.

    .venv/bin/python -m pytest tests/system/test_makefile.py -q

Fast: reads README.md and asks `make -n` (which prints the commands it would run and
runs none of them) with VENV pointing into a temporary directory.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def quickstart_commands() -> list[str]:
    """The commands in the README's Quickstart code block, without their comments."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "no ```bash block in the README's Quickstart"
    lines = (line.split("#", 1)[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def dry_run(target: str, venv: pathlib.Path) -> list[str]:
    done = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "MAKEFLAGS": ""},
    )
    assert done.returncode == 0, f"make -n {target}: {done.stderr}"
    return done.stdout.splitlines()


def package_installs(lines: list[str]) -> list[str]:
    """The `pip install` lines that install this package (not the pip upgrade)."""
    return [line for line in lines if " -m pip install " in line and "--upgrade pip" not in line]


def test_quickstart_is_make_example_and_make_test() -> None:
    assert quickstart_commands() == ["make example", "make test"]


@pytest.mark.parametrize("command", quickstart_commands())
def test_quickstart_commands_are_makefile_targets(command: str, tmp_path: pathlib.Path) -> None:
    target = command.removeprefix("make ").strip()
    assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert dry_run(target, tmp_path / "venv")


def test_make_example_installs_only_the_package(tmp_path: pathlib.Path) -> None:
    lines = dry_run("example", tmp_path / "venv")
    installs = package_installs(lines)
    assert installs, lines
    for line in installs:
        assert line.endswith("install -q -e ."), f"example installs more than the package: {line}"
        assert "[test" not in line and "bench]" not in line, line
    assert any(line.endswith("flows/ensemble.py") for line in lines), lines


def test_make_test_after_example_adds_the_test_extras(tmp_path: pathlib.Path) -> None:
    venv = tmp_path / "venv"
    assert any("'.[test,bench]'" in line for line in package_installs(dry_run("test", venv)))

    # After `make example` (its stamp newer than pyproject.toml): only the extras are added.
    venv.mkdir()
    (venv / ".installed-example").touch()
    lines = dry_run("test", venv)
    assert package_installs(lines) == [f"{venv}/bin/python -m pip install -q -e '.[test,bench]'"]
    assert not any(" -m venv " in line for line in lines), lines

    # And `make example` after `make test` installs nothing.
    (venv / ".installed-test").touch()
    assert package_installs(dry_run("example", venv)) == []
