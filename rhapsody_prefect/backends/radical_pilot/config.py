"""The radical_pilot backend's configuration: the pilot, raptor, and how cores are split.

    resources = pilot_resources({"resource": "local.localhost", "cores": 4})
    raptor = raptor_sizing(True, default_cores=4)
    shape = PilotShape.of(resources, raptor)
    shape.task_cores, shape.raptor_cores, shape.pilot_cores      # 4, 5, 9

`resources` are RADICAL-Pilot pilot description keys, checked against RP's own
schema; the resource label must be one RP knows (built-in, or a user config in
`~/.radical/pilot/configs`). `PilotShape` is the one place the pilot's cores are
computed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...core.exceptions import ConfigurationError
from .rp_import import rp, ru

LOCAL_RESOURCE = "local.localhost"
#: Pilot description keys the backend sets itself.
MANAGED_PILOT_KEYS = frozenset({"uid", "exit_on_error"})
RAPTOR_DEFAULTS: dict[str, int] = {"workers": 1, "cores_per_worker": 1, "gpus_per_worker": 0}


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_resource_configs: dict[str, Any] | None = None


def known_resources() -> dict[str, Any]:
    """RADICAL-Pilot's resource configs (built-in and the user's), read once."""
    global _resource_configs
    if _resource_configs is None:
        configs = ru.Config("radical.pilot.resource", name="*", expand=False)
        _resource_configs = {
            f"{site}.{name}": copy.deepcopy(dict(cfg))
            for site, entries in configs.items()
            for name, cfg in entries.items()
        }
    return _resource_configs


def _check_type(key: str, value: Any, expected: Any) -> None:
    def fail(what: str) -> ConfigurationError:
        return ConfigurationError(
            f"resources[{key!r}] must be {what}, got {value!r}", config_key=key
        )

    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail("an int >= 0")
    elif expected is bool:
        if not isinstance(value, bool):
            raise fail("a bool")
    elif expected is str:
        if not isinstance(value, str):
            raise fail("a str")
    elif isinstance(expected, list):
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
    elif isinstance(expected, dict) and not isinstance(value, dict):
        raise fail("a dict")


def pilot_resources(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check pilot description keys and values; fill in the local defaults.

    Raises:
        ConfigurationError: unknown key, wrong type, unknown resource, bad sizes.
    """
    if resources is None:
        resources = {}
    if not isinstance(resources, Mapping):
        raise ConfigurationError(
            f"resources must be a dict of pilot description keys, got {resources!r}",
            config_key="resources",
        )
    schema = rp.PilotDescription._schema
    allowed = sorted(set(schema) - MANAGED_PILOT_KEYS)
    for key, value in resources.items():
        if key not in schema or key in MANAGED_PILOT_KEYS:
            raise ConfigurationError(
                f"Unknown or backend-managed pilot description key {key!r}; allowed: {allowed}",
                config_key=key,
            )
        _check_type(key, value, schema[key])
    result = dict(resources)
    resource = result.setdefault("resource", LOCAL_RESOURCE)
    known = known_resources()
    if resource not in known:
        raise ConfigurationError(
            f"RADICAL-Pilot does not know resource {resource!r}; known: "
            f"{sorted(known)[:12]} ... ({len(known)} in all; `radical-pilot-resources` "
            "lists them, a user config in ~/.radical/pilot/configs adds one)",
            config_key="resource",
        )
    schemas = known[resource].get("schemas") or {}
    schema_name = result.get("access_schema")
    if schema_name is not None and schema_name not in schemas:
        raise ConfigurationError(
            f"Resource {resource!r} has no access schema {schema_name!r}; "
            f"known: {sorted(schemas)}",
            config_key="access_schema",
        )
    local = is_local(resource)
    if result.get("runtime", 1) < 1:
        raise ConfigurationError("resources['runtime'] is in minutes and must be >= 1",
                                 config_key="runtime")
    if not result.get("nodes") and not result.get("cores"):
        if not local:
            raise ConfigurationError(
                f"Say how big the pilot on {resource!r} is: resources['nodes'] or "
                "resources['cores']",
                config_key="cores",
            )
        result["cores"] = machine_cores()
    result.setdefault("runtime", 1440 if local else 60)
    description = rp.PilotDescription(dict(result))
    try:
        description.verify()
    except ValueError as error:
        key = "nodes" if "nodes" in str(error) else "cores"
        raise ConfigurationError(f"Invalid pilot description: {error}", config_key=key) from error
    return result


