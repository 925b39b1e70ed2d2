"""Keep RADICAL-Pilot's ZMQ endpoints on one network interface (loopback by default).

RADICAL-Pilot (RP) has no setting for the address its ZMQ endpoints bind to.
In radical.utils 1.103 every endpoint binds all interfaces:

* `radical.utils.zmq.utils.zmq_bind` binds `tcp://*:<port>` (imported by name
  into `zmq.pubsub`, `zmq.queue` and `zmq.pipe`): every PubSub/Queue bridge and
  every Pipe without a URL;
* `radical.utils.zmq.server.Server` binds `tcp://*:10000-11000` by default
  (RP's session registry, the agent's registry and service endpoint, the raptor
  master's task service) and RP's `Proxy` passes `tcp://*:10000+`;
* the agent's command port binds `ru.get_hostip()`, the first non-loopback
  interface unless RU's `iface` setting (`RADICAL_DEFAULT_IFACE`) names another.

Those binds happen in the client process (registry, proxy, component-manager
pipes), in processes it forks (the proxy's per-session bridges), and in
processes RP *executes by name from PATH*: `radical-pilot-bridge`,
`radical-pilot-component`, `radical-pilot-agent_0` (from the pilot's
`bootstrap_0.sh`), `radical-pilot-raptor-master`/`-worker` (as tasks). Bridges
daemonize (their parent becomes pid 1). A patch in the client process reaches
only the first two groups. This module reaches all of them:

1. `install(address)` makes the two bind points in *this* process (and what it
   forks) bind on `address` (default 127.0.0.1) and advertise it. Only the bind
   address is replaced: RU's own `zmq_bind` still runs (its ports, its retries) on a
   socket whose wildcard bind lands on `address`, and `Server` gets `address` as its
   interface. Upstream-shaped, the fix is `zmq_bind(sock, iface=None)` binding
   `tcp://{iface or '*'}:<port>` and advertising `iface or get_hostip()`.
   Reference-counted: `uninstall()` restores RU's functions when the last user is done.
2. `bind_wrappers.InterfaceBinding(directory, iface)` writes small wrapper executables,
   one per RP helper, that resolve the IPv4 address of interface `iface` *on the node
   they run on* (`interface_address`), install the same patch and then run the
   original helper script (`runpy`), and a shell hook for the pilot's `bootstrap_0.sh`.
   `InterfaceBinding.environment()` puts the wrappers first on `PATH` (RP starts its
   helpers by name) and sets `RADICAL_DEFAULT_IFACE` to the interface (RP forwards
   every `RADICAL_*` variable to the pilot job, so the agent's advertised address
   and command port are on it too). `InterfaceBinding.pre_bootstrap()` is the
   resource-config entry that makes the agent's bootstrap start the wrapped
   `radical-pilot-agent_0` (the bootstrap activates the virtualenv, which puts the
   venv's `bin` before any PATH the client set). `InterfaceBinding.executable(name)`
   is the wrapped raptor master and worker for their task descriptions (RP activates
   the `rp` named env for tasks, so PATH alone does not reach them).

A pilot on this machine (`local.*`) uses the loopback interface. A batch pilot uses
it only when the backend's `network_interface` option names an interface (compute
nodes must reach the client's proxy): then the wrappers and the hook live in the run
directory, which must be on a file system the compute nodes see. `check()` refuses
any radical.utils / radical.pilot whose shape differs from the one validated here
(the exact code of `zmq_bind`, the lines of every other point it relies on), so an
upgrade fails loudly instead of silently binding all interfaces again; the releases
themselves are checked when the backend is created (`rp_import.unsupported_releases`).

Usage (what the radical_pilot backend does for a local pilot)::

    from rhapsody_prefect.backends.radical_pilot import bind_interface, bind_wrappers

    bind_interface.check()                    # InterfaceUnsupported if RU/RP changed
    wrappers = bind_wrappers.InterfaceBinding(run_dir / "bind_interface", "lo")
    resource_cfg["localhost"]["pre_bootstrap_0"] = wrappers.pre_bootstrap()
    bind_interface.install(wrappers.address)  # this process: registry, proxy, pipes
    try:
        with patched_environ(wrappers.environment()):    # RP's helpers inherit it
            session = rp.Session(...)
            ...                                  # pmgr, tmgr, submit_pilots
        master = pilot.submit_raptors([rp.TaskDescription({
            "mode": rp.RAPTOR_MASTER,
            "executable": wrappers.executable("radical-pilot-raptor-master"), ...})])[0]
        ...
    finally:
        session.close(terminate=True)
        bind_interface.uninstall()
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import runpy
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: The address RP's endpoints bind to (and advertise) by default once installed.
LOOPBACK = "127.0.0.1"
#: sha256 of `inspect.getsource(radical.utils.zmq.utils.zmq_bind)`: the code the
#: patch relies on (it binds `'tcp://*:%s' % port`, advertises LAST_ENDPOINT with
#: `get_hostip()`). The same in radical.utils 1.100.0, 1.102.0, 1.103.0 and 1.103.1.
ZMQ_BIND_SHA256 = frozenset({
    "8255f6c2cd299cb4bbf907dd5ed53e653763f18d79cea2339b98b63139af8c18",
})
#: Modules that import `zmq_bind` by name (so each binding must be replaced).
_ZMQ_BIND_USERS = (
    "radical.utils.zmq.utils",
    "radical.utils.zmq.pubsub",
    "radical.utils.zmq.queue",
    "radical.utils.zmq.pipe",
)
_WILDCARDS = ("*", "0.0.0.0", "")


class InterfaceUnsupported(RuntimeError):
    """The installed radical.utils / radical.pilot is not the shape this remedy patches."""


# ------------------------------------------------------------------- the check
def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as error:
        raise InterfaceUnsupported(f"cannot read the source of {obj!r}: {error}") from error


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise InterfaceUnsupported(
            f"radical.utils/radical.pilot changed shape: {what}. The interface binding "
            "would not cover every endpoint; re-validate bind_interface.py."
        )


def source_sha256(obj: Any) -> str:
    """sha256 of an object's source (what `ZMQ_BIND_SHA256` holds for `zmq_bind`)."""
    return hashlib.sha256(_source(obj).encode()).hexdigest()


