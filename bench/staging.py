"""Files in and out through one RADICAL-Pilot pilot: the RHAPSODY API against raw RP.

    .venv/bin/python bench/staging.py               # 1,000 tasks, 3 repeats (~35 min, 2 busy cores)
    .venv/bin/python bench/staging.py --quick       # CI smoke: 20 tasks, 1 repeat
    .venv/bin/python bench/staging.py --no-runner   # without the Prefect row
    .venv/bin/python bench/staging.py --out /tmp/b  # write /tmp/b/benchmarks.md instead
    .venv/bin/python bench/staging.py --from-results /tmp/rhapsody-bench-staging-PID.json

Issue 23 point 6, its RADICAL-Pilot half. One local pilot (`RadicalPilotBackend` on
local.localhost, raptor=False, `shared=True`), warmed, serves every row; each task
is `/bin/sh -c 'cat in.dat > out.dat'` with its own 100-byte input staged in and
its output staged out to a target of its own (fresh paths per row and repeat).
Rows, interleaved and the order reversed every repeat, medians compared:

- `raw-rp`: `rp.TaskDescription`s with the same executable and the same
  input_staging/output_staging directives the backend writes (checked against
  `translate.staging_directives` at warm-up), submitted in one bulk to the
  backend's own TaskManager (`PilotRun.tmgr`) and waited with `tmgr.wait_tasks`;
- `api-rp`: `backend.submit_tasks` of task dicts with `input_files`/`output_files`,
  then `backend.wait()` (a fresh `shared=True` backend on the same pilot each time);
- `runner-rp`: a flow on `RhapsodyRunner("radical_pilot", shared=True, ...)` (the same
  configuration, so the same pilot) running one `ensemble_map` of an
  `executable_task` returning the same dict; timed from the flow call to its return.

The timed window of every row includes building its descriptions or dicts. Prints
tasks/s per row and the API / raw RP ratio (target >= 0.9x) and writes the section
"Staging through a pilot" of docs/benchmarks.md (kept in bench/staging_section.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.env import REPO, base_env, prefect_server, server_settle
from bench.report import replace_section

BEGIN, END = "<!-- staging:begin -->", "<!-- staging:end -->"
COMMAND = "cat in.dat > out.dat"
SIZE = 100  # bytes per input file
TARGET = 0.9  # api-rp / raw-rp throughput
ROWS: dict[str, str] = {
    "raw-rp": "raw RADICAL-Pilot: TaskDescriptions with the same staging directives, "
              "one bulk `submit_tasks`, `wait_tasks`",
    "api-rp": "RHAPSODY API: `submit_tasks` of dicts with `input_files`/`output_files`, "
              "`wait()`",
    "runner-rp": "`RhapsodyRunner(\"radical_pilot\", shared=True)` flow, one `ensemble_map` "
                 "of an `executable_task`",
}

Files = list[tuple[str, str]]  # (input source, output target), absolute paths


def make_files(directory: Path, count: int) -> Files:
    """`count` distinct 100-byte inputs in `directory`/in and their unused targets."""
    (directory / "in").mkdir(parents=True)
    (directory / "out").mkdir()
    files: Files = []
    for index in range(count):
        source = directory / "in" / f"{index:06d}.dat"
        source.write_text((f"{index:06d} {directory.name} " * 10)[: SIZE - 1] + "\n")
        files.append((str(source), str(directory / "out" / f"{index:06d}.dat")))
    return files


def copied(files: Files) -> int:
    """How many targets hold exactly their input (the staging round trip worked)."""
    count = 0
    for source, target in files:
        try:
            count += Path(target).read_bytes() == Path(source).read_bytes()
        except OSError:
            pass
    return count


def raw_directives(source: str, target: str, rp: Any) -> tuple[list[dict[str, Any]],
                                                               list[dict[str, Any]]]:
    """The directives a raw RP user writes for one file in and one out."""
    return ([{"source": f"file://localhost{source}", "target": "task:///in.dat",
              "action": rp.TRANSFER}],
            [{"source": "task:///out.dat", "target": f"file://localhost{target}",
              "action": rp.TRANSFER}])


def task_dict(uid: str, source: str, target: str) -> dict[str, Any]:
    return {"uid": uid, "executable": "/bin/sh", "arguments": ["-c", COMMAND],
            "input_files": [(source, "in.dat")], "output_files": [("out.dat", target)]}


class Pilot:
    """The one shared pilot and the ways the rows reach it."""

    def __init__(self, work: Path) -> None:
        self.kwargs: dict[str, Any] = {
            "resources": {"resource": "local.localhost", "runtime": 240},
            "work_dir": str(work / "rp"), "raptor": False, "shared": True,
        }
        self.run: Any = None  # the shared PilotRun (session, pilot, tmgr)
        self.shape = ""
        self.active_seconds: float | None = None

    def start(self, probe: Path) -> None:
        """Start the shared pilot, warm every path once and check the directives match."""
        import radical.pilot as rp

        from rhapsody_prefect.backends.radical_pilot import RadicalPilotBackend
        from rhapsody_prefect.backends.radical_pilot.translate import staging_directives

        async def warm() -> None:
            backend = RadicalPilotBackend(**self.kwargs)
            try:
                await backend.wait_active()
                self.run, self.shape = backend._run, backend.shape.describe()
                timings = backend.timings
                self.active_seconds = timings.get("pilot_active", 0) - timings.get(
                    "pilot_submitted", 0)
                await backend.submit_tasks([task_dict("warm", *make_files(probe, 1)[0])])
                await backend.wait()
            finally:
                await backend.terminate()

        asyncio.run(warm())
        source, target = make_files(probe.with_name(probe.name + "-raw"), 1)[0]
        ours = staging_directives({"input_files": [(source, "in.dat")],
                                   "output_files": [("out.dat", target)]}, "x", None)
        if ours != raw_directives(source, target, rp):
            raise RuntimeError(f"the backend's directives changed: {ours}")
        if self.raw("warm", [(source, target)])[1] != 1:
            raise RuntimeError("the raw RP warm-up task did not stage its file back")

    def raw(self, tag: str, files: Files) -> tuple[float, int]:
        """Raw RP on the backend's TaskManager: seconds, tasks DONE."""
        import radical.pilot as rp

        tmgr = self.run.tmgr
        start = time.perf_counter()
        descriptions = []
        for index, (source, target) in enumerate(files):
            inputs, outputs = raw_directives(source, target, rp)
            descriptions.append(rp.TaskDescription({
                "uid": f"raw.{tag}.{index:06d}", "executable": "/bin/sh",
                "arguments": ["-c", COMMAND], "input_staging": inputs,
                "output_staging": outputs}))
        tasks = tmgr.submit_tasks(descriptions)
        tmgr.wait_tasks(uids=[t.uid for t in tasks], timeout=900 + len(files))
        seconds = time.perf_counter() - start
        return seconds, sum(1 for t in tasks if t.state == rp.DONE)

    def api(self, tag: str, files: Files) -> tuple[float, int]:
        """The RHAPSODY API on a fresh shared backend: seconds, tasks COMPLETED."""
        from rhapsody_prefect import TaskError, TaskState
        from rhapsody_prefect.backends.radical_pilot import RadicalPilotBackend

        async def measure() -> tuple[float, int]:
            backend = RadicalPilotBackend(**self.kwargs)
            try:
                await backend.wait_active()  # attaches to the running pilot
                start = time.perf_counter()
                specs = [task_dict(f"{tag}.{index:06d}", source, target)
                         for index, (source, target) in enumerate(files)]
                await backend.submit_tasks(specs)
                try:
                    await backend.wait(timeout=900 + len(files))
                except TaskError:
                    pass  # counted below
                seconds = time.perf_counter() - start
                done = sum(1 for s in specs if s.get("state") == TaskState.COMPLETED)
            finally:
                await backend.terminate()
            return seconds, done

        return asyncio.run(measure())

    def runner(self, files: Files) -> tuple[float, int]:
        """A flow with one ensemble_map on a RhapsodyRunner of the same pilot."""
        from prefect import flow

        from rhapsody_prefect import RhapsodyRunner, ensemble_map, executable_task

        @executable_task
        def staged(source: str, target: str) -> dict[str, Any]:
            return {"executable": "/bin/sh", "arguments": ["-c", COMMAND],
                    "input_files": [(source, "in.dat")], "output_files": [("out.dat", target)]}

        @flow(name="bench-staging", task_runner=RhapsodyRunner(
            "radical_pilot", artifacts=False, **self.kwargs))
        def ensemble(directory: str, count: int) -> list[Any]:
            # the paths of make_files(directory, count), built here: small flow parameters
            names = [f"{index:06d}.dat" for index in range(count)]
            return ensemble_map(staged, source=[f"{directory}/in/{n}" for n in names],
                                target=[f"{directory}/out/{n}" for n in names],
                                allow_failures=True).result()

        start = time.perf_counter()
        results = ensemble(str(Path(files[0][0]).parent.parent), len(files))
        seconds = time.perf_counter() - start
        return seconds, sum(1 for r in results if getattr(r, "exit_code", None) == 0)