def raptor_sizing(
    raptor: bool | Mapping[str, Any] | None, default_cores: int = 1
) -> dict[str, int] | None:
    """None (function tasks disabled) or the raptor sizing with defaults filled in.

    `default_cores` sizes the default worker: on a local pilot the backend passes the
    pilot's task cores, so function tasks run as parallel as executables (a 1-core
    worker runs them one at a time).
    """
    defaults = {**RAPTOR_DEFAULTS, "cores_per_worker": default_cores}
    if raptor is None or raptor is True:
        return defaults
    if raptor is False:
        return None
    if not isinstance(raptor, Mapping):
        raise ConfigurationError(
            f"raptor must be True, False or a dict with keys {sorted(RAPTOR_DEFAULTS)}, "
            f"got {raptor!r}",
            config_key="raptor",
        )
    result = defaults
    for key, value in raptor.items():
        if key not in RAPTOR_DEFAULTS:
            raise ConfigurationError(
                f"Unknown raptor option {key!r}; allowed: {sorted(RAPTOR_DEFAULTS)}",
                config_key=f"raptor.{key}",
            )
        minimum = 0 if key == "gpus_per_worker" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(
                f"raptor[{key!r}] must be an int >= {minimum}, got {value!r}",
                config_key=f"raptor.{key}",
            )
        result[key] = value
    return result


def is_local(resource: str) -> bool:
    return resource.startswith("local.")


@dataclasses.dataclass(frozen=True)
class PilotShape:
    """How the pilot's cores are used: executables, and raptor's master and workers."""

    #: Cores executable tasks may use.
    task_cores: int
    #: Cores raptor's master (1) and workers take; 0 without raptor.
    raptor_cores: int
    #: Cores the pilot asks the resource for.
    pilot_cores: int
    gpus: int
    local: bool

    @classmethod
    def of(cls, resources: Mapping[str, Any], raptor: Mapping[str, int] | None) -> PilotShape:
        local = is_local(resources["resource"])
        if resources.get("cores"):
            task_cores = int(resources["cores"])
        else:
            config = known_resources()[resources["resource"]]
            task_cores = int(resources.get("nodes", 1)) * int(config.get("cores_per_node") or 1)
        raptor_cores = 0 if raptor is None else 1 + raptor["workers"] * raptor["cores_per_worker"]
        # On this machine raptor gets cores on top of the tasks' (RP's resource is fake).
        pilot_cores = task_cores + raptor_cores if local else task_cores
        return cls(task_cores, raptor_cores, pilot_cores, int(resources.get("gpus") or 0), local)


def write_local_config(resources: Mapping[str, Any], shape: PilotShape, run_dir: Path) -> None:
    """A user resource config sizing local.localhost to this machine (+ raptor)."""
    user_home = os.environ.get("RADICAL_CONFIG_USER_DIR") or os.environ.get("HOME", "")
    user_dir = Path(user_home) / ".radical" / "pilot" / "configs"
    ours = run_dir / "config" / ".radical" / "pilot" / "configs"
    ours.mkdir(parents=True, exist_ok=True)
    local_cfg: dict[str, Any] = {}
    if user_dir.is_dir():  # keep the user's own resource configs visible
        for path in user_dir.glob("resource_*.json"):
            if path.name == "resource_local.json":
                with contextlib.suppress(Exception):
                    local_cfg = dict(ru.read_json(str(path)))
            else:
                with contextlib.suppress(OSError):
                    (ours / path.name).symlink_to(path)
    site, name = resources["resource"].split(".", 1)
    entry = dict(local_cfg.get(name) or {})
    entry.update({
        "cores_per_node": shape.pilot_cores,
        "gpus_per_node": shape.gpus,
        "fake_resources": True,
        "default_remote_workdir": str(run_dir / "sandbox"),
    })
    local_cfg[name] = entry
    with open(ours / f"resource_{site}.json", "w") as stream:
        json.dump(local_cfg, stream, indent=1)


def pilot_description(
    resources: Mapping[str, Any], shape: PilotShape, run_id: str, run_dir: Path
) -> Any:
    """The RP PilotDescription of a run."""
    values = dict(resources)
    values["exit_on_error"] = False
    if shape.local or values.get("cores"):
        values["cores"] = shape.pilot_cores
    if shape.local:
        values.setdefault("sandbox", str(run_dir / "sandbox"))
    values.setdefault("job_name", run_id)
    return rp.PilotDescription(values)


__all__ = [
    "LOCAL_RESOURCE",
    "PilotShape",
    "is_local",
    "known_resources",
    "machine_cores",
    "pilot_description",
    "pilot_resources",
    "raptor_sizing",
    "write_local_config",
]
