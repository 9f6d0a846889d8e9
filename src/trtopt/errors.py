"""Errors a user can cause, and the exit codes they map to.

An error is a value with a place (``file:line:col``, a node name, a ``--set`` flag) long before
it is text; the CLI prints ``str(error)`` and exits with ``error.exit_code``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

EXIT_OK = 0
EXIT_ACCURACY = 1
EXIT_USER = 2
EXIT_INTERNAL = 3


@dataclass(frozen=True)
class Place:
    """Where an error comes from: a file with an optional line and column, or any label."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)


class TrtoptError(Exception):
    """Base of every error trtopt raises on purpose."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, place: Place | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.place = place

    def __str__(self) -> str:
        return f"{self.place}: {self.message}" if self.place else self.message


class UserError(TrtoptError):
    """Something the user can fix: exit code 2."""

    exit_code = EXIT_USER


class RecipeError(UserError):
    """The recipe is malformed: YAML syntax, unknown key, wrong type, unknown pass or option."""


class ModelError(UserError):
    """The model file is missing, not ONNX, truncated, or unsafe to load."""


class DataError(UserError):
    """Input data does not exist or does not match the model's inputs."""


class BackendUnavailableError(UserError):
    """A backend's optional package is not installed."""


class PassError(TrtoptError):
    """A pass failed on a graph it accepted: exit code 3, naming the pass."""


class BuildError(TrtoptError):
    """The backend could not build the artifact."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    choices = list(choices)
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if match:
        return f"; did you mean '{match[0]}'?"
    # A short form of a longer name ('fold' for 'fold-constants') is too far for difflib.
    longer = [c for c in choices if word and c.startswith(word)]
    if 1 <= len(longer) <= MAX_SUGGESTIONS:
        return f"; did you mean {' or '.join(repr(c) for c in longer)}?"
    return ""


MAX_SUGGESTIONS = 4
"""Most names a did-you-mean lists when a word starts several of them."""
