"""Profile one benchmark measurement with py-spy (all threads, idle frames dropped).

    .venv/bin/python bench/profile.py rhapsody-concurrent python 200 [--option key=json ...]

Starts the benchmark's Prefect server, runs `bench/child.py` under `py-spy record
--format raw`, and prints the functions with the most samples (inclusive, per
thread), plus the measurement. The raw collapsed stacks stay in the work dir.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.env import VENV_BIN, base_env, prefect_server

CHILD = Path(__file__).resolve().parent / "child.py"


def py_spy_record(command: list[str], output: Path, rate: int, idle: bool = False) -> list[str]:
    """`command` under `py-spy record`: raw collapsed stacks of every thread to `output`
    (idle threads too with `idle`)."""
    return [str(VENV_BIN / "py-spy"), "record", "--format", "raw", "--threads",
            "--rate", str(rate), "-o", str(output), *(["--idle"] if idle else []),
            "--", *command]


def top_functions(raw: Path, limit: int, match: str) -> list[tuple[int, str]]:
    """Inclusive samples per frame (file:function), over stacks containing `match`."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if match and match not in stack:
            continue
        total += int(count)
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0] + ")" \
                if " (" in frame else frame
            if name not in seen:
                seen.add(name)
                counts[name] += int(count)
    return [(total, "TOTAL")] + [(c, f) for f, c in counts.most_common(limit)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("row")
    parser.add_argument("workload")
    parser.add_argument("n", type=int)
    parser.add_argument("--option", action="append", default=[],
                        help="extra spec key=json (e.g. runner_kwargs={...})")
    parser.add_argument("--match", default="", help="only stacks containing this text")
    parser.add_argument("--limit", type=int, default=45)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--idle", action="store_true", help="also sample idle/waiting threads")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rhapsody-profile-"))
    env = base_env(work)
    with prefect_server(env, work / "server.log") as api_url:
        env["PREFECT_API_URL"] = api_url
        spec = {"row": args.row, "workload": args.workload, "n": args.n,
                "dask_address": os.environ.get("BENCH_DASK_ADDRESS"), "rp_cores": 2,
                "work_dir": str(work)}
        for option in args.option:
            key, _, value = option.partition("=")
            spec[key] = json.loads(value)
        raw = work / "profile.txt"
        command = [sys.executable, str(CHILD), json.dumps(spec)]
        if not args.no_profile:
            command = py_spy_record(command, raw, rate=200, idle=args.idle)
        completed = subprocess.run(command, env={**os.environ, **env}, cwd=work,
                                   capture_output=True, text=True)
        print(completed.stdout.strip().splitlines()[-1] if completed.stdout else
              completed.stderr[-2000:])
    if raw.exists():
        for count, name in top_functions(raw, args.limit, args.match):
            print(f"{count:7d}  {name}")
        print(f"raw stacks: {raw}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
