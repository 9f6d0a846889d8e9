"""Polygraphy as trtopt runs it: quiet (trtopt reports for itself), and never importing torch
to learn that a NumPy value is not a torch tensor."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import polygraphy.util.array
from polygraphy.logger import G_LOGGER


def _unimported_torch_is_no_tensor(is_torch):
    """Polygraphy's array functions ask ``is_torch(value)`` of every value they are handed that
    is not a NumPy array (a Python float, in every comparison's threshold test), which imports
    torch wherever it is installed: seconds of every compile on a machine with PyTorch. No
    value can be a torch tensor before torch is imported, so the question waits for that."""

    def is_torch_tensor(value) -> bool:
        return "torch" in sys.modules and is_torch(value)

    return is_torch_tensor


# Polygraphy looks the function up in its module's globals on each call, so this replaces it
# for every caller; answers are unchanged.
polygraphy.util.array.is_torch = _unimported_torch_is_no_tensor(polygraphy.util.array.is_torch)


@contextmanager
def quiet_polygraphy() -> Iterator[None]:
    """Polygraphy logs every step (and every failed comparison) itself; trtopt reports for
    itself, so only Polygraphy's critical errors, which it raises anyway, get through."""
    colors, G_LOGGER.colors = G_LOGGER.colors, False
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            yield
    finally:
        G_LOGGER.colors = colors
