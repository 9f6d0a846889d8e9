"""The child process a data script runs in: imports the script, calls its function and sends
each feed it yields back to trtopt, one per request, so that a script that exits
(``os._exit``), hangs or crashes is reported by the parent instead of ending or stalling it.

Run by ``sources._script_feeds`` as ``python -c`` loading this file by path (it imports only
the standard library and NumPy, not trtopt). The protocol runs over the process's original
stdin and stdout; the script's own prints go to stderr. The parent writes one byte per feed it
wants (``n``); the child answers with frames of ``kind (1 byte) + length (8 bytes, big-endian)
+ payload``:

- ``F``: one feed, as the bytes of an ``.npz`` archive (arrays keyed by input name);
- ``E``: the script failed; the payload is the message (UTF-8); the child exits;
- ``D``: the script yielded everything.
"""

from __future__ import annotations

import io
import os
import struct
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

FEED, ERROR, DONE = b"F", b"E", b"D"
HEADER = struct.Struct(">cQ")


def send(out: BinaryIO, kind: bytes, payload: bytes = b"") -> None:
    out.write(HEADER.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def _failure(what: str, error: BaseException) -> str:
    return f"{what} failed: {type(error).__name__}: {error}"


def _feed_bytes(feed: Any, function: str, index: int) -> bytes:
    import numpy as np

    if not isinstance(feed, Mapping):
        raise ValueError(
            f"{function}() yielded a {type(feed).__name__}, not a dict of arrays (item {index})"
        )
    try:
        arrays = {str(k): np.asarray(v) for k, v in feed.items()}
        if any(a.dtype.hasobject for a in arrays.values()):
            raise TypeError("an array of Python objects")
    except Exception as error:
        raise ValueError(
            f"{function}() yielded values that are not arrays (item {index}): {error}"
        ) from None
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def serve(path: str, function: str, requests: BinaryIO, out: BinaryIO) -> None:
    """Import the script, then answer each request byte with the next feed."""
    import importlib.util

    # No __pycache__ beside the user's script (or what it imports): trtopt writes only where
    # it is told to. This process runs the script alone, so the setting stays.
    sys.dont_write_bytecode = True
    try:
        spec = importlib.util.spec_from_file_location("trtopt_data_script", path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules["trtopt_data_script"] = module
        spec.loader.exec_module(module)
    except BaseException as error:
        send(out, ERROR, f"the data loader script failed: {type(error).__name__}: {error}".encode())
        return
    loader = getattr(module, function, None)
    if not callable(loader):
        send(out, ERROR, f"the script defines no function {function}()".encode())
        return
    feeds = None
    index = 0
    while requests.read(1) == b"n":
        try:
            if feeds is None:
                feeds = iter(loader())
            feed = next(feeds)
        except StopIteration:
            send(out, DONE)
            return
        except BaseException as error:
            send(out, ERROR, _failure(f"{function}()", error).encode())
            return
        try:
            payload = _feed_bytes(feed, function, index)
        except BaseException as error:
            send(out, ERROR, str(error).encode())
            return
        send(out, FEED, payload)
        index += 1


def main() -> None:
    path, function = sys.argv[1], sys.argv[2]
    # The protocol keeps the original stdin/stdout; the script reads nothing and prints to
    # stderr, so nothing it writes can corrupt a frame.
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(path, function, requests, out)
    out.close()


if __name__ == "__main__":
    main()