def check() -> None:
    """Verify the installed RU/RP is the shape patched here.

    Raises InterfaceUnsupported, naming what changed. Imports radical.utils and
    radical.pilot's bootstrap file path; starts nothing.
    """
    zutils = importlib.import_module("radical.utils.zmq.utils")
    server = importlib.import_module("radical.utils.zmq.server")
    host = importlib.import_module("radical.utils.host")
    original = _ORIGINALS.get("zmq_bind", getattr(zutils, "zmq_bind", None))
    _require(original is not None, "radical.utils.zmq.utils.zmq_bind is gone")
    _require(source_sha256(original) in ZMQ_BIND_SHA256,
             "radical.utils.zmq.utils.zmq_bind is not the validated code "
             f"(sha256 {source_sha256(original)})")
    for name in _ZMQ_BIND_USERS:
        module = importlib.import_module(name)
        bound = getattr(module, "zmq_bind", None)
        _require(bound is original or getattr(bound, "_rhapsody_bind_interface", False),
                 f"{name}.zmq_bind is not radical.utils.zmq.utils.zmq_bind")
    init = _source(_ORIGINALS.get("Server.__init__", server.Server.__init__))
    _require("'tcp://*:10000-11000'" in init and "self._iface = tmp[1].lstrip('/')" in init,
             "radical.utils.zmq.Server.__init__ no longer parses its URL into self._iface")
    _require("'%s://%s:%s' % (self._proto, self._iface, port)"
             in _source(server.Server._iterate_urls),
             "radical.utils.zmq.Server._iterate_urls no longer binds self._iface")
    work = _source(server.Server._work)
    _require("self._sock.bind(url)" in work and "addr.host  = get_hostip()" in work,
             "radical.utils.zmq.Server._work no longer binds _iterate_urls / advertises "
             "get_hostip()")
    _require("DefaultConfig().get('iface')" in _source(host.get_hostip),
             "radical.utils.get_hostip no longer reads the iface setting")
    defaults = Path(host.__file__).with_name("configs") / "utils_default.json"
    _require("${RADICAL_DEFAULT_IFACE}" in defaults.read_text(),
             f"{defaults} no longer maps RADICAL_DEFAULT_IFACE to iface")
    pilot_dir = Path(importlib.util.find_spec("radical.pilot").origin).parent
    bootstrap = (pilot_dir / "agent" / "bootstrap_0.sh").read_text()
    _require('$LAUNCHER radical-pilot-agent_0 "$$"' in bootstrap,
             "bootstrap_0.sh no longer starts radical-pilot-agent_0 by name")
    _require('eval "$cmd"' in bootstrap and "pre_bootstrap_0()" in bootstrap,
             "bootstrap_0.sh no longer evaluates pre_bootstrap_0 commands in its shell")
    launching = (pilot_dir / "pmgr" / "launching" / "base.py").read_text()
    _require("jd_dict.executable            = '/bin/bash'" in launching,
             "the pilot job no longer runs bootstrap_0.sh with bash")
    _require("if k.startswith('RADICAL_'):" in launching,
             "RP no longer forwards RADICAL_* variables to the pilot job")
    agent0 = (pilot_dir / "agent" / "agent_0.py").read_text()
    _require("hostip = ru.get_hostip()" in agent0 and "sock.bind((hostip, port))" in agent0,
             "the agent's command port no longer binds ru.get_hostip()")


