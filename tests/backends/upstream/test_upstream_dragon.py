"""Upstream RHAPSODY's Dragon backend, where Dragon is installed (skipped otherwise).

Dragon runs only inside its runtime, so the test starts a script under its launcher
(`dragon --single-node-override`), which runs tasks through the adapter. Run it with
a Python that has `dragonhpc`, `flask` and `gunicorn` (docs/api.md, "Dragon").
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

import rhapsody_prefect as rhapsody

pytest.importorskip("rhapsody")
pytest.importorskip("dragon")
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import asyncio, json, os, sys
    import rhapsody_prefect as rhapsody

    def square(x):
        return x * x

    def boom():
        raise ValueError("boom-in-dragon")

    async def main(pid_file):
        tasks = [{"uid": "sq", "function": square, "args": (7,)},
                 {"uid": "boom", "function": boom, "retries": 1, "retry_delay": 0},
                 {"uid": "cmd", "executable": "/bin/sh", "arguments": ["-c", 'echo "$X"'],
                  "environment": {"X": "env-in-dragon"}},
                 {"uid": "exit", "executable": "/bin/sh", "arguments": ["-c", "exit 5"]},
                 {"uid": "late", "executable": "/bin/sleep", "arguments": ["60"], "timeout": 2},
                 {"uid": "slow", "executable": "/bin/sh",
                  "arguments": ["-c", f"echo $$ > {pid_file}; exec sleep 300"]}]
        async with rhapsody.get_backend("upstream.dragon") as backend:
            await backend.submit_tasks(tasks)
            for _ in range(1200):  # Dragon took 5-19 s to start a process here
                if os.path.exists(pid_file):
                    break
                await asyncio.sleep(0.1)
            await backend.cancel_task("slow")
            try:
                await backend.wait(timeout=300)
            except rhapsody.TaskError:
                pass
            attempts = backend.attempt_of("boom")
        print("RESULT", json.dumps({
            "why": rhapsody.why_unavailable("upstream.dragon"), "attempts": attempts,
            **{t["uid"]: [str(t["state"]), t.get("exit_code"), t.get("stdout"),
                          repr(t.get("return_value")), repr(t.get("exception"))]
               for t in tasks}}), flush=True)

    asyncio.run(main(sys.argv[1]))
""")


def test_tasks_run_under_the_dragon_runtime(tmp_path):
    launcher = shutil.which("dragon", path=str(pathlib.Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("no `dragon` launcher next to this Python")
    reason = rhapsody.why_unavailable("upstream.dragon")
    assert reason is not None and "Dragon runtime" in reason  # not under the launcher here
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    pid_file = tmp_path / "slow.pid"
    env = {**os.environ, "PATH": f"{pathlib.Path(launcher).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([launcher, "--single-node-override", str(script), str(pid_file)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["why"] is None and result["attempts"] == 2
    assert result["sq"][:1] + result["sq"][3:4] == ["COMPLETED", "49"]
    assert result["boom"][0] == "FAILED" and "boom-in-dragon" in result["boom"][4]
    assert result["cmd"][:3] == ["COMPLETED", 0, "env-in-dragon\n"]
    assert result["exit"][:2] == ["FAILED", 5]
    assert result["late"][0] == "FAILED" and "TimeoutError" in result["late"][4]
    assert result["slow"][0] == "CANCELED"
    pid = int(pid_file.read_text())
    assert not pathlib.Path(f"/proc/{pid}").exists()  # Dragon's cancel ended the command
