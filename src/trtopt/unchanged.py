"""Compiles served from the stage cache: the artifacts copied into place, the report drawn anew.

Two ways in. The pipeline serves a compile whose key it probed (the model loaded, the data
read). Before that, a *direct* entry serves an unchanged recipe from its files alone, as
ccache's direct mode does for a compiler: it is keyed by the recipe as YAML (with what it
`extends` and its `--set` overrides), trtopt's code and the libraries' versions, and it names
every file the compile read (the model and its external data, plugins, golden and baseline
files, every data file a glob or folder matched) with its sha256 and the compile it led to.
When they all match, the compile is served without loading the model, the schema, NumPy or
ONNX: as a command, a warm recompile had cost a quarter of a cold one, nearly all imports.
Standard library only, for that reason.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import html as html_report
from ._version import installed
from .cache import Entry, StageCache, environment, plugin_files, resolve_cache_dir
from .calibration.files import FILE_KINDS, source_files
from .compile_result import CompileResult
from .digests import digest, digest_if_present
from .errors import TrtoptError
from .lazy import lazy_import
from .positions import Document
from .recipe_yaml import input_paths, load_document, output_folder
from .report_text import write_reports
from .staging import check_output, refuse_inputs
from .staging import commit as commit_output
from .staging import stage as stage_output

if TYPE_CHECKING:
    import numpy as np

    from .recipe import Recipe
else:  # only for the plot data of a compile cached where matplotlib was missing
    np = lazy_import("numpy", globals())

log = logging.getLogger("trtopt")

DIRECT = "direct"
"""The kind of a direct entry in the stage cache."""
DIRECT_PACKAGES = ("pydantic", "pyyaml", "ml_dtypes", "pillow", "tensorrt-rtx")
"""Packages that decide a direct hit beyond the computing ones (:func:`cache.environment`): how
the recipe is read, how images decode, and whether the RTX backend is here to build."""
CANDIDATES_KEPT = 4
"""Compiles a direct entry remembers for one recipe (the same YAML over other files): switching
between a few models or data sets stays a direct hit."""
PLOT_DATA = "report-plots.npz"
"""A cached compile's output pairs, kept only when its page could not draw plots: a hit draws
them where matplotlib is installed since; never an output."""
PLOT_IMAGES = "report-plots.json"
"""The plots a cached compile's page embedded, by name: a hit's page reuses them rather than
draw them again (matplotlib took 1.8 s of a 2 s warm recompile); never an output."""


# -- serving a cached compile --------------------------------------------------------------


def serve(
    entry: Entry,
    recipe: dict[str, Any],
    model_path: Path,
    out: Path,
    store: StageCache,
    finish: Callable[[dict[str, Any], Path], None] | None = None,
) -> dict[str, Any]:
    """An unchanged compile: its artifacts copied into place the usual way, ``finish(report,
    staging)`` run on them before they move in (as after a fresh compile); its report.
    ``recipe``: the recipe as report.json holds it."""
    the_report = {**entry.meta["report"], "output_dir": str(out), "recipe": recipe}
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
        write_reports(the_report, staging)
        if finish is not None:
            finish(the_report, staging)
        commit_output(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return the_report


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


# -- direct entries ------------------------------------------------------------------------


def direct_key(data: Any, sources: Sequence[Path]) -> str:
    """The direct entry's key: a recipe's YAML data (``extends`` and overrides merged, paths
    absolute), its files (``sources``: where the default output goes, what an output may not
    hold), trtopt's code and the versions that decide what a compile of it makes. A ValueError
    for data JSON cannot tell apart (a key that is no string)."""
    versions = {package: installed(package) for package in DIRECT_PACKAGES}
    files = [str(path) for path in sources]
    return digest(DIRECT, _canonical(data), files, environment(), versions)


def _canonical(value: Any) -> Any:
    """``value`` as JSON that keeps it apart from every other YAML value: a date, bytes or a
    set is tagged with its type (``name: 2024-01-01`` is not ``name: '2024-01-01'``)."""
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("a mapping key that is not a string")
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return {"yaml-type": type(value).__name__, "value": repr(value)}


def direct_inputs(
    recipe: Recipe, files: Sequence[Path], input_names: Sequence[str]
) -> dict[str, Any] | None:
    """What a compile of ``recipe`` reads, each file with its sha256 (None where absent):
    ``files`` (the model's and the check's, as the pipeline names them), the plugins as named
    (a symlink may be pointed elsewhere) and the files they import, and the data files each
    glob or folder matched (for a model whose inputs are ``input_names``). Taken before a
    compile and again after it, so a file edited meanwhile is never remembered. None for a
    compile that files alone cannot prove unchanged: a data script (it may read anything),
    GPU providers (whether the GPU is here decides the compile), a Triton deployment (a new
    version on every compile)."""
    sources = [recipe.check.data, recipe.data.calibration, recipe.data.validation]
    sources = [s for s in sources if s is not None and s.kind != "synthetic"]
    providers = {*recipe.build.onnxruntime.providers, *recipe.calibration.providers}
    if any(s.kind not in FILE_KINDS for s in sources) or providers != {"cpu"}:
        return None
    if recipe.deploy.triton is not None:
        return None
    listings = []
    for source in sources:
        listing = {"kind": source.kind, "path": source.path or "", "inputs": list(input_names)}
        listings.append({**listing, "files": _listed(listing)})
    read = [*files, *map(Path, recipe.plugins)]
    read += [f for p in recipe.plugins for f in plugin_files(Path(p))]
    read += [Path(f) for listing in listings for f in listing["files"]]
    return {
        "files": {str(path): digest_if_present(path) for path in read},
        "listings": listings,
    }


def direct_candidate(
    recipe: Recipe, compile_key: str, inputs: dict[str, Any], model_files: Sequence[Path]
) -> dict[str, Any]:
    """What a direct entry records of one compile: what it read (:func:`direct_inputs`), its
    key, and what serving it needs (the recipe as the report holds it, the model, the
    model's external data files, which the output may not hold)."""
    return {
        **inputs,
        "compile": compile_key,
        "recipe": recipe.model_dump(mode="json"),
        "model": str(recipe.model),
        "external": [str(path) for path in model_files[1:]],
    }


def record_direct(store: StageCache, key: str, candidate: dict[str, Any]) -> None:
    """Remember ``candidate`` first in the direct entry under ``key``, with the few before."""
    before = store.get(key)
    kept = before.meta.get("candidates", []) if before is not None else []
    if not isinstance(kept, list):
        kept = []
    same = [c for c in kept if isinstance(c, dict) and c.get("compile") == candidate["compile"]]
    if same and same[0] == candidate:
        return  # already first or known: nothing to write
    others = [c for c in kept if c not in same]
    with store.writer(key, DIRECT, replace=True) as entry:
        entry.meta = {"candidates": [candidate, *others][:CANDIDATES_KEPT]}


@dataclass
class Direct:
    """A recipe file as YAML, and where its direct entry is: its key and the stage cache
    that holds it."""

    document: Document
    key: str
    store: StageCache


def find_direct(
    recipe_path: str | Path, overrides: list[str] | None, cache_dir: str | Path | None
) -> Direct | None:
    """The direct entry of a recipe file with its overrides; None when its cache is off or
    it cannot be read (the pipeline then says why, with the schema's help)."""
    try:
        document = load_document(Path(recipe_path), overrides)
        data = document.data
        settings = data.get("cache", {})
        if not isinstance(settings, dict) or settings.get("enabled", True) is not True:
            return None
        key = direct_key(data, document.sources)
    except (TrtoptError, ValueError):
        return None
    folder = settings.get("dir")
    store = StageCache(resolve_cache_dir(cache_dir, folder if isinstance(folder, str) else None))
    return Direct(document, key, store)


def serve_direct(
    direct: Direct, output_dir: str | Path | None, force: bool, say: Callable[[str], None]
) -> CompileResult | None:
    """The compile of an unchanged recipe, served from the cache by its files alone; None when
    anything may have changed. Where it goes and what it may not replace come from the
    recipe, as the pipeline has them, never from the cache."""
    data, sources = direct.document.data, direct.document.sources
    name, output = data.get("name"), data.get("output")
    if not isinstance(name, str) or not isinstance(output, str | None) or not sources:
        return None
    entry = direct.store.get(direct.key)
    found = _unchanged(direct.store, entry.meta.get("candidates")) if entry else None
    if found is None:
        return None
    candidate, hit = found
    out = (
        Path(output_dir)
        if output_dir is not None
        else output_folder(output, name, sources[0].parent)
    )
    check_output(out, [*input_paths(data, sources), direct.store.root], force)
    refuse_inputs(out, [Path(p) for p in candidate["external"]])
    say("unchanged: artifacts from the cache")
    out = out.resolve()
    the_report = serve(hit, candidate["recipe"], Path(candidate["model"]), out, direct.store)
    return CompileResult(the_report["exit_code"], out, the_report)


def _unchanged(store: StageCache, candidates: Any) -> tuple[dict[str, Any], Entry] | None:
    """The first remembered compile whose files are all as they were, and its cache entry."""
    for candidate in candidates if isinstance(candidates, list) else []:
        try:
            if _files_unchanged(candidate) and (hit := store.get(candidate["compile"])):
                return candidate, hit
        except (TrtoptError, OSError, KeyError, TypeError, ValueError, AttributeError):
            continue  # a damaged or older entry is a miss, never a wrong result
    return None


def _listed(listing: dict[str, Any]) -> list[str]:
    """The files a data source's glob or folder matches now (``source_files``), as recorded."""
    found = source_files(listing["kind"], listing["path"], listing["inputs"])
    return [str(path) for path in found]


def _files_unchanged(candidate: dict[str, Any]) -> bool:
    """Whether every listing matches the same files and every file has its recorded sha256."""
    if any(_listed(listing) != listing["files"] for listing in candidate["listings"]):
        return False
    return all(digest_if_present(Path(name)) == sha for name, sha in candidate["files"].items())
