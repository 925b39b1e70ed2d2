"""A worker process of the `concurrent` backend in process mode.

Started as `python -m rhapsody_prefect.backends._process_worker`. It reads
length-prefixed cloudpickle frames `(uid, fn, args, kwargs)` from stdin and
answers `(uid, ok, value_or_exception)` on the original stdout; anything the
function prints goes to stderr, so it cannot corrupt the protocol.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import BinaryIO

import cloudpickle

from rhapsody_prefect.calls import call_function, portable_exception

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
            uid, fn, args, kwargs = cloudpickle.loads(frame)
            reply = (uid, True, call_function(fn, args, kwargs))
            payload = cloudpickle.dumps(reply)
        except BaseException as error:  # report everything, even SystemExit
            payload = cloudpickle.dumps((uid, False, portable_exception(error)))
        write_frame(replies, payload)


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