# ------------------------------------------------------------ in-process patch
_lock = threading.Lock()
_installs = 0
_address = LOOPBACK  # what the installed patch binds and advertises
_ORIGINALS: dict[str, Any] = {}


class _OnAddress:
    """A ZMQ socket whose wildcard `tcp://*:<port>` bind lands on the installed address."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def bind(self, url: str) -> None:
        self._sock.bind(url.replace("tcp://*:", f"tcp://{_address}:", 1))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _wrap_zmq_bind(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def zmq_bind(sock: Any) -> Any:
        addr = original(_OnAddress(sock))  # RU's ports and retries, bound on _address
        addr.host = _address  # RU advertises get_hostip()
        return addr

    zmq_bind._rhapsody_bind_interface = True  # type: ignore[attr-defined]
    return zmq_bind


def _wrap_server_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self._iface in _WILDCARDS:
            self._iface = _address
        elif self._iface != _address:
            raise InterfaceUnsupported(
                f"ru.zmq.Server {self._uid} asked for interface {self._iface!r} while "
                f"rp_bind_interface is installed (everything binds and advertises {_address})"
            )

    __init__._rhapsody_bind_interface = True  # type: ignore[attr-defined]
    return __init__


def _bound_hostip(*_args: Any, **_kwargs: Any) -> str:
    return _address


_bound_hostip._rhapsody_bind_interface = True  # type: ignore[attr-defined]


def install(address: str = LOOPBACK) -> None:
    """Bind (and advertise) RU's ZMQ endpoints created in this process on `address`.

    `address` is an IPv4 address of this host (default 127.0.0.1; see
    `interface_address`). Covers this process and every process it forks afterwards.
    Reference-counted; call `uninstall()` once per `install()`. Runs `check()` first.
    Raises InterfaceUnsupported if already installed for another address (one process
    binds one address).
    """
    global _installs, _address
    with _lock:
        if _installs and address != _address:
            raise InterfaceUnsupported(
                f"RADICAL-Pilot's endpoints in this process already bind {_address}; "
                f"cannot also bind {address} (one interface per process)")
        if _installs == 0:
            check()
            zutils = importlib.import_module("radical.utils.zmq.utils")
            server = importlib.import_module("radical.utils.zmq.server")
            _ORIGINALS["zmq_bind"] = zutils.zmq_bind
            _ORIGINALS["Server.__init__"] = server.Server.__init__
            _ORIGINALS["server.get_hostip"] = server.get_hostip
            _address = address
            bound_zmq_bind = _wrap_zmq_bind(_ORIGINALS["zmq_bind"])
            for name in _ZMQ_BIND_USERS:
                importlib.import_module(name).zmq_bind = bound_zmq_bind
            server.Server.__init__ = _wrap_server_init(_ORIGINALS["Server.__init__"])
            server.get_hostip = _bound_hostip
        _installs += 1


def uninstall() -> None:
    """Undo one `install()`; the last one restores radical.utils' own functions."""
    global _installs
    with _lock:
        if _installs == 0:
            return
        _installs -= 1
        if _installs:
            return
        server = importlib.import_module("radical.utils.zmq.server")
        for name in _ZMQ_BIND_USERS:
            importlib.import_module(name).zmq_bind = _ORIGINALS["zmq_bind"]
        server.Server.__init__ = _ORIGINALS["Server.__init__"]
        server.get_hostip = _ORIGINALS["server.get_hostip"]
        _ORIGINALS.clear()


