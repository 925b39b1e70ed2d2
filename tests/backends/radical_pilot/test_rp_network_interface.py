"""The radical_pilot backend's `network_interface` option, without a pilot (fast).

The option names the network interface RADICAL-Pilot's ZMQ endpoints bind to and
advertise (docs/network.md). It is checked when the backend is created, against this
machine's interfaces; the wrappers and the bootstrap hook carry the name (not the
address) to RP's processes, which resolve it on the node they run on. The pilot case is
tests/system/test_listening_sockets.py::test_slurm_pilot_with_network_interface_lo_listens_on_loopback_only.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("radical.pilot")

from rhapsody_prefect import ConfigurationError
from rhapsody_prefect.backends.radical_pilot import RadicalPilotBackend, bind_interface
from rhapsody_prefect.backends.radical_pilot.bind_wrappers import (
    InterfaceBinding,
    binding_for_run,
)
from rhapsody_prefect.backends.radical_pilot.config import network_interface

SLURM = {"resource": "mysite.slurm", "nodes": 2}


def slurm_config(tmp_path: pathlib.Path) -> dict[str, Any]:
    return {"schemas": {"local": {"job_manager_endpoint": "slurm://localhost/",
                                  "filesystem_endpoint": "file://localhost/"}},
            "default_schema": "local", "resource_manager": "SLURM", "cores_per_node": 2,
            "default_remote_workdir": str(tmp_path / "sandboxes")}


def backend(tmp_path: pathlib.Path, value: Any) -> RadicalPilotBackend:
    return RadicalPilotBackend(SLURM, resource_config=slurm_config(tmp_path), raptor=False,
                               work_dir=tmp_path / "work", network_interface=value)


# ------------------------------------------------------------------ validation
def test_unknown_interface_is_refused_naming_it_and_listing_the_found_ones(tmp_path) -> None:
    with pytest.raises(ConfigurationError) as info:
        backend(tmp_path, "nosuch0")
    message = str(info.value)
    assert info.value.config_key == "network_interface"
    assert "'nosuch0' is not a network interface of this machine" in message
    lo = bind_interface.loopback_interface()
    assert "interfaces found: " in message and f"{lo} (127.0.0.1)" in message, message
    for name in bind_interface.interfaces():
        assert name in message


@pytest.mark.parametrize("value", [3, 1.5, True, b"lo", ["lo"], {"name": "lo"}, ""])
def test_a_value_that_is_not_an_interface_name_is_refused(tmp_path, value: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        backend(tmp_path, value)
    assert info.value.config_key == "network_interface"
    assert "must be the name of a network interface" in str(info.value)
    assert repr(value) in str(info.value)


def test_an_interface_without_ipv4_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bind_interface, "interfaces",
                        lambda: {"lo": ["127.0.0.1"], "ib0": [], "eth0": ["192.0.2.2"]})
    with pytest.raises(ConfigurationError) as info:
        network_interface("ib0")
    assert "'ib0' has no IPv4 address" in str(info.value)
    assert "ib0 (no IPv4 address)" in str(info.value) and "eth0 (192.0.2.2)" in str(info.value)
    assert network_interface("eth0") == "eth0"
    with pytest.raises(bind_interface.InterfaceUnsupported, match="no IPv4"):
        bind_interface.interface_address("ib0")


def test_a_known_interface_is_kept_and_none_is_the_default(tmp_path) -> None:
    lo = bind_interface.loopback_interface()
    assert backend(tmp_path, lo).config.network_interface == lo
    assert backend(tmp_path, None).config.network_interface is None
    assert RadicalPilotBackend(work_dir=tmp_path / "w").config.network_interface is None
    assert bind_interface.interface_address(lo) == "127.0.0.1"


def test_the_option_is_part_of_a_shared_pilots_key(tmp_path) -> None:
    lo = bind_interface.loopback_interface()
    assert backend(tmp_path, lo)._share_key() != backend(tmp_path, None)._share_key()


def test_unknown_options_list_network_interface(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="network_interface"):
        RadicalPilotBackend(work_dir=tmp_path, network_iface="lo")


# ---------------------------------------------- what a batch run gets with it
def test_a_batch_run_gets_the_hook_rps_iface_and_the_wrappers(tmp_path) -> None:
    lo = bind_interface.loopback_interface()
    environment = {"PATH": "/usr/bin"}
    entry = {"pre_bootstrap_0": ["module load x"], "cores_per_node": 2}
    wrappers, written = binding_for_run(tmp_path, entry, environment, lo, batch=True)
    hook = f". {wrappers.hook}"
    assert wrappers.directory == tmp_path.resolve() / "bind_interface"  # docs/network.md
    assert written["pre_bootstrap_0"] == ["module load x", hook]
    assert written["pre_bootstrap_1"] == [hook]
    assert written["network_interface"] == lo
    assert entry == {"pre_bootstrap_0": ["module load x"], "cores_per_node": 2}  # a copy
    assert environment == {"PATH": f"{wrappers.directory}:/usr/bin",
                           "RADICAL_DEFAULT_IFACE": lo}
    assert (wrappers.iface, wrappers.address) == (lo, "127.0.0.1")
    text = wrappers.hook.read_text()
    assert f"RADICAL_DEFAULT_IFACE={lo}" in text and "radical-pilot-agent_0()" in text
    agent = (wrappers.directory / "radical-pilot-agent_0").read_text()
    assert f"run_wrapped({str(pathlib.Path(sys.executable).parent / 'radical-pilot-agent_0')!r}"\
        in agent and f"{lo!r})" in agent  # the name travels; each node resolves it


def test_a_local_run_keeps_loopback_and_rps_own_iface_unset(tmp_path) -> None:
    wrappers, written = binding_for_run(tmp_path, {}, {"PATH": "/usr/bin"})
    assert wrappers.iface == bind_interface.loopback_interface() and wrappers.address == "127.0.0.1"
    assert "network_interface" not in written


def test_a_batch_run_refuses_a_run_dir_the_bootstrap_cannot_pass(tmp_path) -> None:
    odd = tmp_path / "has space"
    with pytest.raises(ConfigurationError) as info:
        binding_for_run(odd, {}, {"PATH": "/usr/bin"}, bind_interface.loopback_interface(),
                        batch=True)
    assert info.value.config_key == "work_dir" and "compute nodes" in str(info.value)


# ------------------------------------------------- the patch, for an address
def test_the_patch_binds_and_advertises_the_given_address() -> None:
    import radical.utils as ru
    import zmq

    addresses = [a for a in (bind_interface.interfaces().values()) for a in a]
    address = next((a for a in addresses if a != "127.0.0.1"), "127.0.0.1")
    with bind_interface.installed(address):
        assert bind_interface.installed_address() == address
        with pytest.raises(bind_interface.InterfaceUnsupported, match="one interface per process"):
            bind_interface.install("127.0.0.2" if address == "127.0.0.1" else "127.0.0.1")
        sock = zmq.Context.instance().socket(zmq.PUB)
        try:
            url = ru.zmq.pubsub.zmq_bind(sock)
            assert ru.Url(url).host == address
        finally:
            sock.close(linger=0)
        server = ru.zmq.Server(uid="probe")
        assert server._iface == address
    assert bind_interface.installed_address() is None
    assert not getattr(ru.zmq.pubsub.zmq_bind, "_rhapsody_bind_interface", False)


def test_a_wrapper_on_a_node_without_the_interface_refuses_to_run(tmp_path) -> None:
    """What the agent's node does when it has no such interface: exit 3, saying why."""
    wrappers = InterfaceBinding(tmp_path / "wrappers")
    bridge = wrappers.directory / "radical-pilot-bridge"
    bridge.write_text(bridge.read_text().replace(f"{wrappers.iface!r})", "'nosuch0')"))
    done = subprocess.run([str(bridge)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done
    assert "refusing to run" in done.stderr and "no network interface 'nosuch0'" in done.stderr
