"""A worker process of the `concurrent` backend in process mode.

Started as `python -m rhapsody_prefect.body.process_worker`. It reads
length-prefixed cloudpickle frames `(uid, fn, args, kwargs, capture)` from stdin
and answers `(uid, Outcome)` on the original stdout; anything the function prints
goes to stderr (unless captured), so it cannot corrupt the protocol:

    write_frame(worker_stdin, cloudpickle.dumps(("t1", max, (1, 2), {}, None)))
    uid, outcome = cloudpickle.loads(read_frame(worker_stdout))   # outcome.return_value 2
"""

from __future__ import annotations

import os
import struct
import sys
from typing import BinaryIO

import cloudpickle

from rhapsody_prefect.body.calls import portable_exception, run_call
from rhapsody_prefect.core.outcome import Outcome

HEADER = struct.Struct("!Q")


def read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    while (frame := read_frame(requests)) is not None:
        uid = None
        try:
            uid, fn, args, kwargs, capture = cloudpickle.loads(frame)
            payload = cloudpickle.dumps((uid, run_call(fn, args, kwargs, capture)))
        except BaseException as error:  # an unpicklable call or result, even SystemExit
            payload = cloudpickle.dumps((uid, Outcome.failed(portable_exception(error))))
        write_frame(replies, payload)


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
