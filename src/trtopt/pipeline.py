"""compile = passes -> build -> check -> report, staged and moved into place atomically."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from polygraphy.backend.onnxrt import OnnxrtRunner
from pydantic import ValidationError

from . import accuracy, feeds, gate, graph_io, latency, report
from . import html as html_report
from ._version import __version__
from .backends import BuildResult, get_backend
from .backends.onnxruntime import session_loader
from .backends.profiles import derive_profiles
from .backends.tensorrt import BackendOptionError
from .cache import (
    Entry,
    Plan,
    StageCache,
    WatchedContext,
    digest,
    feeds_digest,
    resolve_cache_dir,
    snapshot,
    source_digest,
    written,
)
from .calibration import DataSet, DataSource, ranges_cache
from .errors import (
    EXIT_ACCURACY,
    EXIT_OK,
    EXIT_USER,
    BackendUnavailableError,
    PassError,
    RecipeError,
    TrtoptError,
    did_you_mean,
)
from .inputs import apply_input_overrides, check_feeds, pass_data
from .model import (
    EXTERNAL_DATA_THRESHOLD,
    external_data_files,
    file_sha256,
    load_model,
    model_files,
    model_sha256,
    op_histogram,
)
from .passes import DEFAULT_PASSES, Pass, PassContext, get_pass, load_plugin
from .recipe import PassSpec, Recipe, load_recipe
from .session import Reference, quiet_polygraphy
from .stages import (
    Outputs,
    Rollback,
    RolledBack,
    StageJudge,
    failure,
    graph_signature,
    run_chain,
    run_pass,
)
from .stages import run as run_stage
from .staging import check_output, refuse_inputs
from .staging import commit as commit_output
from .staging import scratch as scratch_folder
from .staging import stage as stage_output
from .usercode import ExitAttempt

log = logging.getLogger("trtopt")
PassItem = str | dict[str, Any] | PassSpec


@dataclass
class CompileResult:
    """What a compile produced: its verdict, where it wrote, and the full report."""

    exit_code: int
    output_dir: Path
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def artifact(self) -> Path:
        return self.output_dir / self.report["build"]["artifact"]

    def summary(self) -> str:
        """A few lines for a terminal."""
        return report.summary(self.report)


def instantiate(items: Sequence[PassItem]) -> list[Pass]:
    """Pass objects from names, `{name: options}` dicts or PassSpecs, options validated."""
    passes = []
    for item in items:
        if isinstance(item, str):
            spec = PassSpec(name=item)
        elif isinstance(item, dict) and len(item) == 1:
            ((name, options),) = item.items()
            spec = PassSpec(name=name, options=options or {})
        elif isinstance(item, PassSpec):
            spec = item
        else:
            raise RecipeError(f"a pass is a name or {{name: options}}, not {item!r}")
        cls = get_pass(spec.name)
        try:
            passes.append(cls(cls.Options.model_validate(spec.options)))
        except ValidationError as error:
            detail = error.errors()[0]
            key = ".".join(str(k) for k in detail["loc"])
            hint = did_you_mean(key, cls.Options.model_fields)
            raise RecipeError(f"pass '{spec.name}': {key}: {detail['msg']}{hint}") from None
    return passes


def _save(graph: gs.Graph, path: Path, like: onnx.ModelProto) -> list[Path]:
    return graph_io.save_graph(graph, path, like, __version__)


def _optimized(
    model: str | Path | onnx.ModelProto,
    passes: Sequence[PassItem] | None,
    verify: bool,
    data: str | Path | None,
    strict: bool,
    on_rollback: Callable[[Rollback], None] | None,
    plugins: Sequence[str | Path],
) -> tuple[gs.Graph, onnx.ModelProto]:
    for plugin in plugins:
        load_plugin(Path(plugin))
    base_dir = None
    if isinstance(model, (str, Path)):
        source = load_model(model, external_data=False)
        base_dir = Path(model).parent
    else:
        source = model
    graph = graph_io.import_graph(source, base_dir)
    pipeline = instantiate(list(passes) if passes is not None else list(DEFAULT_PASSES))
    with scratch_folder("optimize") as scratch, quiet_polygraphy():
        ctx = PassContext(scratch_dir=Path(scratch))
        if verify and _large(graph):
            # As in a compile: saving and running every stage of it costs more than the passes.
            log.info("stages of a model over 1 GiB are not proven one by one")
            verify = False
        if not verify:
            for pass_ in pipeline:
                graph = run_pass(pass_, graph, ctx)
            return graph, source
        judge = StageJudge(source, Path(scratch), [], __version__)
        original = model if base_dir is not None else Path(scratch) / "original.onnx"
        if base_dir is None:
            onnx.save_model(source, str(original))
        judge.feeds, judge.outputs, unverified = _optimize_reference(source, Path(original), data)
        if unverified:
            log.warning(
                "outputs not compared (%s): each pass's result is only checked to be valid ONNX",
                unverified,
            )
        graph, rollbacks = run_chain(
            graph, pipeline, ctx, judge, lambda: graph_io.import_graph(source, base_dir)
        )
    for rollback in rollbacks:
        (on_rollback or _log_rollback)(rollback)
    if strict and rollbacks:
        raise RolledBack(rollbacks)
    return graph, source


def _log_rollback(rollback: Rollback) -> None:
    log.warning("pass '%s' rolled back: %s", rollback.pass_name, rollback.reason)


def _optimize_reference(
    source: onnx.ModelProto, path: Path, data: str | Path | None
) -> tuple[list[feeds.Feed], list | None, str | None]:
    """The feeds an optimize proves its stages on (``data``: an .npz of arrays by input name;
    else synthetic, at the declared shapes, symbolic dims 1) and the original's outputs on
    them; or why outputs cannot be compared here."""
    try:
        infos = feeds.model_inputs(source)
    except Exception as error:  # an input that is no tensor (a sequence, an optional)
        return [], None, f"inputs that are not tensors ({type(error).__name__}: {error})"
    if data is not None:
        data_feeds = list(DataSet(DataSource(npz=str(data)), infos, {}, {}).feeds())
    else:
        try:
            ones = {d: 1 for i in infos for d in i.shape if isinstance(d, str)}
            data_feeds = feeds.synthetic_feeds(infos, 1, 0, ones, {})
        except Exception as error:  # an input type synthetic data cannot make
            return [], None, f"no synthetic data for these inputs: {error}"
        if any(not isinstance(d, int) for i in infos for d in i.shape):
            shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in data_feeds[0].items())
            log.warning(
                "passes proven on synthetic inputs at %s (the model's dynamic dims filled in); "
                "--data FILE.npz proves them at real sizes",
                shapes,
            )
    try:
        return data_feeds, run_stage(path, data_feeds), None
    except Exception as error:
        return [], None, f"the original model does not run on ONNX Runtime here: {error}"


def optimize(
    model: str | Path | onnx.ModelProto,
    passes: Sequence[PassItem] | None = None,
    *,
    verify: bool = True,
    data: str | Path | None = None,
    strict: bool = False,
    on_rollback: Callable[[Rollback], None] | None = None,
    plugins: Sequence[str | Path] = (),
) -> onnx.ModelProto:
    """Run passes (default: DEFAULT_PASSES) over a model and return the optimized model.

    ``verify`` proves every pass's result (valid ONNX, runs on ONNX Runtime, same outputs as
    before it on ``data`` or synthetic inputs) and rolls back a pass that fails, calling
    ``on_rollback`` (default: a logged warning); ``strict`` raises RolledBack instead.
    ``plugins``: files whose passes ``passes`` may name."""
    graph, source = _optimized(model, passes, verify, data, strict, on_rollback, plugins)
    return graph_io.export_model(graph, source, __version__)


def optimize_file(
    model: str | Path,
    output: str | Path,
    passes: Sequence[PassItem] | None = None,
    external_data: bool | None = None,
    *,
    verify: bool = True,
    data: str | Path | None = None,
    strict: bool = False,
    on_rollback: Callable[[Rollback], None] | None = None,
    plugins: Sequence[str | Path] = (),
) -> list[Path]:
    """Optimize a model file into ``output`` (returns the files written). The weights stay on
    disk throughout, so a model of any size needs little more memory than the passes create.
    ``external_data`` None saves weights to ``<output>.data`` above 1 GiB; the rest as
    :func:`optimize`."""
    graph, source = _optimized(model, passes, verify, data, strict, on_rollback, plugins)
    return graph_io.save_graph(graph, Path(output), source, __version__, external_data)


JUDGED_SAMPLES = 2
"""Check feeds each stage runs on to prove it (all of them with ``check.verify_passes``)."""


def _stage_judge(
    recipe: Recipe,
    source: onnx.ModelProto,
    model_path: Path,
    scratch: Path,
    data: list[feeds.Feed],
    reference: Reference,
) -> tuple[StageJudge | None, Callable[[Outputs], accuracy.AccuracyResult] | None]:
    """What proves each pass of a compile, and (``verify_passes``) what judges each stage's
    accuracy against the reference. A model over 1 GiB is proven once, as an artifact:
    saving and running every stage of it would cost more than the compile."""
    if _on_disk(model_path) > EXTERNAL_DATA_THRESHOLD:
        log.info("stages of a model over 1 GiB are not proven one by one")
        return None, None
    count = len(data) if recipe.check.verify_passes else min(len(data), JUDGED_SAMPLES)
    judge = StageJudge(source, scratch, data[:count], __version__)
    judge.start([dict(r) for r in reference.outputs[:count]])
    if not recipe.check.verify_passes:
        return judge, None

    def verify(outputs: Outputs) -> accuracy.AccuracyResult:
        return _compare(reference.outputs, outputs, recipe)

    return judge, verify


def _compare(
    reference: accuracy.Outputs,
    candidate: accuracy.Outputs,
    recipe: Recipe,
    baseline: dict[str, dict[str, Any]] | None = None,
) -> accuracy.AccuracyResult:
    """Judge outputs by the recipe's check settings: every stage and the artifact alike."""
    return gate.GateSettings.from_recipe(recipe).compare(reference, candidate, baseline)


