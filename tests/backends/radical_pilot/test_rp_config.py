"""The radical_pilot backend's configuration, read from real RADICAL-Pilot configs.

Nothing starts here: these construct backends (which reads RADICAL-Pilot's config
files, built-in and the user's, from a temporary `RADICAL_CONFIG_USER_DIR`) and
write a run's config directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("radical.pilot")

from rhapsody_prefect import ConfigurationError
from rhapsody_prefect.backends.radical_pilot import RadicalPilotBackend
from rhapsody_prefect.backends.radical_pilot.config import (
    pilot_config,
    pilot_description,
    run_resource_entry,
)
from rhapsody_prefect.backends.radical_pilot.resource_configs import (
    write_run_configs,
)

SLURM_ENTRY = {
    "schemas": {"local": {"job_manager_endpoint": "slurm://localhost/",
                          "filesystem_endpoint": "file://localhost/"}},
    "default_schema": "local",
    "resource_manager": "SLURM",
    "launch_methods": {"order": ["SRUN"], "SRUN": {}},
    "agent_scheduler": "CONTINUOUS",
    "agent_spawner": "POPEN",
    "cores_per_node": 4,
    "gpus_per_node": 0,
    "default_queue": "debug",
    "rp_version": "installed",
    "virtenv_mode": "local",
    "python_dist": "default",
}


@pytest.fixture
def user_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's RADICAL-Pilot config directory with a Slurm site named `local`."""
    monkeypatch.setenv("RADICAL_CONFIG_USER_DIR", str(tmp_path / "home"))
    configs = tmp_path / "home" / ".radical" / "pilot" / "configs"
    configs.mkdir(parents=True)
    (configs / "resource_local.json").write_text(json.dumps({"slurm": SLURM_ENTRY}))
    (configs / "resource_mysite.json").write_text(json.dumps({"slurm": SLURM_ENTRY}))
    return configs


def test_a_local_label_on_slurm_is_not_this_machine_and_is_not_rewritten(user_configs, tmp_path):
    before = {p.name: p.read_text() for p in user_configs.iterdir()}
    backend = RadicalPilotBackend(resources={"resource": "local.slurm", "nodes": 2},
                                  raptor=False, work_dir=tmp_path / "work")
    assert backend.local is False
    assert backend.shape.pilot_cores == 8 and backend.shape.task_cores == 8
    config = backend.config
    assert run_resource_entry(config, tmp_path / "run") is None  # used as it is
    description = pilot_description(config, "run.1", tmp_path / "run")
    assert description.nodes == 2 and not description.cores  # the shape Slurm can place
    assert "sandbox" not in description.as_dict() or not description.sandbox
    assert {p.name: p.read_text() for p in user_configs.iterdir()} == before


def test_raptor_is_carved_out_of_a_batch_pilot_or_refused(user_configs):
    split = pilot_config({"resource": "mysite.slurm", "nodes": 1},
                         raptor={"cores_per_worker": 2})
    shape = split.shape
    assert (shape.pilot_cores, shape.raptor_cores, shape.task_cores) == (4, 3, 1)
    with pytest.raises(ConfigurationError) as info:
        pilot_config({"resource": "mysite.slurm", "cores": 2})
    assert info.value.config_key == "raptor"
    assert "2 core(s)" in str(info.value) and "raptor needs 2" in str(info.value)
    no_raptor = pilot_config({"resource": "mysite.slurm", "cores": 2}, raptor=False)
    assert no_raptor.shape.task_cores == 2


def test_local_localhost_is_sized_to_this_machine_with_raptor_on_top(user_configs, tmp_path):
    config = pilot_config({"resource": "local.localhost", "cores": 2})
    shape = config.shape
    assert shape.local and shape.sized
    assert (shape.task_cores, shape.raptor_cores, shape.pilot_cores) == (2, 3, 5)
    entry = run_resource_entry(config, tmp_path / "run")
    assert entry is not None and entry["cores_per_node"] == 5 and entry["fake_resources"]


def test_an_inline_resource_config_makes_a_flow_file_self_contained(user_configs, tmp_path):
    inline = {**SLURM_ENTRY, "cores_per_node": 2}
    config = pilot_config({"resource": "inline.cluster", "nodes": 2}, raptor=False,
                          inline=inline)
    assert config.shape.pilot_cores == 4 and not config.shape.local
    root = write_run_configs(tmp_path / "run", "inline.cluster", run_resource_entry(
        config, tmp_path / "run"))
    written = json.loads((root / ".radical/pilot/configs/resource_inline.json").read_text())
    assert written["cluster"]["cores_per_node"] == 2
    # the user's own files are linked into the run's directory, not copied or changed
    linked = root / ".radical/pilot/configs/resource_mysite.json"
    assert linked.is_symlink() and linked.resolve() == (user_configs / "resource_mysite.json")


def test_the_run_writes_its_entry_over_a_copy_of_the_users_site_file(user_configs, tmp_path):
    config = pilot_config({"resource": "local.localhost", "cores": 1})
    root = write_run_configs(tmp_path / "run", "local.localhost",
                             run_resource_entry(config, tmp_path / "run"))
    ours = json.loads((root / ".radical/pilot/configs/resource_local.json").read_text())
    assert set(ours) == {"slurm", "localhost"}  # the user's entry kept beside ours
    assert json.loads((user_configs / "resource_local.json").read_text()) == {"slurm": SLURM_ENTRY}


def test_unknown_label_lists_the_labels_and_the_directories(user_configs):
    with pytest.raises(ConfigurationError) as info:
        RadicalPilotBackend(resources={"resource": "nosuch.machine", "cores": 1})
    message = str(info.value)
    assert info.value.config_key == "resource"
    assert "'mysite.slurm'" in message and "'local.localhost'" in message
    assert str(user_configs) in message and "radical/pilot/configs" in message


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"resources": {"resource": "mysite.slurm"}}, "cores"),
        ({"resources": {"resource": "nodot"}}, "resource"),
        ({"resources": {"resource": "x.y", "cores": 1}, "resource_config": {"no": "schemas"}},
         "resource_config"),
        ({"keep_sandbx": True}, "keep_sandbx"),
    ],
)
def test_bad_options_name_the_key(user_configs, kwargs, key):
    with pytest.raises(ConfigurationError) as info:
        RadicalPilotBackend(**kwargs)
    assert info.value.config_key == key


def test_user_dir_from_home_when_no_override(monkeypatch, tmp_path):
    monkeypatch.delenv("RADICAL_CONFIG_USER_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    from rhapsody_prefect.backends.radical_pilot.resource_configs import user_config_dir

    assert user_config_dir() == tmp_path / ".radical" / "pilot" / "configs"
    assert os.environ["HOME"] == str(tmp_path)
