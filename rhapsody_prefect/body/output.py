"""A command's output under one policy: whole up to a limit, beyond it head, tail and a file.

Every backend holds a command's stdout and stderr in the task's result, and a
Prefect result may hold them again: an ensemble of simulations that print tens of
megabytes each would fill the flow's memory. So each stream goes through an
`OutputSink`: up to `limit` bytes it stays in memory and arrives whole; past it
the whole stream is written to a file (in `keep_dir`, the task's `output_dir`)
and the result keeps the first and last `limit / 2` bytes around a line that
says how much was left out and where the whole output is:

    >>> import tempfile
    >>> sink = OutputSink(limit=8, keep_dir=tempfile.mkdtemp(), name="t1.stdout")
    >>> sink.write(b"0123456789abcdef")
    >>> text, path = sink.finish()
    >>> text.splitlines()[0], text.splitlines()[-1]
    ('0123', 'cdef')
    >>> open(path).read()
    '0123456789abcdef'

`read_file_output` applies the same policy to an output already in a file (a
RADICAL-Pilot sandbox's `<uid>.out`). Task keys: `output_limit` (bytes per
stream, default `DEFAULT_LIMIT`; None: no limit) and `output_dir` (default
`./.rhapsody/outputs` of the process that runs the command).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..core.constants import Defaults

#: Bytes of one stream kept whole in a result (stdout and stderr each).
DEFAULT_LIMIT = Defaults.OUTPUT_LIMIT
#: Where a stream over its limit is kept whole, unless the task says `output_dir`.
DEFAULT_DIR = Path(".rhapsody") / "outputs"


def policy_of(task: Mapping[str, Any]) -> tuple[int | None, Path]:
    """The task's (limit, keep_dir)."""
    limit = task.get("output_limit", DEFAULT_LIMIT)
    keep_dir = Path(task.get("output_dir") or DEFAULT_DIR).absolute()
    return limit, keep_dir


def _omitted_line(omitted: int, path: Path) -> str:
    return f"\n[... {omitted} bytes left out here; the whole output is in {path} ...]\n"


def _unique_file(directory: Path, name: str) -> tuple[Path, BinaryIO]:
    """A new file `name` in `directory` (`name.1`, `name.2`, ... if taken), opened."""
    directory.mkdir(parents=True, exist_ok=True)
    candidate, number = directory / name, 0
    while True:
        try:
            return candidate, open(candidate, "xb")
        except FileExistsError:
            number += 1
            candidate = directory / f"{name}.{number}"


class OutputSink:
    """One output stream: whole in memory up to `limit` bytes, else spilled to a file."""

    def __init__(self, limit: int | None, keep_dir: Path | str, name: str) -> None:
        self.limit = limit
        self.keep_dir = Path(keep_dir)
        self.name = name
        self.size = 0
        self._head = bytearray()
        self._tail = bytearray()
        self._spill: BinaryIO | None = None
        self.path: Path | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._spill is not None:
            self._spill.write(data)
            self._keep_tail(data)
            return
        self._head += data
        if self.limit is not None and len(self._head) > self.limit:
            self.path, self._spill = _unique_file(self.keep_dir, self.name)
            self._spill.write(self._head)
            self._keep_tail(bytes(self._head))
            del self._head[self.limit // 2:]

    def _keep_tail(self, data: bytes) -> None:
        assert self.limit is not None
        keep = self.limit - self.limit // 2
        self._tail += data[-keep:] if keep else b""
        del self._tail[:max(0, len(self._tail) - keep)]

    def finish(self) -> tuple[str, str | None]:
        """(the text for the result, the path of the whole output or None)."""
        if self._spill is None:
            return self._head.decode(errors="replace"), None
        self._spill.close()
        assert self.path is not None
        omitted = self.size - len(self._head) - len(self._tail)
        text = (self._head.decode(errors="replace") + _omitted_line(omitted, self.path)
                + self._tail.decode(errors="replace"))
        return text, str(self.path)

    def discard(self) -> None:
        """Close and delete a spill file (the command was cancelled)."""
        if self._spill is not None:
            self._spill.close()
            if self.path is not None:
                self.path.unlink(missing_ok=True)


def read_file_output(
    path: Path, limit: int | None, keep_dir: Path, name: str
) -> tuple[str, str | None]:
    """The policy for an output already in a file: the whole text up to `limit`, else
    head and tail, with the file copied whole to `keep_dir` (the source may be deleted
    later, e.g. a pilot's sandbox)."""
    size = path.stat().st_size
    if limit is None or size <= limit:
        return path.read_text(errors="replace"), None
    target, handle = _unique_file(keep_dir, name)
    with handle, open(path, "rb") as source:
        shutil.copyfileobj(source, handle)
    head_size, tail_size = limit // 2, limit - limit // 2
    with open(path, "rb") as source:
        head = source.read(head_size)
        source.seek(max(0, size - tail_size), os.SEEK_SET)
        tail = source.read(tail_size)
    text = (head.decode(errors="replace") + _omitted_line(size - len(head) - len(tail), target)
            + tail.decode(errors="replace"))
    return text, str(target)


__all__ = ["DEFAULT_DIR", "DEFAULT_LIMIT", "OutputSink", "policy_of", "read_file_output"]
