"""A throwaway PostgreSQL cluster, and a real `prefect server` that keeps its database there.

    def test_something(postgres_cluster):          # PostgresCluster: url, port, start_seconds
        ...

    def test_deploy(prefect_server_postgres):      # PrefectServer (fixtures_prefect_server)
        ...

The cluster is made with Debian's own binaries (`apt-get install postgresql`,
which `make test` does through the Makefile's DEBIAN_PACKAGES):
`/usr/lib/postgresql/<version>/bin/initdb` and `pg_ctl`. It lives in a new
temporary directory (data, Unix socket, log), listens on 127.0.0.1 only, on a
free port of its own, with password (scram-sha-256) authentication over TCP, so
it never meets a system cluster on 5432. As at a site, the server connects as a
role that owns its database and is not a superuser (Prefect's migrations create
the `pg_trgm` extension, which PostgreSQL 13+ lets a database owner do).
initdb refuses to run as root: as root, the cluster's processes run as the
`postgres` user the Debian package creates.
Both fixtures are session-scoped and stop what they started in teardown
(`pg_ctl stop -m fast`, then SIGKILL of the postmaster if it is still there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .fixtures_prefect_server import (
    BIN,
    SERVER_START_TIMEOUT,
    PrefectServer,
    free_port,
    server_env,
    start_group,
    stop_group,
    wait_healthy,
)

DATABASE = "prefect"
ROLE = "prefect"
SUPERUSER = "postgres"
POSTGRES_START_TIMEOUT = 60


@dataclasses.dataclass
class PostgresCluster:
    bin_dir: pathlib.Path
    base: pathlib.Path
    port: int
    password: str
    #: initdb + pg_ctl start + role and database, seconds
    start_seconds: float

    @property
    def data(self) -> pathlib.Path:
        return self.base / "data"

    @property
    def log(self) -> pathlib.Path:
        return self.base / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL with the asyncpg driver, as PREFECT_API_DATABASE_CONNECTION_URL."""
        return (f"postgresql+asyncpg://{ROLE}:{self.password}@127.0.0.1:{self.port}/"
                f"{DATABASE}")


def postgres_bin_dir() -> pathlib.Path:
    """The newest Debian PostgreSQL server binaries, e.g. /usr/lib/postgresql/15/bin."""
    candidates = [
        path.parent for path in pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if (path.parent / "pg_ctl").exists()
    ]
    if not candidates:
        pytest.fail("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: "
                    "install Debian's `postgresql` (`make system-deps` does)")
    return max(candidates, key=lambda path: int(path.parent.name.split(".")[0]))


def _as_cluster_user() -> dict[str, Any]:
    """subprocess arguments that run a command as the cluster's owner (postgres when root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _run(argv: list[str], base: pathlib.Path, timeout: float = 120,
         stdin: str | None = None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C",
           "HOME": str(base), "TZ": "UTC"}
    done = subprocess.run(argv, cwd=base, env=env, capture_output=True, text=True,
                          timeout=timeout, input=stdin if stdin is not None else "",
                          **_as_cluster_user())
    if done.returncode != 0:
        pytest.fail(f"{argv} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _postmaster_pid(data: pathlib.Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """initdb a new cluster in a temporary directory, start it on 127.0.0.1, create `prefect`."""
    bin_dir = postgres_bin_dir()
    # Not under pytest's tmp_path: its parents are 0700 root, and as root the cluster runs
    # as `postgres`, which must reach the data and socket directories.
    base = pathlib.Path(tempfile.mkdtemp(prefix="rhapsody-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
    password = secrets.token_hex(16)
    port = free_port()
    data = base / "data"
    started = time.monotonic()
    try:
        # Local (socket) connections trusted, for the set-up below; TCP needs a password.
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER,
              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
              "--locale=C", "--no-sync"], base)
        options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=100")
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"),
              "-o", options, "-w", "-t", str(POSTGRES_START_TIMEOUT), "start"], base,
             timeout=POSTGRES_START_TIMEOUT + 30)
        psql = [str(bin_dir / "psql"), "-h", str(base), "-p", str(port), "-U", SUPERUSER,
                "-v", "ON_ERROR_STOP=1", "-q", "-d", "postgres"]
        _run(psql, base, stdin=f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';\n"
                              f"CREATE DATABASE {DATABASE} OWNER {ROLE};\n")
        cluster = PostgresCluster(bin_dir=bin_dir, base=base, port=port, password=password,
                                  start_seconds=time.monotonic() - started)
        yield cluster
    finally:
        _stop_cluster(bin_dir, base, data)


def _stop_cluster(bin_dir: pathlib.Path, base: pathlib.Path, data: pathlib.Path) -> None:
    pid = _postmaster_pid(data)
    if pid is not None:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                            "-t", "30", "stop"], cwd=base, capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL, **_as_cluster_user())
        # Whatever pg_ctl could not stop: the postmaster takes its children with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server_postgres(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectServer]:
    """`prefect server start` on 127.0.0.1 with its database in `postgres_cluster`."""
    base = tmp_path_factory.mktemp("prefect-server-postgres")
    home = base / "home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = base / "server.log"
    env = server_env(home)
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres_cluster.url
    env["PREFECT_UI_API_URL"] = api_url
    started = time.monotonic()
    process = start_group(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env, log,
    )
    try:
        wait_healthy(api_url, process, log, SERVER_START_TIMEOUT)
        # Clients (deploy, worker, flow runs) need only the API; the database URL stays
        # with the server, as in a production install.
        client_env = server_env(home, api_url)
        del client_env["PREFECT_API_DATABASE_CONNECTION_URL"]
        yield PrefectServer(
            api_url=api_url, ui_url=f"http://127.0.0.1:{port}", home=home,
            env=client_env, log=log, start_seconds=time.monotonic() - started,
        )
    finally:
        stop_group(process)