def _run_passes(
    recipe: Recipe,
    pipeline: list[Pass],
    source: onnx.ModelProto,
    base_dir: Path,
    ctx: WatchedContext,
    plan: Plan | None,
    staging: Path,
    judge: StageJudge | None,
    verify: Callable[[Outputs], accuracy.AccuracyResult] | None,
    say: Callable[[str], None],
) -> tuple[gs.Graph, list[dict[str, Any]], str | None]:
    """Run the passes (or take their outputs from the cache): the final graph, a record per
    pass for the report, and the first pass whose outputs diverged (when ``verify`` is set).

    ``judge`` proves each changed stage (stages.py); a pass it refuses, or one that raises,
    is rolled back: its record says why, and nothing of it is cached or kept."""
    graph: gs.Graph | None = graph_io.import_graph(source, base_dir)

    def restore() -> gs.Graph:
        return graph_io.import_graph(source, base_dir)

    histogram = op_histogram(source)
    records, first_diverging = [], None
    pending: Entry | None = None  # a cached stage not loaded yet (maybe never)
    for index, pass_ in enumerate(pipeline):
        say(f"pass {pass_.name}")
        entry = None
        if plan is not None:
            base_key, key = plan.pass_key(pass_)
            entry = plan.cache.get(key)
        if entry is not None:
            record = _cached_stage(entry, ctx, staging)
            histogram, graph, pending = entry.meta["histogram"], None, entry
            plan.advance(key)
            restore = partial(_load_stage, entry)
            if verify is not None or not pass_.exact:
                graph, pending = _load_stage(entry), None
                if judge is not None:  # the next exact pass is compared with this stage
                    judge.judge(graph, exact=False)
        else:
            if graph is None:
                graph, pending = _load_stage(pending), None
            artifacts_before, warnings_before = snapshot(staging), len(ctx.warnings)
            ctx.data_read, ctx.details = False, {}
            before_sig, before_hist, start = graph_signature(graph), histogram, time.perf_counter()
            rolled_back = None
            try:
                graph = run_pass(pass_, graph, ctx)
            except PassError as error:
                if isinstance(error.__cause__, (SystemExit, ExitAttempt)):
                    raise PassError(error.message, recipe.place("passes", index)) from error
                rolled_back = failure(pass_, error)
            changed = rolled_back is None and graph_signature(graph) != before_sig
            proven = None  # the stage's file, once proven
            if changed and judge is not None:
                rolled_back, path, _ = judge.judge(graph, pass_.exact)
                if rolled_back is None:
                    restore = partial(_load_path, path)
                    # One file (no external data): the cache copies it as it is.
                    proven = path if len(list(path.parent.iterdir())) == 1 else None
            if rolled_back is not None:
                graph, changed = restore(), False
                for name in written(artifacts_before, staging):
                    (staging / name).unlink(missing_ok=True)
                del ctx.warnings[warnings_before:]
                ctx.details = {}
                ctx.warnings.append(f"pass '{pass_.name}' rolled back: {rolled_back}")
                say(f"pass {pass_.name} rolled back: {rolled_back}")
            seconds = time.perf_counter() - start
            histogram = dict(sorted(Counter(node.op for node in graph.nodes).items()))
            record = {
                "name": pass_.name,
                "options": pass_.options.model_dump(mode="json"),
                "seconds": round(seconds, 6),
                "nodes_before": sum(before_hist.values()),
                "nodes_after": len(graph.nodes),
                "changed": changed,
                "rolled_back": rolled_back,
                "op_delta": _op_delta(before_hist, histogram),
                "verification": None,
                # What the pass reports about itself, e.g. nodes kept in higher precision.
                "details": ctx.details,
                "cached": False,
            }
            # A rolled-back pass leaves the graph as it was: nothing to cache, the key stays.
            if plan is not None and rolled_back is None:
                if ctx.data_read and key == base_key:
                    key = digest(base_key, "data", plan.data())
                    plan.cache.mark_reads_data(base_key)
                new_files = written(artifacts_before, staging)
                new_warnings = ctx.warnings[warnings_before:]
                # Writing a large model's stage costs more than recomputing it, unless its
                # pass read data (calibration, range guards): only those stages are kept.
                if ctx.data_read or not _large(graph):
                    _store_stage(
                        plan.cache,
                        key,
                        graph,
                        source,
                        record,
                        histogram,
                        new_files,
                        new_warnings,
                        staging,
                        proven,
                    )
                plan.advance(key)
        if verify is not None and judge is not None and judge.outputs is not None:
            stage = verify(judge.outputs)
            record["verification"] = stage.to_json()
            if not stage.passed and first_diverging is None:
                first_diverging = pass_.name
        records.append(record)

    if graph is None:
        graph = _load_stage(pending)
    return graph, records, first_diverging


