"""The radical_pilot backend's configuration: the pilot, raptor, and how cores are split.

    config = pilot_config({"resource": "mysite.slurm", "nodes": 2, "queue": "debug"},
                          raptor={"cores_per_worker": 2})
    config.shape.describe()    # nodes of 4 cores: '8 cores: 5 for executables, 3 for raptor'
    pilot_config({"resource": "mysite.slurm", "cores": 2})   # ConfigurationError: raptor
                                                             # needs 2, executables >= 1

`resources` are RADICAL-Pilot pilot description keys (`resource`, `cores` or `nodes`,
`gpus`, `runtime` [min], `queue`, `project`, ...), checked against RP's own schema;
the label must be one RP knows, or come with an inline `resource_config`
(see `resource_configs`). `PilotShape` is the one place the pilot's cores are split:

* RP's built-in `local.localhost` is sized to this machine: executables get
  `cores` (default: this machine's), raptor's master and workers get cores on top.
* Any other resource gets what the batch system allocates (`cores`, or `nodes` x
  the config's `cores_per_node`), and raptor's cores are carved out of it: a pilot
  too small for both is refused here, with the numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...core.exceptions import ConfigurationError
from ...core.machine import usable_cores
from . import bind_interface
from .resource_configs import is_this_machine, resource_config, schema_of
from .rp_import import rp, unsupported_releases

LOCAL_RESOURCE = "local.localhost"
#: Pilot description keys the backend sets itself.
MANAGED_PILOT_KEYS = frozenset({"uid", "exit_on_error"})
RAPTOR_DEFAULTS: dict[str, int] = {"workers": 1, "cores_per_worker": 1, "gpus_per_worker": 0}
#: Default of the backend option `pending_timeout`: seconds a job may wait in the queue.
PENDING_TIMEOUT = 86400.0


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


def pilot_resources(
    resources: Mapping[str, Any] | None, inline: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check pilot description keys and values; (resources with defaults, resource config).

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
    label = result.setdefault("resource", LOCAL_RESOURCE)
    config = resource_config(label, inline)
    schema_of(config, result.get("access_schema"))  # a bad access_schema fails here
    sized = label == LOCAL_RESOURCE and inline is None
    if result.get("runtime", 1) < 1:
        raise ConfigurationError("resources['runtime'] is in minutes and must be >= 1",
                                 config_key="runtime")
    if not result.get("nodes") and not result.get("cores"):
        if not sized:
            raise ConfigurationError(
                f"Say how big the pilot on {label!r} is: resources['nodes'] or "
                "resources['cores']",
                config_key="cores",
            )
        result["cores"] = usable_cores()
    result.setdefault("runtime", 1440 if is_this_machine(config) else 60)
    description = rp.PilotDescription(dict(result))
    try:
        description.verify()
    except ValueError as error:
        key = "nodes" if "nodes" in str(error) else "cores"
        raise ConfigurationError(f"Invalid pilot description: {error}", config_key=key) from error
    return result, config


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


@dataclasses.dataclass(frozen=True)
class PilotShape:
    """How the pilot's cores and GPUs are split between executables and raptor."""

    #: Cores (and GPUs) the pilot asks the resource for.
    pilot_cores: int
    pilot_gpus: int
    #: Cores and GPUs raptor's master (1 core) and workers hold; 0 without raptor.
    raptor_cores: int
    raptor_gpus: int
    #: True for RP's built-in local.localhost, sized here: raptor's cores come on top.
    sized: bool
    #: The resource runs on this machine (FORK): files and processes are shared.
    local: bool

    @property
    def task_cores(self) -> int:
        """Cores executable tasks may use."""
        return self.pilot_cores - self.raptor_cores

    @property
    def task_gpus(self) -> int:
        return self.pilot_gpus - self.raptor_gpus

    @classmethod
    def of(
        cls, resources: Mapping[str, Any], config: Mapping[str, Any],
        raptor: Mapping[str, int] | None, sized: bool,
    ) -> PilotShape:
        nodes = int(resources.get("nodes") or 0)
        gpus = resources.get("gpus")
        if gpus is None:
            gpus = nodes * int(config.get("gpus_per_node") or 0) if nodes and not sized else 0
        raptor_cores = 0 if raptor is None else 1 + raptor["workers"] * raptor["cores_per_worker"]
        raptor_gpus = 0 if raptor is None else raptor["workers"] * raptor["gpus_per_worker"]
        if sized:  # raptor's share comes on top of the cores asked for
            gpus += raptor_gpus
        if resources.get("cores"):
            cores = int(resources["cores"]) + (raptor_cores if sized else 0)
        else:
            cores = nodes * int(config.get("cores_per_node") or 1)
        shape = cls(cores, int(gpus), raptor_cores, raptor_gpus, sized,
                    is_this_machine(config, resources.get("access_schema")))
        shape._check(raptor)
        return shape

    def _check(self, raptor: Mapping[str, int] | None) -> None:
        if raptor is None:
            return
        if self.task_cores < 1:
            raise ConfigurationError(
                f"A pilot of {self.pilot_cores} core(s) cannot run both function tasks and "
                f"executables: raptor needs {self.raptor_cores} (master 1 + "
                f"{raptor['workers']} worker(s) x {raptor['cores_per_worker']}) and "
                "executables at least 1. Ask for more (resources={'cores': ...} or "
                "{'nodes': ...}), size raptor down (raptor={'cores_per_worker': ...}), or "
                "run executables only (raptor=False)",
                config_key="raptor",
            )
        if self.task_gpus < 0:
            raise ConfigurationError(
                f"raptor's workers need {self.raptor_gpus} GPU(s) but the pilot has "
                f"{self.pilot_gpus} (resources={{'gpus': ...}})",
                config_key="raptor.gpus_per_worker",
            )

    def describe(self) -> str:
        """'4 cores: 2 for executables, 2 for raptor (master + workers)'."""
        return (f"{self.pilot_cores} cores: {self.task_cores} for executables, "
                f"{self.raptor_cores} for raptor (master + workers)")


