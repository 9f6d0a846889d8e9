"""Polygraphy, quiet: trtopt reports for itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from polygraphy.logger import G_LOGGER


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
