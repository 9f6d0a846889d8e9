"""trtopt's version, and the installed version of any package (what reports and cache keys
record): nothing here imports the package itself."""

from __future__ import annotations

__version__ = "0.1.0"


def installed(package: str) -> str | None:
    """The installed version of ``package``, None when it is not installed."""
    import importlib.metadata  # when asked: it costs the command line's start-up 40 ms

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
