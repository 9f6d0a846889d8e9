"""A finished compile in the stage cache: its keys (what decides each pass and the compile)
and storing it when it is done (unchanged.py serves it again)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import feeds
from . import html as html_report
from .cache import StageCache
from .cache_keys import CacheKeys, feeds_digest, source_digest
from .calibration import DataSet
from .digests import digest, digest_if_present
from .golden import metadata_path
from .recipe import Recipe
from .unchanged import PLOT_DATA, PLOT_IMAGES

log = logging.getLogger("trtopt")


def cache_keys(
    store: StageCache,
    recipe: Recipe,
    model_files: Sequence[Path],
    source: onnx.ModelProto,
    data: list[feeds.Feed],
    calibration: DataSet,
    validation: list[feeds.Feed],
) -> CacheKeys:
    """The cache keys' starting point: the model's files and its inputs as declared in the
    graph the passes get (the recipe's shapes written in); the data's hash (calibration,
    validation and check data, which the recipe's ranges shape) and where ONNX Runtime runs
    it (the recipe's `calibration` providers) join only the keys of passes that read it.
    Optimization profiles reach only the build and the check: they are in the compile key
    (compile_settings), not in any pass's."""
    declared = [
        [value.name, hashlib.sha256(value.type.SerializeToString(deterministic=True)).hexdigest()]
        for value in source.graph.input
    ]

    def data_digest() -> str:
        return digest(
            calibration.fingerprint(),
            feeds_digest(validation),
            feeds_digest(data),
            recipe.calibration.model_dump(mode="json"),
        )

    return CacheKeys(store, source_digest(model_files, declared), data_digest)


def compile_settings(recipe: Recipe, data: list[feeds.Feed]) -> dict[str, Any]:
    """What besides the final graph decides a compile's artifacts and report."""
    dumped = recipe.model_dump(mode="json")
    return {
        "inputs": dumped["inputs"],  # profiles decide the engine and the shapes checked
        "build": dumped["build"],
        "check": dumped["check"],
        "calibration": dumped["calibration"],  # where the reference runs
        "check_data": feeds_digest(data),
        # The golden file and baseline report are inputs of the check, like its data.
        "check_files": [digest_if_present(f) for f in check_files(recipe)],
    }


def check_files(recipe: Recipe) -> list[Path]:
    """The files a compile's check reads besides its data: the golden file and the metadata
    that gates it, the baseline report."""
    found = []
    if recipe.check.golden:
        found += [Path(recipe.check.golden), metadata_path(recipe.check.golden)]
    if recipe.check.baseline:
        found.append(Path(recipe.check.baseline))
    return found


def store_compile(
    keys: CacheKeys,
    recipe: Recipe,
    data: list[feeds.Feed],
    the_report: dict,
    staging: Path,
    pairs: html_report.Pairs,
    drawn: html_report.Drawn,
) -> str:
    """Store a finished compile (its staged outputs, its report and plots); its key."""
    key = keys.compile_key(compile_settings(recipe, data))
    with keys.cache.writer(key, "compile") as entry:
        # Everything staged so far (the reports are written after, and again on a hit).
        for path in sorted(staging.iterdir()):
            if not path.is_file():
                raise OSError(f"not caching a compile whose output holds a folder ({path.name})")
            shutil.copyfile(path, entry.folder / path.name)
        # The plots drawn, in page order; or, where matplotlib was missing, the outputs to draw
        # them from (every output's values on every check feed) for a hit where it is now.
        names = [] if drawn else sorted(pairs)
        if names:
            arrays = {
                f"{kind}{i}": pairs[n][j]
                for i, n in enumerate(names)
                for j, kind in enumerate("rc")
            }
            with open(entry.folder / PLOT_DATA, "wb") as handle:
                np.savez(handle, **arrays)
        (entry.folder / PLOT_IMAGES).write_text(json.dumps(drawn))
        entry.meta = {"report": the_report, "plotted": names}
    return key