@dataclasses.dataclass(frozen=True)
class PilotConfig:
    """Everything the backend was configured with, checked."""

    resources: dict[str, Any]
    #: The resource's RP config entry; `inline` when the user passed resource_config.
    resource_config: dict[str, Any]
    inline: bool
    raptor: dict[str, int] | None
    shape: PilotShape
    #: Seconds the pilot's batch job may wait in the queue before the backend gives up.
    pending_timeout: float = PENDING_TIMEOUT
    #: The network interface RP's endpoints bind to (None: loopback on a local pilot,
    #: all interfaces on a batch pilot); see `network_interface`.
    network_interface: str | None = None


def network_interface(value: Any) -> str | None:
    """Check the `network_interface` option: None, or an interface of this host with IPv4.

    The name is resolved again on each node where RP starts a process (the agent's
    node may call its interface the same name with another address).

    Raises:
        ConfigurationError: not a str, no such interface here (lists those found), or
            one without an IPv4 address.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"network_interface must be the name of a network interface (a str such as "
            f"'ib0', 'hsn0' or 'lo'), got {value!r}", config_key="network_interface")
    found = bind_interface.interfaces()
    listed = bind_interface.describe_interfaces(found)
    if value not in found:
        raise ConfigurationError(
            f"network_interface {value!r} is not a network interface of this machine; "
            f"interfaces found: {listed}", config_key="network_interface")
    if not found[value]:
        raise ConfigurationError(
            f"network_interface {value!r} has no IPv4 address on this machine (RADICAL-"
            f"Pilot's endpoints need one); interfaces found: {listed}",
            config_key="network_interface")
    return value


def pilot_config(
    resources: Mapping[str, Any] | None,
    raptor: bool | Mapping[str, Any] | None = True,
    inline: Mapping[str, Any] | None = None,
    pending_timeout: float = PENDING_TIMEOUT,
    interface: Any = None,
) -> PilotConfig:
    """Check the RP release, the pilot, the resource and raptor; split the cores (see the
    module docs)."""
    unsupported = unsupported_releases()
    if unsupported:  # before anything starts: an untested RP fails later, and obscurely
        raise ConfigurationError(f"radical_pilot: {unsupported}", config_key="radical.pilot")
    if (isinstance(pending_timeout, bool) or not isinstance(pending_timeout, (int, float))
            or pending_timeout <= 0):
        raise ConfigurationError(
            f"pending_timeout must be a number of seconds > 0, got {pending_timeout!r}",
            config_key="pending_timeout",
        )
    iface = network_interface(interface)
    checked, config = pilot_resources(resources, inline)
    sized = checked["resource"] == LOCAL_RESOURCE and inline is None
    # On a machine-sized pilot a function task may use as many cores as an executable.
    raptor_config = raptor_sizing(raptor, int(checked.get("cores") or 1) if sized else 1)
    shape = PilotShape.of(checked, config, raptor_config, sized)
    return PilotConfig(checked, config, inline is not None, raptor_config, shape,
                       float(pending_timeout), iface)


def run_resource_entry(config: PilotConfig, run_dir: Path) -> dict[str, Any] | None:
    """The resource entry the run writes into its own config directory, if any.

    An inline config as given; local.localhost sized to this machine (+ raptor); a
    resource from RP's or the user's files: none, it is used as it is.
    """
    if config.inline:
        return config.resource_config
    if not config.shape.sized:
        return None
    entry = dict(config.resource_config)
    entry.update({
        "cores_per_node": config.shape.pilot_cores,
        "gpus_per_node": config.shape.pilot_gpus,
        "fake_resources": True,
        "default_remote_workdir": str(run_dir / "sandbox"),
    })
    return entry


def pilot_description(config: PilotConfig, run_id: str, run_dir: Path) -> Any:
    """The RP PilotDescription of a run."""
    values = dict(config.resources)
    values["exit_on_error"] = False
    if config.shape.sized:
        values["cores"] = config.shape.pilot_cores
        values.setdefault("sandbox", str(run_dir / "sandbox"))
    values.setdefault("job_name", run_id)
    return rp.PilotDescription(values)


__all__ = [
    "LOCAL_RESOURCE",
    "PENDING_TIMEOUT",
    "PilotConfig",
    "PilotShape",
    "network_interface",
    "pilot_config",
    "pilot_description",
    "pilot_resources",
    "raptor_sizing",
    "run_resource_entry",
]