@contextmanager
def environment(work: Path, runner: bool) -> Iterator[str | None]:
    """The process's environment (venv on PATH, TMPDIR, offline Prefect) and, for the
    runner row, a Prefect server; yields its API URL. Set before anything imports Prefect."""
    env = base_env(work)
    os.environ.update(env)
    os.environ.pop("PREFECT_API_URL", None)
    if not runner:
        yield None
        return
    with prefect_server(env, work / "server.log") as url:
        os.environ["PREFECT_API_URL"] = url
        yield url


def load() -> float:
    return os.getloadavg()[0]


def measure(pilot: Pilot, work: Path, rows: list[str], count: int, repeats: int,
            api_url: str | None) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    runs: dict[str, Callable[[str, Files], tuple[float, int]]] = {
        "raw-rp": pilot.raw, "api-rp": pilot.api,
        "runner-rp": lambda _tag, files: pilot.runner(files)}
    for repeat in range(repeats):
        for row in rows if repeat % 2 == 0 else list(reversed(rows)):
            directory = work / "files" / f"{row}-{repeat + 1}"
            files = make_files(directory, count)
            before = load()
            seconds, done = runs[row](f"{row}-{repeat + 1}", files)
            result = {"seconds": seconds, "done": done, "copied": copied(files),
                      "load": round((before + load()) / 2, 1)}
            results[row].append(result)
            print(f"  {row:<10} #{repeat + 1}: {count / seconds:7.2f} tasks/s "
                  f"({seconds:.1f} s, {done}/{count} done, {result['copied']} copied back, "
                  f"load {result['load']})", flush=True)
            shutil.rmtree(directory, ignore_errors=True)
            if api_url is not None and row == "runner-rp":
                server_settle(api_url)
    return results