def is_installed() -> bool:
    return _installs > 0


def installed_address() -> str | None:
    """The address the installed patch binds, None when not installed."""
    return _address if _installs else None


@contextlib.contextmanager
def installed(address: str = LOOPBACK) -> Iterator[None]:
    """`install(address)` for the duration of a `with` block."""
    install(address)
    try:
        yield
    finally:
        uninstall()


# ----------------------------------------------------------------- interfaces
def interfaces() -> dict[str, list[str]]:
    """This host's network interfaces, by name, with their IPv4 addresses (maybe none)."""
    import netifaces  # a radical.utils dependency

    return {str(name): [str(entry["addr"])
                        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET, [])
                        if entry.get("addr")]
            for name in netifaces.interfaces()}


def describe_interfaces(found: dict[str, list[str]]) -> str:
    """`interfaces()` for an error message: "lo (127.0.0.1), ib0 (no IPv4 address)"."""
    return ", ".join(f"{name} ({', '.join(addresses) or 'no IPv4 address'})"
                     for name, addresses in found.items())


def interface_address(name: str) -> str:
    """The IPv4 address of interface `name` on this host (127.0.0.1 if it holds it, else
    its first).

    Raises InterfaceUnsupported naming the interfaces found when there is no such
    interface, or it has no IPv4 address.
    """
    found = interfaces()
    if name not in found:
        raise InterfaceUnsupported(
            f"no network interface {name!r} on this host; interfaces found: "
            + describe_interfaces(found))
    if not found[name]:
        raise InterfaceUnsupported(f"network interface {name!r} has no IPv4 address")
    return LOOPBACK if LOOPBACK in found[name] else found[name][0]


def loopback_interface() -> str:
    """The name of the interface holding 127.0.0.1 (`lo` on Linux, `lo0` on macOS)."""
    for name, addresses in interfaces().items():
        if LOOPBACK in addresses:
            return name
    raise InterfaceUnsupported(f"no network interface holds {LOOPBACK}")


# -------------------------------------------------------- RP's own processes
def run_wrapped(original: str, directory: str, iface: str) -> None:
    """Body of a wrapper executable: patch this process for `iface` (resolved on this
    node), then run RP's helper script."""
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != directory:
        os.environ["PATH"] = os.pathsep.join([directory, path]) if path else directory
    os.environ["RADICAL_DEFAULT_IFACE"] = iface  # before radical.utils reads its config
    try:
        install(interface_address(iface))
    except InterfaceUnsupported as error:
        sys.stderr.write(f"rp_bind_interface: refusing to run {original}: {error}\n")
        raise SystemExit(3) from error
    sys.argv[0] = original
    runpy.run_path(original, run_name="__main__")


__all__ = [
    "LOOPBACK",
    "InterfaceUnsupported",
    "check",
    "describe_interfaces",
    "install",
    "installed",
    "installed_address",
    "interface_address",
    "interfaces",
    "is_installed",
    "loopback_interface",
    "run_wrapped",
    "source_sha256",
    "uninstall",
]
