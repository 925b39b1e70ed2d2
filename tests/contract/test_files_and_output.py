"""Every byte of a command's output, and files in and out, on every backend configuration.

The output policy (body/output.py): a stream arrives whole up to the task's
`output_limit`; beyond it the result keeps head and tail and the whole stream is in
a file (`stdout_file`) in `output_dir`. Staging (body/staging.py and, on
radical_pilot, RP's staging directives): `input_files` copied in before the command
runs, `output_files` copied back to their targets after it exited 0.
"""

from __future__ import annotations

import hashlib
import pathlib

import pytest
from prefect import flow, unmapped

import rhapsody_prefect as rhapsody
from rhapsody_prefect import RhapsodyRunner, TaskError, TaskState, ensemble_map, executable_task
from tests.conftest import BACKEND_SPECS

pytestmark = [pytest.mark.parametrize("backend_spec", BACKEND_SPECS, indirect=True)]

#: Print `$1` bytes of a repeating, position-checkable pattern (lines of 100 chars).
PRINT_BYTES = ("python3 -c 'import sys; n=int(sys.argv[1]); line=(\"%099d\\n\"); "
               "sys.stdout.write(\"\".join(line % i for i in range(n // 100)))' ")


def _expected(size: int) -> str:
    return "".join(f"{i:099d}\n" for i in range(size // 100))


async def test_200_kb_of_stdout_arrives_whole(backend) -> None:
    task = {"executable": PRINT_BYTES + "200000", "shell": True}
    await backend.submit_tasks([task])
    await backend.wait(timeout=300)
    assert task["stdout"] == _expected(200000)
    assert task["stdout_file"] is None


@pytest.mark.slow
async def test_40_mb_of_stdout_keeps_head_and_tail_and_the_whole_file(
    backend, tmp_path: pathlib.Path
) -> None:
    size, limit = 40_000_000, 1 << 20
    task = {"executable": PRINT_BYTES + str(size), "shell": True,
            "output_dir": str(tmp_path / "outputs")}
    await backend.submit_tasks([task])
    await backend.wait(timeout=600)
    expected = _expected(size)
    kept = pathlib.Path(task["stdout_file"])
    assert kept.parent == tmp_path / "outputs"
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()  # noqa: ASYNC240
    assert digest == hashlib.sha256(expected.encode()).hexdigest()
    head, _, tail = task["stdout"].partition("\n[... ")
    assert expected.startswith(head) and len(head) == limit // 2
    assert f"the whole output is in {kept}" in tail
    assert expected.endswith(tail.split(" ...]\n", 1)[1])
    assert len(task["stdout"]) < limit + 200


async def test_input_staged_in_and_output_staged_out(backend, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("hello\n")
    task = {"executable": "sh", "arguments": ["-c", "tr a-z A-Z < in.txt > out.txt"],
            "input_files": ["in.txt"], "output_files": [("out.txt", "results/0/out.txt")]}
    plain = {"executable": "sh", "arguments": ["-c", "echo x > note.txt"],
             "output_files": ["note.txt"]}
    await backend.submit_tasks([task, plain])
    await backend.wait(timeout=300)
    target = tmp_path / "results" / "0" / "out.txt"
    assert target.read_text() == "HELLO\n"
    assert task["staged_outputs"] == (str(target),)
    assert (tmp_path / "note.txt").read_text() == "x\n"  # next to the submitter's cwd


async def test_bad_files_fail_the_task_naming_them(backend, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.txt").write_text("keep me\n")
    marker = tmp_path / "ran"
    missing_input = {"uid": "missing-input", "executable": "touch", "arguments": [str(marker)],
                     "input_files": ["absent.dat"]}
    missing_output = {"uid": "missing-output", "executable": "true",
                      "output_files": ["never.dat"]}
    allowed = {"uid": "allowed", "executable": "true", "output_files": ["never.dat"],
               "allow_missing_outputs": True}
    taken = {"uid": "taken", "executable": "sh", "arguments": ["-c", "echo new > taken.txt"],
             "output_files": ["taken.txt"]}
    await backend.submit_tasks([missing_input, missing_output, allowed, taken])
    with pytest.raises(TaskError):
        await backend.wait(timeout=300)
    assert missing_input["state"] == TaskState.FAILED
    assert "absent.dat" in str(missing_input["exception"])
    assert not marker.exists()  # nothing ran
    assert missing_output["state"] == TaskState.FAILED
    assert "never.dat" in str(missing_output["exception"])
    assert allowed["state"] == TaskState.COMPLETED
    assert taken["state"] == TaskState.FAILED
    assert "taken.txt" in str(taken["exception"])
    assert (tmp_path / "taken.txt").read_text() == "keep me\n"  # never overwritten silently
    overwrite = dict(taken, uid="overwrite", output_exists="overwrite")
    for key in ("state", "exception", "exit_code", "stdout", "stderr"):
        overwrite.pop(key, None)
    await backend.submit_tasks([overwrite])
    await backend.wait(timeout=300)
    assert (tmp_path / "taken.txt").read_text() == "new\n"


async def test_bad_file_entries_are_configuration_errors(backend) -> None:
    for task, key in (
        ({"executable": "true", "input_files": "one.txt"}, "input_files"),
        ({"executable": "true", "output_files": [("a", "b", "c")]}, "output_files"),
        ({"executable": "true", "output_files": ["../up.txt"]}, "output_files"),
        ({"executable": "true", "output_exists": "maybe"}, "output_exists"),
        ({"function": print, "input_files": ["x"]}, "input_files"),
    ):
        with pytest.raises(rhapsody.ConfigurationError) as caught:
            await backend.submit_tasks([task])
        assert caught.value.config_key == key, caught.value
    assert backend.tasks == {}  # nothing was submitted


@executable_task
def shout(index: int, source: str) -> dict:
    """A member: its input staged in under one name, its output to a target of its own."""
    return {"executable": "sh", "arguments": ["-c", f"tr a-z A-Z < in.txt > out.txt; "
                                             f"echo {index} >> out.txt"],
            "input_files": [(source, "in.txt")],
            "output_files": [("out.txt", f"results/{index}/out.txt")]}


@pytest.mark.slow
def test_ensemble_members_stage_in_and_out_to_their_own_targets(
    backend_spec, tmp_path: pathlib.Path, monkeypatch
) -> None:
    name, kwargs = backend_spec
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "shared-input.txt"
    source.write_text("hello\n")

    @flow(task_runner=RhapsodyRunner(name, **kwargs))
    def members() -> list:
        return ensemble_map(shout, range(100), source=unmapped(str(source))).result()

    results = members()
    assert [r.exit_code for r in results] == [0] * 100
    for index, result in enumerate(results):
        target = tmp_path / "results" / str(index) / "out.txt"
        assert target.read_text() == f"HELLO\n{index}\n"
        assert result.outputs == (str(target),)