def summary(runs: list[dict[str, Any]], count: int) -> dict[str, Any]:
    good = [r for r in runs if r["done"] == count and r["copied"] == count]
    if not good:
        return {"runs": 0, "of": len(runs)}
    seconds = statistics.median(r["seconds"] for r in good)
    return {"runs": len(good), "of": len(runs), "seconds": seconds,
            "throughput": count / seconds}


def section(results: dict[str, list[dict[str, Any]]], count: int, repeats: int,
            meta: dict[str, Any]) -> str:
    summaries = {row: summary(runs, count) for row, runs in results.items()}
    raw = summaries["raw-rp"].get("throughput")
    lines = [BEGIN, "## Staging through a pilot", "",
             f"{count} tasks, each `/bin/sh -c '{COMMAND}'` with its own {SIZE}-byte input "
             "staged in and its output staged out to a target of its own, through one "
             f"local pilot ({meta['shape']}; `RadicalPilotBackend(raptor=False, shared=True)` "
             "on local.localhost, warmed) that every row uses; rows interleaved, order "
             f"reversed every repeat, medians of {repeats} repeat(s) "
             f"(`python bench/staging.py`, {meta['measured_at']}; load average "
             f"{meta['load']}, on {os.cpu_count()} cores shared with other work). A run "
             "counts when every task ended DONE/COMPLETED and every target holds its "
             "input.", "",
             "| row | tasks/s | seconds | runs | vs raw RP |", "|---|---|---|---|---|"]
    for row, entry in summaries.items():
        if "throughput" not in entry:
            lines.append(f"| {ROWS[row]} (`{row}`) | failed | - | 0/{entry['of']} | - |")
            continue
        ratio = f"{entry['throughput'] / raw:.2f}x" if raw else "-"
        lines.append(f"| {ROWS[row]} (`{row}`) | {entry['throughput']:.1f} | "
                     f"{entry['seconds']:.1f} | {entry['runs']}/{entry['of']} | {ratio} |")
    api = summaries["api-rp"].get("throughput")
    if raw and api:
        verdict = "met" if api / raw >= TARGET else "not met"
        lines += ["", f"RHAPSODY API / raw RP: **{api / raw:.2f}x** (target >= {TARGET}x: "
                  f"{verdict})."]
    lines += ["", "Per run (tasks/s, load average during the run):", ""]
    for row, runs in results.items():
        shown = ", ".join(f"{count / r['seconds']:.1f} ({r['load']})" for r in runs)
        lines.append(f"- `{row}`: {shown}")
    if meta.get("notes"):
        lines += ["", meta["notes"]]
    lines += [END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 tasks, 1 repeat (CI)")
    parser.add_argument("--count", type=int, default=1000, help="tasks per run (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (3)")
    parser.add_argument("--no-runner", action="store_true", help="leave out runner-rp")
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="directory of the benchmarks.md to update (docs/)")
    parser.add_argument("--notes", default="", help="a paragraph added to the section")
    parser.add_argument("--from-results", type=Path, default=None, metavar="JSON",
                        help="write the section from a finished run's results file "
                             "(measures nothing; --notes replaces its notes)")
    args = parser.parse_args(argv)
    if args.from_results is not None:
        saved = json.loads(args.from_results.read_text())
        if args.notes:
            saved["meta"]["notes"] = args.notes
        text = section(saved["results"], saved["count"], saved["repeats"], saved["meta"])
        print(text)
        replace_section(text, args.out, BEGIN, END, REPO / "bench" / "staging_section.md")
        return 0
    count, repeats = (20, 1) if args.quick else (args.count, args.repeats)
    rows = ["raw-rp", "api-rp"] + ([] if args.no_runner else ["runner-rp"])
    start_load = load()
    measured_at = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    work = Path(tempfile.mkdtemp(prefix="rhapsody-bench-staging-", dir="/tmp"))
    try:
        with environment(work, "runner-rp" in rows) as api_url:
            pilot = Pilot(work)
            started = time.perf_counter()
            pilot.start(work / "files" / "warm")
            if "runner-rp" in rows:
                pilot.runner(make_files(work / "files" / "warm-runner", 1))  # Prefect warm
            print(f"pilot {pilot.shape} warm after {time.perf_counter() - started:.0f} s "
                  f"(active {pilot.active_seconds:.0f} s after submission)", flush=True)
            try:
                results = measure(pilot, work, rows, count, repeats, api_url)
            finally:
                from rhapsody_prefect.backends.radical_pilot import close_shared_pilots

                close_shared_pilots()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"measured_at": measured_at, "shape": pilot.shape, "notes": args.notes,
            "load": f"{start_load:.1f} at start, {load():.1f} at end"}
    saved = Path("/tmp") / f"rhapsody-bench-staging-{os.getpid()}.json"  # outlives `work`
    saved.write_text(json.dumps({"results": results, "meta": meta, "count": count,
                                 "repeats": repeats}, indent=1))
    print(f"results in {saved} (--from-results rewrites the section from them)")
    text = section(results, count, repeats, meta)
    print(text)
    replace_section(text, args.out, BEGIN, END, REPO / "bench" / "staging_section.md")
    summaries = {row: summary(runs, count) for row, runs in results.items()}
    return 0 if all("throughput" in s for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
