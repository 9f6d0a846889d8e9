"""A finished compile in the stage cache: its keys (what decides each pass and the compile),
stored when it is done, and served again, with its report drawn anew, when nothing changed."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import feeds, report
from . import html as html_report
from .cache import Entry, StageCache
from .cache_keys import CacheKeys, feeds_digest, source_digest
from .calibration import DataSet
from .digests import digest, file_sha256
from .model import model_files
from .recipe import Recipe
from .staging import commit as commit_output
from .staging import stage as stage_output

log = logging.getLogger("trtopt")


PLOT_DATA = "report-plots.npz"
"""A cached compile's output pairs, kept only when its page could not draw plots: a hit draws
them where matplotlib is installed since; never an output."""
PLOT_IMAGES = "report-plots.json"
"""The plots a cached compile's page embedded, by name: a hit's page reuses them rather than
draw them again (matplotlib took 1.8 s of a 2 s warm recompile); never an output."""


def cache_keys(
    store: StageCache,
    recipe: Recipe,
    model_path: Path,
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

    return CacheKeys(store, source_digest(model_files(model_path), declared), data_digest)


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
        "check_files": [
            file_sha256(Path(f)) if Path(f).is_file() else None
            for f in (recipe.check.golden, recipe.check.baseline)
            if f
        ],
    }


def store_compile(
    keys: CacheKeys,
    recipe: Recipe,
    data: list[feeds.Feed],
    the_report: dict,
    staging: Path,
    pairs: html_report.Pairs,
    drawn: html_report.Drawn,
) -> None:
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


def _cached_pairs(entry: Entry) -> html_report.Pairs:
    """The output pairs a cached compile stored for its plots (none from older entries)."""
    names = entry.meta.get("plotted")
    if not isinstance(names, list) or PLOT_DATA not in entry.files():
        return {}
    try:
        with np.load(entry.file(PLOT_DATA), allow_pickle=False) as arrays:
            return {name: (arrays[f"r{i}"], arrays[f"c{i}"]) for i, name in enumerate(names)}
    except (OSError, ValueError, KeyError) as error:  # the page keeps its tables
        log.warning("cached plot data unreadable (%s); report.html without plots", error)
        return {}


def _cached_plots(entry: Entry) -> html_report.Drawn:
    """The plots a cached compile's page embedded (none from older entries, or unreadable)."""
    if PLOT_IMAGES not in entry.files():
        return {}
    try:
        drawn = json.loads(entry.file(PLOT_IMAGES).read_text())
    except (OSError, ValueError) as error:  # drawn again, where matplotlib is here
        log.warning("cached plots unreadable (%s); drawing them again", error)
        return {}
    valid = isinstance(drawn, dict) and all(isinstance(v, str) for v in drawn.values())
    return drawn if valid else {}


def from_cache(
    entry: Entry,
    recipe: Recipe,
    model_path: Path,
    out: Path,
    store: StageCache,
    finish: Callable[[dict[str, Any], Path], None],
) -> dict[str, Any]:
    """An unchanged compile: its artifacts copied into place the usual way, ``finish(report,
    staging)`` run on them before they move in (as after a fresh compile); its report."""
    the_report = {
        **entry.meta["report"],
        "output_dir": str(out),
        "recipe": recipe.model_dump(mode="json"),
    }
    the_report["model"] = {**the_report["model"], "path": str(model_path)}
    the_report["passes"] = [{**record, "cached": True} for record in the_report["passes"]]
    the_report["cache"] = {
        "dir": str(store.root),
        "compile": "hit",
        "passes_from_cache": len(the_report["passes"]),
    }
    staging = stage_output(out)
    try:
        entry.restore([n for n in entry.files() if n not in (PLOT_DATA, PLOT_IMAGES)], staging)
        # Drawn again: the hit's own report, and plots wherever matplotlib is there now.
        page = staging / "report.html"
        html_report.write_html(the_report, page, _cached_pairs(entry), _cached_plots(entry))
        report.write_reports(the_report, staging)
        finish(the_report, staging)
        commit_output(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return the_report