def _load_path(path: Path) -> gs.Graph:
    return graph_io.import_graph(load_model(path, external_data=False), path.parent)


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim).

    glibc keeps the pages of freed arrays (a large model's converted weights) mapped, and
    ONNX Runtime's sessions, built next, do not reuse them: without this, a 2 GiB model's
    compile peaks about 1 GiB higher. Elsewhere (no malloc_trim) it does nothing."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return
    gc.collect()
    trim(0)


def _large(graph: gs.Graph) -> bool:
    """Weights past the size at which models are saved with external data (1 GiB)."""
    return sum(graph_io.nbytes(c) for c in graph_io.constants(graph)) > EXTERNAL_DATA_THRESHOLD


def _op_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = Counter(after)
    delta.subtract(before)
    return {op: n for op, n in sorted(delta.items()) if n}


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
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise RecipeError("overrides apply to recipe files; pass a path or edit the Recipe")
    say = progress or (lambda message: log.info(message))
    out = Path(output_dir) if output_dir is not None else recipe.output_dir()
    model_path = Path(recipe.model)
    store = None
    if use_cache and recipe.cache.enabled:
        store = StageCache(resolve_cache_dir(cache_dir, recipe.cache.dir))
    cache_root = [store.root] if store is not None else []
    check_output(out, [*recipe.input_paths(), *cache_root], force)
    # Calibration caches its ranges beside the stages, or nowhere when the cache is off.
    with quiet_polygraphy(), ranges_cache(store.ranges if store is not None else None):
        return _compile(recipe, model_path, out.resolve(), say, store)


def _compile(
    recipe: Recipe,
    model_path: Path,
    out: Path,
    say: Callable[[str], None],
    store: StageCache | None = None,
) -> CompileResult:
    try:
        source = load_model(model_path, external_data=False)  # weights stay on disk
    except TrtoptError as error:
        raise type(error)(error.message, f"{recipe.place('model')}: {model_path}") from None
    refuse_inputs(out, external_data_files(source, model_path.parent))
    apply_input_overrides(source, recipe)
    golden = gate.golden_for_recipe(recipe, source)  # a missing or stale one fails before work
    data, data_source = check_feeds(recipe, source)
    backend = _backend(recipe, source)
    unavailable = backend.unavailable()
    pipeline = instantiate(recipe.passes)
    calibration, validation = pass_data(recipe, source, data)
    plan = compile_key = None
    if store is not None:
        plan = _plan(store, recipe, model_path, source, data, calibration, validation)
        # An engine for datacenter TensorRT depends on the GPU it was built on: only its
        # passes are cached. Every other artifact is a function of the key.
        if not unavailable and recipe.build.backend != "tensorrt":
            compile_key = plan.probe(pipeline, _compile_settings(recipe, data))
            hit = store.get(compile_key)
            if hit is not None:
                say("unchanged: artifacts from the cache")
                return _from_cache(hit, recipe, model_path, out, store)
    reference = Reference(model_path, data)

    staging = stage_output(out)
    try:
        with scratch_folder("scratch") as scratch:
            ctx = WatchedContext(
                scratch_dir=scratch,
                feeds=data,
                calibration=calibration,
                validation=validation,
                artifacts_dir=staging,
            )
            judge, verify = _stage_judge(recipe, source, model_path, scratch, data, reference)
            graph, records, first_diverging = _run_passes(
                recipe, pipeline, source, model_path.parent, ctx, plan, staging, judge, verify, say
            )
            artifact_files = _save(graph, staging / "model.onnx", source)
            del graph  # the passes' arrays (e.g. FP16 weights) are on disk now
            _return_freed_memory()
            try:  # the path form checks external data and models over 2 GiB
                onnx.checker.check_model(str(staging / "model.onnx"))
            except onnx.checker.ValidationError as error:
                raise PassError(f"the optimized graph is not valid ONNX: {error}") from error
            final = onnx.load(str(staging / "model.onnx"), load_external_data=False)

            if unavailable:
                # Everything that needs no GPU still runs and is reported; then exit 2.
                build = BuildResult(backend.name, staging / "model.onnx", 0.0)
                build.details = {"status": "unavailable", "reason": unavailable}
                not_run: str | None = unavailable
            else:
                say(f"build {backend.name}")
                try:
                    build = backend.build(staging / "model.onnx", staging)
                except BackendOptionError as error:
                    where = recipe.place("build", recipe.build.section(), error.option)
                    raise RecipeError(error.message, where) from None
                not_run = backend.cannot_run(build)
            say("check accuracy")
            if not_run is None:
                candidate = backend.runner(build)
            else:  # the artifact cannot run here: check the final graph it was built from
                candidate = OnnxrtRunner(session_loader(staging / "model.onnx"), name="artifact")
            candidate_outputs = accuracy.run(candidate, data)
            baseline = None
            if recipe.check.baseline:
                baseline = gate.baseline_metrics(recipe.check.baseline, golden=False)
            result = _compare(reference.outputs, candidate_outputs, recipe, baseline)
            # An engine runs at every shape its profiles accept: check their min/opt/max too.
            profiles = getattr(backend, "profiles", None)
            shape_sets = profiles.shape_sets() if profiles is not None else []
            shape_checks: list[gate.ShapeCheck] = []
            if shape_sets:
                say(f"check accuracy at {len(shape_sets)} profile shapes")
                shape_checks = gate.check_shapes(
                    shape_sets,
                    feeds.model_inputs(source),
                    reference.runner,
                    candidate,
                    gate.GateSettings.from_recipe(recipe),
                    recipe.check.seed,
                    recipe.check.dims,
                    recipe.input_ranges(),
                )
            if profiles is not None and not unavailable:
                ctx.warnings.extend(profiles.notes)  # the engine takes the check's shape only
            golden_check = None
            if golden is not None:
                say("check golden outputs")
                golden_check = gate.check_compiled(
                    golden,
                    recipe,
                    final,
                    candidate,
                    out / build.artifact.name,
                    "artifact" if not_run is None else "final ONNX graph on ONNX Runtime",
                )
            latency_report = None
            if recipe.check.latency_runs:
                say("measure latency")
                runners = {"reference": reference.runner, "artifact": candidate}
                runs = recipe.check.latency_runs
                # A large model's two sessions would double the peak memory: one at a time.
                together = _on_disk(model_path) <= EXTERNAL_DATA_THRESHOLD
                if together:
                    with reference.runner, candidate:
                        latency_report = latency.interleaved(runners, data[0], runs)
                else:
                    latency_report = latency.one_at_a_time(runners, data[0], runs)
                latency_report["runs"] = runs
                latency_report["interleaved"] = together

        shapes_passed = all(c.accuracy.passed for c in shape_checks)
        passed = result.passed and shapes_passed and (golden_check is None or golden_check.passed)
        rollbacks = [
            f"pass '{r['name']}' rolled back: {r['rolled_back']}"
            for r in records
            if r.get("rolled_back")
        ]
        strict_failure = recipe.strict and bool(rollbacks)
        exit_code = (
            EXIT_OK if passed and first_diverging is None and not strict_failure else EXIT_ACCURACY
        )
        verdict = "pass" if exit_code == EXIT_OK else "fail"
        if unavailable:  # the accuracy verdict stands; the compile itself is incomplete
            exit_code, verdict = EXIT_USER, "incomplete"
        built_files = [build.artifact, *artifact_files, *build.files]
        # The artifact alone (an ONNX one with its external data), which a deployment ships
        # and `diff --size-margin` gates; total_bytes adds the other outputs.
        shipped = artifact_files if build.artifact in artifact_files else [build.artifact]
        the_report = {
            "schema_version": report.SCHEMA_VERSION,
            "verdict": verdict,
            "exit_code": exit_code,
            "output_dir": str(out),
            "versions": report.versions(),
            "recipe": recipe.model_dump(mode="json"),
            "model": {
                "path": str(model_path),
                "sha256": model_sha256(model_path),
                "opset": {o.domain or "ai.onnx": o.version for o in source.opset_import},
                "nodes": len(source.graph.node),
                "op_histogram": op_histogram(source),
                "inputs": [
                    {"name": i.name, "dtype": str(i.dtype), "shape": list(i.shape)}
                    for i in feeds.model_inputs(source)
                ],
            },
            "passes": records,
            "first_diverging_pass": first_diverging,
            "rolled_back": rollbacks,
            "build": {
                "backend": build.backend,
                "seconds": round(build.seconds, 6),
                "artifact": build.artifact.name,
                "sha256": file_sha256(*dict.fromkeys(built_files)),
                "size_bytes": sum(f.stat().st_size for f in shipped),
                "total_bytes": sum(f.stat().st_size for f in dict.fromkeys(built_files)),
                "files": sorted({f.name for f in built_files}),
                **build.details,
            },
            "accuracy": {
                **result.to_json(),
                **({} if shapes_passed else {"verdict": "fail"}),
                "data": data_source,
                "failures": [
                    *result.failures(),
                    *(line for c in shape_checks for line in c.failures()),
                ],
                "profiles": [c.to_json() for c in shape_checks],
                "checked": "artifact" if not_run is None else "final ONNX graph on ONNX Runtime",
                "artifact_not_run": None
                if not_run is None
                else f"the {backend.name} artifact itself was not run: {not_run}",
            },
            "golden": None if golden_check is None else golden_check.to_json(),
            "latency": latency_report,
            "kept_in_higher_precision": _kept(records),
            "int8_coverage": _int8_coverage(records),
            "warnings": list(ctx.warnings),
        }
        if strict_failure:
            the_report["accuracy"]["failures"][:0] = [f"{line} (strict)" for line in rollbacks]
        if first_diverging:
            the_report["accuracy"]["failures"].insert(
                0, f"pass '{first_diverging}' is the first whose outputs diverge"
            )
        if golden_check is not None:
            the_report["golden"].pop("versions")  # the report's own
            the_report["accuracy"]["failures"] += [f"golden: {f}" for f in golden_check.failures()]
        pairs = html_report.output_pairs(reference.outputs, candidate_outputs)
        html_report.write_html(the_report, staging / "report.html", pairs)
        if plan is not None:
            cached_passes = sum(bool(r.get("cached")) for r in records)
            the_report["cache"] = {
                "dir": str(plan.cache.root),
                "compile": "miss" if compile_key is not None else "not cached (backend)",
                "passes_from_cache": cached_passes,
            }
            if compile_key is not None and not unavailable:
                _store_compile(plan, recipe, data, the_report, staging, pairs)
        else:
            the_report["cache"] = None
        report.write_reports(the_report, staging)
        commit_output(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if unavailable:
        raise BackendUnavailableError(
            f"{unavailable}. Everything that needs no GPU ran; the report (build marked "
            f"unavailable) is in {out}",
            recipe.place("build", "backend"),
        )
    return CompileResult(exit_code, out, the_report)


def _plan(
    store: StageCache,
    recipe: Recipe,
    model_path: Path,
    source: onnx.ModelProto,
    data: list[feeds.Feed],
    calibration: DataSet,
    validation: list[feeds.Feed],
) -> Plan:
    """The cache keys' starting point: the model's files and its inputs as declared in the
    graph the passes get (the recipe's shapes written in); the data's hash (calibration,
    validation and check data, which the recipe's ranges shape) joins only the keys of passes
    that read it. Optimization profiles reach only the build and the check: they are in the
    compile key (_compile_settings), not in any pass's."""
    declared = [
        [value.name, hashlib.sha256(value.type.SerializeToString(deterministic=True)).hexdigest()]
        for value in source.graph.input
    ]

    def data_digest() -> str:
        return digest(calibration.fingerprint(), feeds_digest(validation), feeds_digest(data))

    return Plan(store, source_digest(model_files(model_path), declared), data_digest)


def _on_disk(model_path: Path) -> int:
    """Bytes of a model file and its external data."""
    return sum(f.stat().st_size for f in model_files(model_path))


def _compile_settings(recipe: Recipe, data: list[feeds.Feed]) -> dict[str, Any]:
    """What besides the final graph decides a compile's artifacts and report."""
    dumped = recipe.model_dump(mode="json")
    return {
        "inputs": dumped["inputs"],  # profiles decide the engine and the shapes checked
        "build": dumped["build"],
        "check": dumped["check"],
        "check_data": feeds_digest(data),
        # The golden file and baseline report are inputs of the check, like its data.
        "check_files": [
            file_sha256(Path(f)) if Path(f).is_file() else None
            for f in (recipe.check.golden, recipe.check.baseline)
            if f
        ],
    }


def _load_stage(entry: Entry | None) -> gs.Graph:
    assert entry is not None
    path = entry.file("model.onnx")
    return graph_io.import_graph(load_model(path, external_data=False), path.parent)


def _cached_stage(entry: Entry, ctx: PassContext, staging: Path) -> dict[str, Any]:
    """A pass's record, artifacts and warnings from its cache entry."""
    entry.restore(entry.meta["artifacts"], staging)
    ctx.warnings.extend(entry.meta["warnings"])
    return {**entry.meta["record"], "cached": True}


def _store_stage(
    store: StageCache,
    key: str,
    graph: gs.Graph,
    like: onnx.ModelProto,
    record: dict[str, Any],
    histogram: dict[str, int],
    artifacts: list[str],
    warnings: list[str],
    staging: Path,
    saved: Path | None,
) -> None:
    """Cache a pass's stage; ``saved``: the same graph already saved as one file (when its
    stage was proven), copied rather than exported again."""
    with store.writer(key, "pass") as entry:
        if saved is not None:
            shutil.copyfile(saved, entry.folder / "model.onnx")
        else:
            _save(graph, entry.folder / "model.onnx", like)
        for name in artifacts:
            shutil.copyfile(staging / name, entry.folder / name)
        entry.meta = {
            "record": record,
            "histogram": histogram,
            "artifacts": artifacts,
            "warnings": list(warnings),
        }


PLOT_DATA = "report-plots.npz"
"""A cached compile's output pairs, from which a hit draws report.html again (with the plots
that matplotlib, installed since, can draw, and the hit's own report); never an output."""


def _store_compile(
    plan: Plan,
    recipe: Recipe,
    data: list[feeds.Feed],
    the_report: dict,
    staging: Path,
    pairs: html_report.Pairs,
) -> None:
    key = plan.compile_key(_compile_settings(recipe, data))
    with plan.cache.writer(key, "compile") as entry:
        # Everything staged so far (the reports are written after, and again on a hit).
        for path in sorted(staging.iterdir()):
            if not path.is_file():
                raise OSError(f"not caching a compile whose output holds a folder ({path.name})")
            shutil.copyfile(path, entry.folder / path.name)
        names = sorted(pairs)
        arrays = {
            f"{kind}{i}": pairs[n][j] for i, n in enumerate(names) for j, kind in enumerate("rc")
        }
        with open(entry.folder / PLOT_DATA, "wb") as handle:
            np.savez(handle, **arrays)
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


def _from_cache(
    entry: Entry, recipe: Recipe, model_path: Path, out: Path, store: StageCache
) -> CompileResult:
    """An unchanged compile: its artifacts and report, copied into place the usual way."""
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
        entry.restore([name for name in entry.files() if name != PLOT_DATA], staging)
        # Drawn again: the hit's own report, and plots wherever matplotlib is there now.
        html_report.write_html(the_report, staging / "report.html", _cached_pairs(entry))
        report.write_reports(the_report, staging)
        commit_output(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CompileResult(the_report["exit_code"], out, the_report)


def _kept(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes the precision passes kept in higher precision and why, by ONNX node name: the
    precision pass's FP32 list and every automatic search's exclusions, ready to pin into
    the recipe (`keep_fp32.nodes`, `exclude.nodes`)."""
    kept = []
    for record in records:
        details = record.get("details") or {}
        for item in details.get("kept_fp32", []):
            kept.append({"pass": record["name"], **item})
        if "kept_fp32" not in details:
            for item in details.get("excluded_nodes", []):
                reason = f"auto: effect {item['effect']:.3g} when quantized alone"
                kept.append({"pass": record["name"], "node": item["node"], "reason": reason})
    return kept


def _int8_coverage(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last quantize pass's INT8 coverage (layers and MACs), None without one."""
    found = None
    for record in records:
        details = record.get("details") or {}
        if isinstance(details.get("int8_coverage"), dict) and not record.get("rolled_back"):
            found = {"pass": record["name"], **details["int8_coverage"]}
    return found


def _backend(recipe: Recipe, model: onnx.ModelProto) -> Any:
    """The recipe's backend, with TensorRT optimization profiles derived from `inputs`."""
    profiles = None
    if recipe.build.backend != "onnxruntime":
        given = {
            name: [(tuple(p.min), tuple(p.opt), tuple(p.max)) for p in spec.profile_list()]
            for name, spec in recipe.inputs.items()
            if spec.profile_list()
        }
        profiles = derive_profiles(
            feeds.model_inputs(model),
            given,
            recipe.check.dims,
            lambda name: (
                recipe.place("inputs", name, "profiles")
                if recipe.inputs[name].profiles
                else recipe.place("inputs", name, "profile")
            ),
        )
    return get_backend(recipe.build.backend, recipe.build.options(), profiles)
