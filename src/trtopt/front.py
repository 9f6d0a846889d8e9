"""A compile's front door: a recipe unchanged since a cached compile is served from its files
alone (unchanged.py); anything else goes down the hallway (pipeline.py), which is imported
only then: the hallway loads ONNX, ONNX Runtime and Polygraphy, the front door none of them."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .compile_result import CompileResult
from .interrupt import exit_at_once
from .lazy import lazy_import
from .unchanged import find_direct, serve_direct

if TYPE_CHECKING:
    from . import pipeline
    from .recipe import Recipe
else:
    pipeline = lazy_import("trtopt.pipeline", globals())

log = logging.getLogger("trtopt")


def compile(
    recipe: str | Path | Recipe,
    output_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    force: bool = False,
) -> CompileResult:
    """Compile a recipe: passes, build, accuracy check, report; the exit code is the verdict.

    Raises a TrtoptError for user errors (exit 2) and build failures (exit 3); an accuracy
    failure is a result (exit 1) with the artifact and report written.

    ``cache_dir`` is the stage cache's folder (default: ``$TRTOPT_CACHE_DIR``, the recipe's
    ``cache.dir``, the platform's cache folder); ``use_cache=False`` (or the recipe's
    ``cache.enabled: false``) neither reads nor writes it.

    The output folder is replaced whole, so it must be one trtopt wrote (it holds
    ``staging.MARKER``), or empty, or new; ``force=True`` also replaces another non-empty
    folder. A file, a symlink, or a folder holding the compile's inputs is never replaced.
    """
    say = progress or (lambda message: log.info(message))
    direct = None
    if use_cache and isinstance(recipe, str | os.PathLike):
        direct = find_direct(recipe, overrides, cache_dir)
        served = serve_direct(direct, output_dir, force, say) if direct else None
        if served is not None:
            return served
    with exit_at_once():  # the hallway's modules load: nothing is written yet
        hallway = pipeline.compile
    return hallway(recipe, output_dir, overrides, say, cache_dir, use_cache, force, direct=direct)
