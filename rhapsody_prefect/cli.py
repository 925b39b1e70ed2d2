"""The `rhapsody-prefect` command: which backends work here, and what they still need.

    $ rhapsody-prefect backends             # the discover_backends() table, with reasons
    $ rhapsody-prefect backends --json
    $ rhapsody-prefect doctor               # check this machine; exit 1 if a requirement fails
    $ rhapsody-prefect doctor --backend radical_pilot --backend dask

`backends` starts nothing: it imports each backend's dependencies and prints
what is missing for every unavailable one. `doctor` checks, for each backend,
what it needs on this machine (imports; RADICAL-Pilot's helper executables,
`PATH` and `VIRTUAL_ENV`; an MPI launcher for multi-rank tasks; CPU and GPU
counts) and the Prefect side (version, `PREFECT_HOME`, whether the API in
`PREFECT_API_URL` answers, or that an ephemeral server will be used). Checks of
the `concurrent` backend, Prefect and the backends named with `--backend` are
required; the exit code is 1 when one of them fails, 0 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import inspect
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .backends.discovery import BackendRegistry, list_backends, why_unavailable
from .core.launchers import MPI_LAUNCHERS
from .core.machine import usable_cores

Status = Literal["ok", "warn", "fail", "info"]


# ------------------------------------------------------------------- backends
@dataclasses.dataclass
class BackendRow:
    name: str
    available: bool
    detail: str


def backend_rows() -> list[BackendRow]:
    """One row per registered backend: available, and the reason when it is not."""
    rows = []
    for name in list_backends():
        reason = why_unavailable(name)
        rows.append(BackendRow(name, reason is None, reason or _availability_detail(name)))
    return rows


def _availability_detail(name: str) -> str:
    """What an available backend reports about itself (versions, paths)."""
    try:
        module = inspect.getmodule(BackendRegistry.get_backend_class(name))
        check = getattr(module, "availability", None)
        if callable(check):
            return str(check()[1])
    except Exception as error:  # only decoration; availability was already decided
        return f"available ({type(error).__name__} while describing it)"
    return "available"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    # The last column is free text: do not pad it.
    widths[-1] = 0
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * max(w, len(h)) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def cmd_backends(args: argparse.Namespace) -> int:
    rows = backend_rows()
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    else:
        print(format_table(
            ("BACKEND", "AVAILABLE", "DETAILS"),
            [(r.name, "yes" if r.available else "no", r.detail) for r in rows],
        ))
    return 0


# --------------------------------------------------------------------- doctor
@dataclasses.dataclass
class Check:
    area: str
    name: str
    status: Status
    detail: str
    required: bool = False

    @property
    def failed(self) -> bool:
        return self.required and self.status == "fail"


def _check(area: str, name: str, ok: bool, detail: str, required: bool,
           missing: Status = "fail") -> Check:
    if ok:
        return Check(area, name, "ok", detail, required)
    return Check(area, name, missing if not required else "fail", detail, required)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_count() -> tuple[int, str]:
    """GPUs visible here, and how they were found (nvidia-smi, rocm-smi, /dev)."""
    for tool, args in (("nvidia-smi", ["-L"]), ("rocm-smi", ["--showid"])):
        path = shutil.which(tool)
        if path is None:
            continue
        try:
            out = subprocess.run([path, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            marker = "GPU " if tool == "nvidia-smi" else "GPU["
            count = sum(1 for line in out.stdout.splitlines() if line.strip().startswith(marker))
            return count, tool
    devices = sorted(Path("/dev").glob("nvidia[0-9]*"))
    if devices:
        return len(devices), "/dev/nvidia*"
    return 0, "no nvidia-smi, rocm-smi or /dev/nvidia*"


def check_machine() -> list[Check]:
    gpus, how = gpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu_detail = f"{gpus} ({how})" + (f"; CUDA_VISIBLE_DEVICES={visible}" if visible else "")
    return [
        _check("machine", "python", sys.version_info >= (3, 11),
               f"{sys.version.split()[0]} at {sys.executable}", required=True),
        Check("machine", "cpus", "info",
              f"{usable_cores()} usable (os.cpu_count {os.cpu_count()})"),
        Check("machine", "gpus", "info", gpu_detail),
    ]


def check_prefect(api_timeout: float = 5.0) -> list[Check]:
    checks: list[Check] = []
    version = _version("prefect")
    checks.append(_check("prefect", "import", version is not None,
                         f"prefect {version}" if version else "prefect is not installed",
                         required=True))
    if version is None:
        return checks
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    home = Path(settings.home).expanduser()
    writable = _writable(home)
    checks.append(_check("prefect", "PREFECT_HOME", writable,
                         f"{home} ({'writable' if writable else 'not writable'})", required=True))
    api_url = settings.api.url
    if api_url:
        ok, detail = _api_health(str(api_url), api_timeout)
        checks.append(_check("prefect", "api", ok, detail, required=True))
    else:
        ephemeral = settings.server.ephemeral.enabled
        db = settings.server.database.connection_url
        db_text = db.get_secret_value() if hasattr(db, "get_secret_value") else str(db)
        checks.append(Check(
            "prefect", "api", "info" if ephemeral else "warn",
            "PREFECT_API_URL is not set: each flow run starts an ephemeral API server"
            + (f" (database {db_text})" if ephemeral else
               " but PREFECT_SERVER_EPHEMERAL_ENABLED is false"),
        ))
    ui_url = settings.ui_url
    if ui_url:
        checks.append(Check("prefect", "ui", "info", str(ui_url)))
    return checks


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _api_health(api_url: str, timeout: float) -> tuple[bool, str]:
    url = api_url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(200).decode(errors="replace").strip()
            return response.status == 200, f"{api_url} answers /health: {body}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return False, f"{api_url} does not answer /health: {reason}"


def check_backend(name: str, required: bool) -> list[Check]:
    reason = why_unavailable(name)
    checks = [_check(name, "available", reason is None,
                     reason or _availability_detail(name), required, missing="warn")]
    if name == "dask":
        checks.extend(_check_dask(required))
    elif name == "radical_pilot":
        checks.extend(_check_radical_pilot(required))
    return checks


def _check_dask(required: bool) -> list[Check]:
    checks = []
    for dist in ("dask", "distributed"):
        version = _version(dist)
        checks.append(_check("dask", dist, version is not None,
                             version or f"{dist} is not installed "
                             "(pip install 'rhapsody-prefect[dask]')", required, missing="warn"))
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    checks.append(Check("dask", "scheduler", "info",
                        f"DASK_SCHEDULER_ADDRESS={address}" if address else
                        "no DASK_SCHEDULER_ADDRESS: the backend starts a LocalCluster "
                        "unless given address= or cluster="))
    return checks


def _check_radical_pilot(required: bool) -> list[Check]:
    checks = []
    version = _version("radical.pilot")
    checks.append(_check("radical_pilot", "radical.pilot", version is not None,
                         version or "radical.pilot is not installed "
                         "(pip install 'rhapsody-prefect[radical_pilot]')",
                         required, missing="warn"))
    bin_dir = Path(sys.executable).parent
    path_entries = os.environ.get("PATH", "").split(os.pathsep)
    try:  # the list's owner imports radical.pilot: here, not when the CLI is imported
        from .backends.radical_pilot.processes import REQUIRED_HELPERS
    except Exception as error:  # not installed or broken: the "available" row says why
        checks.append(_check("radical_pilot", "helpers", False,
                             f"not checked: the radical_pilot backend does not import "
                             f"({type(error).__name__}: {error})", required, missing="warn"))
    else:
        found = {name: shutil.which(name, path=os.pathsep.join([str(bin_dir), *path_entries]))
                 for name in REQUIRED_HELPERS}
        missing = [name for name, where in found.items() if where is None]
        checks.append(_check(
            "radical_pilot", "helpers", not missing,
            f"missing {missing}" if missing else f"{', '.join(REQUIRED_HELPERS)} in "
            f"{sorted({str(Path(p).parent) for p in found.values() if p})}",
            required, missing="warn"))
    on_path = str(bin_dir) in path_entries
    checks.append(Check(
        "radical_pilot", "PATH", "ok" if on_path else "warn",
        f"{bin_dir} is on PATH" if on_path else
        f"{bin_dir} is not on PATH: the backend adds it for its own processes; "
        f"add it (or activate the venv) to run RADICAL-Pilot directly",
    ))
    venv = os.environ.get("VIRTUAL_ENV")
    matches = venv is not None and Path(venv).resolve() == Path(sys.prefix).resolve()
    checks.append(Check(
        "radical_pilot", "VIRTUAL_ENV", "ok" if matches else "warn",
        f"VIRTUAL_ENV={venv}" if matches else
        f"VIRTUAL_ENV={venv!r}, this Python's prefix is {sys.prefix}: the backend sets it "
        "for its own processes; activate the venv to run RADICAL-Pilot directly",
    ))
    launchers = {name: shutil.which(name) for name in MPI_LAUNCHERS}
    present = {k: v for k, v in launchers.items() if v}
    checks.append(Check(
        "radical_pilot", "mpi launcher", "ok" if present else "warn",
        ", ".join(f"{k} ({v})" for k, v in present.items()) if present else
        "no mpiexec/mpirun/srun: tasks with ranks > 1 cannot run "
        "(Debian: apt-get install mpich or openmpi-bin)",
    ))
    home = Path.home()
    checks.append(_check("radical_pilot", "HOME", _writable(home),
                         f"{home} (sandboxes go under $HOME)", required, missing="warn"))
    return checks


def run_doctor(backends: Sequence[str] | None = None, api_timeout: float = 5.0) -> list[Check]:
    """All checks; backends named in `backends` (and `concurrent`) are required."""
    selected = list(backends or [])
    names = selected or list_backends()
    checks = check_machine() + check_prefect(api_timeout)
    for name in names:
        checks.extend(check_backend(name, required=name == "concurrent" or name in selected))
    if "concurrent" not in names:
        checks.extend(check_backend("concurrent", required=True))
    return checks


_MARKS: dict[Status, str] = {"ok": "OK", "warn": "WARN", "fail": "FAIL", "info": "INFO"}


def cmd_doctor(args: argparse.Namespace) -> int:
    unknown = [name for name in args.backend or [] if name not in list_backends()]
    if unknown:
        print(f"Unknown backend(s) {unknown}; registered: {list_backends()}", file=sys.stderr)
        return 2
    checks = run_doctor(args.backend, args.api_timeout)
    failed = [c for c in checks if c.failed]
    if args.json:
        print(json.dumps({"ok": not failed,
                          "checks": [dataclasses.asdict(c) for c in checks]}, indent=2))
    else:
        print(format_table(
            ("STATUS", "AREA", "CHECK", "DETAILS"),
            [(_MARKS[c.status] + ("*" if c.required else ""), c.area, c.name, c.detail)
             for c in checks],
        ))
        print("\n* required" + (f"; {len(failed)} required check(s) failed: "
                                + ", ".join(f"{c.area}/{c.name}" for c in failed)
                                if failed else "; all required checks passed"))
    return 1 if failed else 0


# ----------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rhapsody-prefect",
        description="RHAPSODY backends for Prefect: what works on this machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    backends = sub.add_parser("backends", help="list backends and why any is unavailable")
    backends.add_argument("--json", action="store_true", help="machine-readable output")
    backends.set_defaults(func=cmd_backends)
    doctor = sub.add_parser("doctor", help="check what each backend needs on this machine")
    doctor.add_argument("--backend", action="append", metavar="NAME",
                        help="backend you need (repeatable); its checks become required. "
                             "Default: check all, require only 'concurrent'")
    doctor.add_argument("--api-timeout", type=float, default=5.0,
                        help="seconds to wait for the Prefect API (default 5)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
