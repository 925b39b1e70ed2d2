"""RADICAL-Pilot's resource configs: which labels exist, where, and whether one is this machine.

    config = resource_config("mysite.slurm")                # built-in or the user's
    config = resource_config("mysite.slurm", inline={...})  # a flow file's own config
    is_this_machine(config)                                 # FORK / fork://: True
    write_run_configs(run_dir, "mysite.slurm", config)      # the run's RADICAL_CONFIG_USER_DIR

A label `<site>.<name>` names entry `<name>` of `resource_<site>.json`, in RADICAL-Pilot's
own config directory or the user's (`$RADICAL_CONFIG_USER_DIR` or `$HOME`, then
`.radical/pilot/configs`). Whether a resource is this machine is read from its config
(the FORK resource manager, or a `fork://` job manager endpoint), never from its name.
The backend never writes into the user's directory: each run gets a directory of its
own that links the user's files and adds the run's entry.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...core.exceptions import ConfigurationError
from .rp_import import rp, ru

#: RADICAL-Pilot's own resource configs.
BUILTIN_DIR = Path(rp.__file__).parent / "configs"


def user_config_dir() -> Path:
    """The user's RADICAL-Pilot config directory (`~/.radical/pilot/configs`)."""
    home = os.environ.get("RADICAL_CONFIG_USER_DIR") or os.environ.get("HOME", "")
    return Path(home) / ".radical" / "pilot" / "configs"


def known_resources() -> dict[str, dict[str, Any]]:
    """Every resource label RADICAL-Pilot knows here, with its config (read each call)."""
    configs = ru.Config("radical.pilot.resource", name="*", expand=False)
    return {
        f"{site}.{name}": copy.deepcopy(dict(cfg))
        for site, entries in configs.items()
        for name, cfg in entries.items()
    }


def resource_config(label: Any, inline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config of `label`: `inline` if given, else the one RADICAL-Pilot knows.

    Raises:
        ConfigurationError: a label that is not `<site>.<name>`, an inline config that is
            not a dict, or a label found nowhere (lists the labels and the directories).
    """
    if not isinstance(label, str) or label.count(".") < 1 or not all(label.split(".", 1)):
        raise ConfigurationError(
            f"resources['resource'] must be a label '<site>.<name>', got {label!r}",
            config_key="resource",
        )
    if inline is not None:
        if not isinstance(inline, Mapping) or not inline.get("schemas"):
            raise ConfigurationError(
                "resource_config must be a RADICAL-Pilot resource config entry (a dict with "
                f"'schemas', 'resource_manager', 'cores_per_node', ...), got {inline!r}",
                config_key="resource_config",
            )
        return copy.deepcopy(dict(inline))
    known = known_resources()
    if label not in known:
        raise ConfigurationError(
            f"RADICAL-Pilot does not know resource {label!r}. Labels found: {sorted(known)}. "
            f"Searched {BUILTIN_DIR} and {user_config_dir()} (resource_<site>.json, entry "
            "<name>); add a config there, or pass resource_config={...} to the backend",
            config_key="resource",
        )
    return known[label]


def schema_of(config: Mapping[str, Any], access_schema: str | None) -> dict[str, Any]:
    """The access schema's endpoints (`access_schema`, or the config's default)."""
    schemas = config.get("schemas") or {}
    name = access_schema or config.get("default_schema") or next(iter(schemas), None)
    if name not in schemas:
        raise ConfigurationError(
            f"The resource has no access schema {name!r}; known: {sorted(schemas)}",
            config_key="access_schema",
        )
    return dict(schemas[name] or {})


def is_this_machine(config: Mapping[str, Any], access_schema: str | None = None) -> bool:
    """True for a resource that runs on this machine: FORK, or a fork:// endpoint."""
    endpoint = str(schema_of(config, access_schema).get("job_manager_endpoint") or "")
    return config.get("resource_manager") == "FORK" or endpoint.startswith("fork://")


def write_run_configs(run_dir: Path, label: str, entry: Mapping[str, Any] | None) -> Path:
    """The run's own config directory (for RADICAL_CONFIG_USER_DIR); returns it.

    It links everything of the user's `~/.radical` tree; with `entry`, the run's label
    is that entry, written over the user's file of its site (in the run's copy only).
    """
    root = run_dir / "config"
    ours = root / ".radical" / "pilot" / "configs"
    ours.mkdir(parents=True, exist_ok=True)
    user_radical = user_config_dir().parents[1]  # ~/.radical
    _link_tree(user_radical, root / ".radical", keep=ours)
    if entry is not None:
        site, name = label.split(".", 1)
        site_file = f"resource_{site}.json"
        existing: dict[str, Any] = {}
        user_file = user_config_dir() / site_file
        if user_file.is_file():
            with contextlib.suppress(Exception):
                existing = dict(ru.read_json(str(user_file)))
        target = ours / site_file
        if target.is_symlink():
            target.unlink()
        existing[name] = dict(entry)
        with open(target, "w") as stream:
            json.dump(existing, stream, indent=1)
    return root


def _link_tree(source: Path, target: Path, keep: Path) -> None:
    """Link source's entries into target; recurse into directories on the way to `keep`."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        destination = target / item.name
        if item.is_dir() and (destination == keep or keep.is_relative_to(destination)):
            _link_tree(item, destination, keep)
        elif not destination.exists():
            with contextlib.suppress(OSError):
                destination.symlink_to(item)


__all__ = [
    "BUILTIN_DIR",
    "is_this_machine",
    "known_resources",
    "resource_config",
    "schema_of",
    "user_config_dir",
    "write_run_configs",
]
