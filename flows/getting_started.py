"""Getting started: Prefect tasks whose bodies run on a RHAPSODY backend.

    python flows/getting_started.py                    # the concurrent backend
    python flows/getting_started.py --backend dask     # a local Dask cluster

Python tasks and a command (`executable_task`) in one flow; Prefect records
every task run, and each task's log shows where its body ran.
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":
    # A fresh PREFECT_HOME on a busy machine needs more than Prefect's default 20 s
    # to start the ephemeral API server; must be set before prefect is imported.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import cloudpickle
from prefect import flow, task
from prefect.settings import get_current_settings

from rhapsody_prefect import ExecutableResult, RhapsodyRunner, executable_task

if __name__ != "__main__":  # loaded by a deployment under a generated module name
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


@task
def square(x: int) -> int:
    return x * x


@executable_task
def hello(name: str) -> list[str]:
    return ["echo", f"hello, {name}"]


@flow(name="getting-started",
      task_runner=RhapsodyRunner(os.environ.get("RHAPSODY_BACKEND", "concurrent")))
def getting_started(n: int = 5, name: str = "rhapsody") -> dict[str, object]:
    squares = square.map(range(n)).result()
    greeting: ExecutableResult = hello.submit(name).result()
    return {"sum_of_squares": sum(squares), "greeting": greeting.stdout.strip()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A first RhapsodyRunner flow")
    parser.add_argument("--backend", default=os.environ.get("RHAPSODY_BACKEND", "concurrent"))
    parser.add_argument("-n", type=int, default=5)
    args = parser.parse_args()
    state = getting_started.with_options(task_runner=RhapsodyRunner(args.backend))(
        n=args.n, return_state=True
    )
    print(state.result())  # raises the flow's error if it failed

    # Where to see this run in the Prefect UI (as at the end of flows/ensemble.py).
    settings = get_current_settings()
    run_page = f"runs/flow-run/{state.state_details.flow_run_id}"
    if settings.api.url:  # PREFECT_API_URL is set: the run went to that server
        print(f"This flow run in the Prefect UI: {settings.ui_url}/{run_page}")
    else:  # a temporary server, gone now; the run is kept in PREFECT_HOME's database
        print(f"Prefect UI: this run used a temporary Prefect server; the run is kept in "
              f"{settings.home}:\n"
              "  prefect server start --host 127.0.0.1    # another shell; loopback only\n"
              f"  open http://127.0.0.1:4200/{run_page}\n"
              "Send the next runs to that server, and see them at http://127.0.0.1:4200/runs:\n"
              "  export PREFECT_API_URL=http://127.0.0.1:4200/api\n"
              "  python flows/getting_started.py")
