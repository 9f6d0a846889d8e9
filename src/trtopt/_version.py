"""trtopt's version, and the installed version of any package (what reports and cache keys
record): nothing here imports the package itself."""

from __future__ import annotations

import platform

__version__ = "0.1.0"


def installed(package: str) -> str | None:
    """The installed version of ``package``, None when it is not installed."""
    import importlib.metadata  # when asked: it costs the command line's start-up 40 ms

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


TRACKED_PACKAGES = (
    "trtopt",
    "onnx",
    "onnxruntime",
    "onnx-graphsurgeon",
    "polygraphy",
    "numpy",
    "pydantic",
)
"""The packages whose versions a report and a golden file record."""


def versions() -> dict[str, str | None]:
    """Python's and every tracked package's version (None when not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    return found | {package: installed(package) for package in TRACKED_PACKAGES}
