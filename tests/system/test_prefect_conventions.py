"""rhapsody-prefect as a Prefect integration: collection entry point, light import, prefect.yaml.

    .venv/bin/python -m pytest tests/system/test_prefect_conventions.py -q

Prefect imports every package of the `prefect.collections` entry-point group
(`prefect.plugins.load_prefect_collections()`) in servers, workers and block
registration, as it does prefect-dask. That import must stay cheap and must not
fail when an optional extra (dask, radical_pilot) is not installed: the
subprocess tests check both, the second with a `sys.meta_path` finder that makes
dask, distributed and radical.* unimportable. The last test checks that
`deployments/prefect.yaml` describes the deployments `deployments/deploy.py` creates
(the end-to-end `prefect deploy` run is tests/system/test_prefect_yaml_deploy.py).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Top-level modules of the optional extras.
EXTRA_MODULES = ("dask", "distributed", "radical")
RESULT = "RESULT "

#: Makes the extras' modules unimportable, as if `pip install rhapsody-prefect` had no extras.
BLOCK_EXTRAS = textwrap.dedent(f"""
    import importlib.abc
    import sys

    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.partition(".")[0] in {EXTRA_MODULES!r}:
                raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
            return None

    sys.meta_path.insert(0, _NotInstalled())
""")


def run_python(code: str, tmp_path: pathlib.Path) -> Any:
    """Run `code` in a fresh interpreter outside the checkout; return its RESULT line's JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    assert lines, f"no {RESULT!r} line in\n{done.stdout}\n{done.stderr}"
    return json.loads(lines[-1][len(RESULT):])


# ------------------------------------------------------------ the collection entry point
def test_entry_point_declared() -> None:
    points = {ep.name: ep.value
              for ep in importlib.metadata.entry_points(group="prefect.collections")}
    assert points.get("rhapsody_prefect") == "rhapsody_prefect", (
        f"prefect.collections entry points: {points}; "
        "reinstall (`pip install -e . --no-deps`) after changing pyproject.toml")


def test_prefect_loads_the_collection(tmp_path: pathlib.Path) -> None:
    """Prefect's own loader imports it, and a worker reports it among its integrations."""
    result = run_python(textwrap.dedent(f"""
        import asyncio, json
        from prefect.plugins import load_prefect_collections
        from prefect.workers.process import ProcessWorker

        loaded = load_prefect_collections()
        worker = ProcessWorker(work_pool_name="rhapsody-conventions")
        metadata = asyncio.run(worker._worker_metadata())
        print({RESULT!r} + json.dumps({{
            "collections": {{name: getattr(value, "__name__", repr(value))
                            for name, value in loaded.items()}},
            "integrations": [i.name for i in metadata.integrations] if metadata else [],
        }}))
    """), tmp_path)
    assert result["collections"].get("rhapsody_prefect") == "rhapsody_prefect", result
    assert "rhapsody-prefect" in result["integrations"], result


def test_import_loads_no_extra_and_no_prefect(tmp_path: pathlib.Path) -> None:
    result = run_python(textwrap.dedent(f"""
        import json, sys, time
        started = time.perf_counter()
        import rhapsody_prefect
        seconds = time.perf_counter() - started
        print({RESULT!r} + json.dumps({{
            "loaded": sorted({{name.partition(".")[0] for name in sys.modules}}
                             & {{*{(*EXTRA_MODULES, "prefect")!r}}}),
            "seconds": seconds,
        }}))
    """), tmp_path)
    print(f"\nimport rhapsody_prefect: {result['seconds'] * 1000:.0f} ms")
    assert result["loaded"] == [], (
        "import rhapsody_prefect must not import an optional extra or Prefect "
        f"(Prefect's collection loader imports it in every server and worker): {result}")


def test_import_without_the_extras(tmp_path: pathlib.Path) -> None:
    result = run_python(BLOCK_EXTRAS + textwrap.dedent(f"""
        import json
        try:
            import distributed  # the finder above must make it unimportable
            blocked = False
        except ImportError:
            blocked = True

        import rhapsody_prefect
        from prefect.plugins import load_prefect_collections
        from rhapsody_prefect import RhapsodyRunner, executable_task, task_resources

        print({RESULT!r} + json.dumps({{
            "blocked": blocked,
            "backends": rhapsody_prefect.list_backends(),
            "discovered": rhapsody_prefect.discover_backends(),
            "why": {{name: rhapsody_prefect.why_unavailable(name)
                    for name in ("concurrent", "dask", "radical_pilot")}},
            "collection": getattr(load_prefect_collections().get("rhapsody_prefect"),
                                  "__name__", None),
            "lazy": [RhapsodyRunner.__name__, callable(executable_task),
                     callable(task_resources)],
        }}))
    """), tmp_path)
    assert result["blocked"], "the test's finder did not block the extras"
    assert {"concurrent", "dask", "radical_pilot"} <= set(result["backends"]), result
    assert result["discovered"]["concurrent"] is True
    assert result["discovered"]["dask"] is False
    assert result["discovered"]["radical_pilot"] is False
    assert result["why"]["concurrent"] is None
    for name in ("dask", "radical_pilot"):
        message = result["why"][name]
        assert message and f"pip install 'rhapsody-prefect[{name}]'" in message, result["why"]
    assert result["collection"] == "rhapsody_prefect"
    assert result["lazy"] == ["RhapsodyRunner", True, True]


# ------------------------------------------------------------------------ prefect.yaml
def _load_deploy_py() -> Any:
    spec = importlib.util.spec_from_file_location("rhapsody_deploy_py",
                                                  ROOT / "deployments" / "deploy.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _yaml_schedule(schedule: dict[str, Any]) -> tuple[Any, ...]:
    if "cron" in schedule:
        return ("cron", schedule["cron"], schedule.get("timezone"))
    anchor = datetime.datetime.fromisoformat(schedule["anchor_date"])
    return ("interval", datetime.timedelta(seconds=schedule["interval"]), anchor,
            schedule.get("timezone"))


def _python_schedule(schedule: Any) -> tuple[Any, ...]:
    if schedule.cron:
        return ("cron", schedule.cron, schedule.timezone)
    return ("interval", schedule.interval, schedule.anchor_date, schedule.timezone)


def test_prefect_yaml_matches_deploy_py() -> None:
    """Both routes create the same deployments (names, entrypoints, schedules, pool, parameters)."""
    deploy_py = _load_deploy_py()
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert config.get("build") is None and config.get("push") is None
    from_yaml = {
        d["name"]: (
            d["entrypoint"],
            sorted(map(_yaml_schedule, d["schedules"]), key=repr),
            d["parameters"],
            d["work_pool"]["name"],
            d["work_pool"]["job_variables"],
            sorted(d["tags"]),
            d["description"],
        )
        for d in config["deployments"]
    }
    backend = "concurrent"
    from_python = {
        name: (
            entrypoint,
            sorted(map(_python_schedule, schedules), key=repr),
            parameters,
            "rhapsody-process",
            {"env": {"RHAPSODY_BACKEND": backend}},
            sorted(["rhapsody", f"backend:{backend}"]),
            f"{flow_name} on the RHAPSODY {backend!r} backend",
        )
        for flow_name, (entrypoint, name, schedules, parameters)
        in deploy_py.DEPLOYMENTS.items()
    }
    assert from_yaml == from_python
    assert all(s.get("active", True) for d in config["deployments"] for s in d["schedules"])
    for entrypoint, *_ in from_yaml.values():
        assert (ROOT / entrypoint.partition(":")[0]).is_file(), entrypoint
