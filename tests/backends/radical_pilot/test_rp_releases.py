"""The RADICAL-Pilot releases the backend supports, and the interface binding (fast, no pilot).

The backend is tested with radical.pilot 1.103.2 and radical.utils 1.103.1; older
releases differ where it depends on them (rp_import's docstring). pyproject.toml's
`radical_pilot` extra allows exactly the supported releases, and a user who has
another one installed hears which are supported when creating the backend, before
anything starts. The pilot-level check of the interface binding (every listening socket
of a running pilot on 127.0.0.1) is tests/system/test_listening_sockets.py.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import socket
import tomllib

import psutil
import pytest

pytest.importorskip("radical.pilot")

from rhapsody_prefect import ConfigurationError
from rhapsody_prefect.backends.discovery import why_unavailable
from rhapsody_prefect.backends.radical_pilot import RadicalPilotBackend, bind_interface, rp_import
from rhapsody_prefect.backends.radical_pilot.processes import availability
from rhapsody_prefect.backends.radical_pilot.rp_import import (
    SUPPORTED_RELEASES,
    supported_releases,
    unsupported_releases,
)

PYPROJECT = pathlib.Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_the_extra_allows_exactly_the_supported_releases() -> None:
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    allowed = {}
    for requirement in extra["radical_pilot"]:
        name, low, high = re.fullmatch(r"([\w.]+)>=([\d.]+),<([\d.]+)", requirement).groups()
        allowed[name] = (low, high)
    assert allowed == SUPPORTED_RELEASES


def test_the_installed_releases_are_supported() -> None:
    assert unsupported_releases() is None
    assert availability()[0], availability()[1]


@pytest.mark.parametrize(("installed", "named"), [
    ({"radical.pilot": "1.100.0", "radical.utils": "1.100.0"},
     "radical.pilot 1.100.0 and radical.utils 1.100.0 are installed"),
    ({"radical.pilot": "1.102.0", "radical.utils": "1.102.0"},
     "radical.pilot 1.102.0 and radical.utils 1.102.0 are installed"),
    ({"radical.pilot": "1.103.0", "radical.utils": "1.103.1"},
     "radical.pilot 1.103.0 is installed"),
    ({"radical.pilot": "1.103.2", "radical.utils": "1.100.0"},  # RP itself allows it
     "radical.utils 1.100.0 is installed"),
    ({"radical.pilot": "1.104.0", "radical.utils": "1.104.0"},
     "radical.pilot 1.104.0 and radical.utils 1.104.0 are installed"),
    ({"radical.pilot": "1.103.2", "radical.utils": "(not installed)"},
     "radical.utils (not installed) is installed"),
])
def test_another_release_is_refused_naming_the_supported_ones(
        installed: dict[str, str], named: str) -> None:
    message = unsupported_releases(installed)
    assert message is not None and message.startswith(named + ";"), message
    assert "radical.pilot >=1.103.2,<1.104 with radical.utils >=1.103.1,<1.104" in message
    assert supported_releases() in message


@pytest.mark.parametrize("installed", [
    {"radical.pilot": "1.103.2", "radical.utils": "1.103.1"},
    {"radical.pilot": "1.103.10", "radical.utils": "1.103.2"},
])
def test_a_supported_release_passes(installed: dict[str, str]) -> None:
    assert unsupported_releases(installed) is None


def test_creating_the_backend_on_an_unsupported_release_says_which_are_supported(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user with radical.pilot 1.102.0 sees: at creation, before any pilot."""
    real = importlib.metadata.version
    monkeypatch.setattr(rp_import.importlib.metadata, "version",
                        lambda name: "1.102.0" if name == "radical.pilot" else real(name))
    with pytest.raises(ConfigurationError) as info:
        RadicalPilotBackend(work_dir=tmp_path / "work")
    assert info.value.config_key == "radical.pilot"
    assert "radical.pilot 1.102.0 is installed" in str(info.value)
    assert supported_releases() in str(info.value)
    assert not (tmp_path / "work").exists()
    assert availability() == (False, unsupported_releases())
    assert why_unavailable("radical_pilot") == unsupported_releases()


# ------------------------------------------ the patch replaces only the address
def _listening_ports() -> dict[int, set[str]]:
    ports: dict[int, set[str]] = {}
    for conn in psutil.Process().net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN:
            ports.setdefault(conn.laddr.port, set()).add(conn.laddr.ip)
    return ports


def test_rus_own_zmq_bind_runs_and_listens_on_the_address_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RU's port choice and its retry on a taken port still run; only the host differs."""
    import radical.utils as ru
    import zmq

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    offered = iter([taken.getsockname()[1], free_port])
    monkeypatch.setattr(ru.zmq.utils, "find_port", lambda *_a, **_k: next(offered))
    original = ru.zmq.utils.zmq_bind
    sock = zmq.Context.instance().socket(zmq.PUB)
    try:
        with bind_interface.installed("127.0.0.1"):
            assert ru.zmq.queue.zmq_bind is not original
            url = ru.Url(ru.zmq.queue.zmq_bind(sock))
        assert ru.zmq.queue.zmq_bind is original
        assert (url.host, url.port) == ("127.0.0.1", free_port)  # the taken one skipped
        assert sock.getsockopt(zmq.LAST_ENDPOINT).decode() == f"tcp://127.0.0.1:{free_port}"
        assert _listening_ports()[free_port] == {"127.0.0.1"}
    finally:
        sock.close(linger=0)
        taken.close()
