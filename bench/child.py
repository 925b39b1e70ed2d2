"""One benchmark measurement in a fresh process (spawned by `bench/run.py`).

    python bench/child.py '{"row": "rhapsody-concurrent", "workload": "python", "n": 200, ...}'

Prints one line `BENCH-RESULT <json>` with seconds (timed window), completed
tasks, RSS baseline and peak, or `error`.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import traceback
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

MARKER = "BENCH-RESULT "


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    warnings.filterwarnings("ignore")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from bench.workloads import runner_for

    try:
        if spec["row"].startswith("ensemble-"):  # bench/slurm.py --ensemble, bench/profile.py
            from bench.ensemble_rows import run_ensemble as run
        else:
            run = runner_for(spec["row"])
        result = run(spec["row"], spec["workload"], spec["n"], spec)
    except BaseException as error:  # report, never hang the parent
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"[:300]}
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
