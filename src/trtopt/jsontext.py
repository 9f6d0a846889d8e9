"""Strict JSON: every file and every ``--json`` output trtopt writes parses in any JSON reader
(no bare ``NaN``/``Infinity`` tokens, which Python writes by default and strict parsers refuse).

A float that is not finite (a metric of an artifact that overflowed) is written as a string,
the token Python's json would have used: ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``;
``float()`` reads each back. ``null`` keeps its own meaning (not computed, not set).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NumPy's included) replaced by its string."""
    # numbers.Real, not np.floating: NumPy registers its floats there, and this module is
    # imported by the command line before NumPy is needed.
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return number
    if isinstance(value, Mapping):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def number(value: Any) -> float | None:
    """A number as ``finite`` wrote it (a string for NaN and infinities), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return NON_FINITE.get(value) if isinstance(value, str) else None


NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
"""The strings ``finite`` writes for non-finite floats, and their values."""


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` of ``finite(value)`` that refuses any non-finite number left."""
    return json.dumps(finite(value), allow_nan=False, **options)
