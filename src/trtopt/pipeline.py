"""The hallway: a compile is prepare -> passes -> build -> check -> report -> commit, staged
and moved into place atomically; each step is a function here, the work lives in its module."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import onnx
from polygraphy.backend.base import BaseRunner

from . import accuracy, feeds, gate, graph_io, latency, report
from . import html as html_report
from ._version import __version__
from .backends import ONNX_ARTIFACT, Backend, BuildResult, get_backend
from .backends.onnxruntime import ProviderChoice, choose_providers
from .backends.profiles import derive_profiles
from .backends.tensorrt import BackendOptionError
from .cache import StageCache, resolve_cache_dir
from .cache_keys import CacheKeys, WatchedContext
from .calibration import DataSet, ranges_cache
from .calibration.collect import session_providers
from .compile_cache import cache_keys, check_files, compile_settings, store_compile
from .compile_result import CompileResult
from .deploy import triton_place, write_model_repository
from .digests import file_sha256, files_digest
from .errors import (
    EXIT_OK,
    BackendUnavailableError,
    PassError,
    RecipeError,
    TrtoptError,
)
from .inputs import apply_input_overrides, check_feeds, pass_data
from .model import (
    EXTERNAL_DATA_THRESHOLD,
    external_data_files,
    load_model,
    op_histogram,
)
from .passes import Pass
from .quiet import quiet_polygraphy
from .recipe import PassSpec, Recipe, load_recipe
from .report_text import write_reports
from .session import Reference, artifact_runner, checked, graph_runner
from .stages import Outputs, PassRecord, StageJudge, instantiate, run_passes
from .staging import check_output, refuse_inputs
from .staging import commit as commit_output
from .staging import scratch as scratch_folder
from .staging import stage as stage_output
from .unchanged import Direct, direct_candidate, direct_inputs, record_direct, serve

log = logging.getLogger("trtopt")


JUDGED_SAMPLES = 2
"""Check feeds each stage runs on to prove it (all of them with ``check.verify_passes``)."""
TENSORRT_BACKENDS = ("tensorrt", "tensorrt-rtx")
"""Builds whose quantize steps get FP16 around their Q/DQ unless they say otherwise."""


def _stage_judge(
    recipe: Recipe,
    source: onnx.ModelProto,
    model_files: list[Path],
    scratch: Path,
    reference: Reference,
) -> tuple[StageJudge | None, Callable[[Outputs], accuracy.AccuracyResult] | None]:
    """What proves each pass of a compile, and (``verify_passes``) what judges each stage's
    accuracy against the reference. A model over 1 GiB is proven once, as an artifact:
    saving and running every stage of it would cost more than the compile."""
    if _on_disk(model_files) > EXTERNAL_DATA_THRESHOLD:
        log.info("stages of a model over 1 GiB are not proven one by one")
        return None, None
    data = reference.feeds
    count = len(data) if recipe.check.verify_passes else min(len(data), JUDGED_SAMPLES)
    judge = StageJudge(source, scratch, data[:count], __version__)
    judge.start([dict(r) for r in reference.outputs[:count]])
    if not recipe.check.verify_passes:
        return judge, None

    settings = gate.GateSettings.from_recipe(recipe)

    def verify(outputs: Outputs) -> accuracy.AccuracyResult:
        return settings.compare(reference.outputs, outputs)

    return judge, verify


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


def compile(
    recipe: str | Path | Recipe,
    output_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    force: bool = False,
    direct: Direct | None = None,
) -> CompileResult:
    """A compile down the hallway (arguments as :func:`trtopt.compile`, which serves an
    unchanged recipe before it comes here). ``direct``: the recipe file's direct entry, where
    a cached compile of it is remembered for the next one to be served from its files."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides, document=direct.document if direct else None)
    elif overrides:
        raise RecipeError("overrides apply to recipe files; pass a path or edit the Recipe")
    say = progress or (lambda message: log.info(message))
    out = Path(output_dir) if output_dir is not None else recipe.output_dir()
    model_path = Path(recipe.model)
    root = resolve_cache_dir(cache_dir, recipe.cache.dir)  # never an output, cache off too
    store = StageCache(root) if use_cache and recipe.cache.enabled else None
    check_output(out, [*recipe.input_paths(), root], force)
    # Calibration caches its ranges beside the stages, or nowhere when the cache is off.
    with quiet_polygraphy(), ranges_cache(store.ranges if store is not None else None):
        return _compile(recipe, model_path, out.resolve(), say, store, direct)


@dataclass
class _Job:
    """What a compile knows before any work: the model and its files, its check feeds and their
    source, the golden file, the backend, the passes and their data, the cache keys."""

    source: onnx.ModelProto
    model_files: list[Path]
    """The model file and its external data files, in that order."""
    data: list[feeds.Feed]
    data_source: str
    golden: gate.Golden | None
    backend: Backend
    unavailable: str | None
    passes: list[Pass]
    calibration: DataSet
    validation: list[feeds.Feed]
    keys: CacheKeys | None = None
    compile_key: str | None = None


@dataclass
class _Built:
    """The build's result, the files of the final ONNX graph, the graph's metadata, and why
    the artifact cannot run here (None: it runs)."""

    build: BuildResult
    graph_files: list[Path]
    final: onnx.ModelProto
    not_run: str | None


def _compile(
    recipe: Recipe,
    model_path: Path,
    out: Path,
    say: Callable[[str], None],
    store: StageCache | None = None,
    direct: Direct | None = None,
) -> CompileResult:
    measuring = _measuring(recipe)
    job = _prepare(recipe, model_path, out, store)
    read = _read(recipe, job) if direct is not None and store is not None else None
    hit = store.get(job.compile_key) if store is not None and job.compile_key else None
    if hit is not None:
        say("unchanged: artifacts from the cache")
        dumped = recipe.model_dump(mode="json")
        cached = serve(hit, dumped, model_path, out, store, partial(_deploy, recipe))  # type: ignore[arg-type]
        _remember(direct, recipe, job, job.compile_key, read)
        return CompileResult(cached["exit_code"], out, cached)
    reference = Reference(model_path, job.data, recipe.calibration.model_dump(mode="json"))
    staging = stage_output(out)
    try:
        done = _work(recipe, job, model_path, out, staging, reference, measuring, say)
        the_report = _report(recipe, job, out, done)
        the_report["calibration"] = {**measuring.to_json(), "reference": reference.providers}
        pairs = html_report.output_pairs(reference.outputs, done.checked.outputs)
        drawn: html_report.Drawn = {}
        html_report.write_html(the_report, staging / "report.html", pairs, drawn)
        stored = _cache_compile(job, recipe, done.records, the_report, staging, pairs, drawn)
        write_reports(the_report, staging)
        _deploy(recipe, the_report, staging)
        commit_output(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _remember(direct, recipe, job, stored, read)
    if job.unavailable:
        raise BackendUnavailableError(
            f"{job.unavailable}. Everything that needs no GPU ran; the report (build marked "
            f"unavailable) is in {out}",
            recipe.place("build", "backend"),
        )
    return CompileResult(the_report["exit_code"], out, the_report)


@dataclass
class _Done:
    """What the passes, the build and the check made, and what they warned of."""

    records: list[PassRecord]
    first_diverging: str | None
    built: _Built
    checked: report.Checked
    warnings: list[str]


def _work(
    recipe: Recipe,
    job: _Job,
    model_path: Path,
    out: Path,
    staging: Path,
    reference: Reference,
    measuring: ProviderChoice,
    say: Callable[[str], None],
) -> _Done:
    """Passes -> build -> check, with the final graph and the artifact staged."""
    with scratch_folder("scratch") as scratch, session_providers(measuring.providers):
        ctx = WatchedContext(
            scratch_dir=scratch,
            feeds=job.data,
            calibration=job.calibration,
            validation=job.validation,
            artifacts_dir=staging,
        )
        ctx.warnings += measuring.notes("calibration.providers")
        ctx.warnings += getattr(job.backend, "notes", [])  # providers skipped
        judge, verify = _stage_judge(recipe, job.source, job.model_files, scratch, reference)
        graph, records, first_diverging = run_passes(
            recipe, job.passes, job.source, model_path.parent, ctx, job.keys, staging,
            judge, verify, say,
        )  # fmt: skip
        final = staging / ONNX_ARTIFACT
        graph_files = graph_io.save_graph(graph, final, job.source, __version__)
        del graph  # the passes' arrays (e.g. FP16 weights) are on disk now: let them go
        _return_freed_memory()  # before ONNX Runtime's sessions take the memory
        built = _build(recipe, job, graph_files, staging, say)
        checked = _check(recipe, job, built, reference, ctx, out, say)
    return _Done(records, first_diverging, built, checked, ctx.warnings)


def _report(recipe: Recipe, job: _Job, out: Path, done: _Done) -> dict[str, Any]:
    """report.json's content, with the options the passes ran with."""
    return report.compile_report(
        recipe={
            **recipe.model_dump(mode="json"),
            "passes": [spec.model_dump(mode="json") for spec in _with_build_defaults(recipe)],
        },
        out=out,
        model=_describe_model(job.model_files, job.source),
        records=done.records,
        first_diverging=done.first_diverging,
        build=_describe_build(done.built),
        checked=done.checked,
        data_source=job.data_source,
        not_run=None if done.built.not_run is None else (job.backend.name, done.built.not_run),
        strict=recipe.strict,
        unavailable=job.unavailable is not None,
        warnings=done.warnings,
    )


def _deploy(recipe: Recipe, the_report: dict[str, Any], staging: Path) -> None:
    """A passing compile whose recipe names a Triton model repository: a new version there
    (from the staged output, before it is moved into place), recorded in the report."""
    options = recipe.deploy.triton
    if options is None or options.repository is None or the_report["exit_code"] != EXIT_OK:
        return
    entry = write_model_repository(staging, Path(options.repository), options, triton_place(recipe))
    the_report["deploy"] = {"triton": entry.to_json()}
    write_reports(the_report, staging)


def _prepare(recipe: Recipe, model_path: Path, out: Path, store: StageCache | None) -> _Job:
    """Everything a compile checks before work: the model loads and fits the recipe, the
    golden file fits the model, the data is readable; and the cache keys."""
    try:
        source = load_model(model_path, external_data=False)  # weights stay on disk
    except TrtoptError as error:
        raise type(error)(error.message, f"{recipe.place('model')}: {model_path}") from None
    files = [model_path, *external_data_files(source, model_path.parent)]
    refuse_inputs(out, files[1:])
    apply_input_overrides(source, recipe)
    golden = gate.golden_for_recipe(recipe, source)  # a missing or stale one fails before work
    data, data_source = check_feeds(recipe, source)
    backend = _backend(recipe, source)
    calibration, validation = pass_data(recipe, source, data)
    job = _Job(
        source,
        files,
        data,
        data_source,
        golden,
        backend,
        backend.unavailable(),
        instantiate(_with_build_defaults(recipe)),
        calibration,
        validation,
    )
    if store is not None:
        job.keys = cache_keys(store, recipe, files, source, data, calibration, validation)
        # An engine for datacenter TensorRT depends on the GPU it was built on: only its
        # passes are cached. Every other artifact is a function of the key.
        if not job.unavailable and recipe.build.backend != "tensorrt":
            job.compile_key = job.keys.probe(job.passes, compile_settings(recipe, data))
    return job


def _with_build_defaults(recipe: Recipe) -> list[PassSpec]:
    """The recipe's passes, with what the build says filled in where a pass's options are
    silent (a pass knows no backend): `lint` checks the GPUs build.tensorrt_rtx names, and
    `quantize` puts FP16 around its Q/DQ for TensorRT (``high_precision``: TensorRT runs the
    other layers in the graph's own types, and FP16 halves their weights' bytes; ONNX
    Runtime's CPU kernels gain nothing from it, so its backend keeps FP32), and places its
    INT8 Q/DQ for ONNX Runtime's CPU kernels when ONNX Runtime builds for the CPU alone
    (``placement``: TensorRT's placement forms none of them, so it ran no faster than FP32)."""
    defaults: dict[str, dict[str, Any]] = {}
    capabilities = recipe.build.tensorrt_rtx.compute_capabilities
    if recipe.build.backend == "tensorrt-rtx" and capabilities:
        defaults["lint"] = {"compute_capabilities": capabilities}
    if recipe.build.backend in TENSORRT_BACKENDS:
        defaults["quantize"] = {"high_precision": "fp16"}
    elif recipe.build.backend == "onnxruntime" and recipe.build.onnxruntime.providers == ["cpu"]:
        defaults["quantize"] = {"placement": "onnxruntime"}
    return [
        spec.model_copy(
            update={"options": {**_applicable(spec, defaults[spec.name]), **spec.options}}
        )
        if spec.name in defaults
        else spec
        for spec in recipe.passes
    ]


def _applicable(spec: PassSpec, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` without what the pass's own options rule out: quantize's ONNX Runtime
    placement is INT8 only (ONNX Runtime's CPU has no FP8 or INT4 Q/DQ kernels)."""
    if spec.name == "quantize" and spec.options.get("dtype", "int8") != "int8":
        return {k: v for k, v in defaults.items() if k != "placement"}
    return defaults


def _build(
    recipe: Recipe, job: _Job, graph_files: list[Path], staging: Path, say: Callable[[str], None]
) -> _Built:
    """Check the saved final graph (the ONNX checker) and build the artifact from it; where
    the backend is unavailable, the graph stands in for it and the report says so."""
    try:  # the path form checks external data and models over 2 GiB
        onnx.checker.check_model(str(staging / ONNX_ARTIFACT))
    except onnx.checker.ValidationError as error:
        raise PassError(f"the optimized graph is not valid ONNX: {error}") from error
    final = onnx.load(str(staging / ONNX_ARTIFACT), load_external_data=False)
    if job.unavailable:
        # Everything that needs no GPU still runs and is reported; then exit 2.
        build = BuildResult(job.backend.name, staging / ONNX_ARTIFACT, 0.0)
        build.details = {"status": "unavailable", "reason": job.unavailable}
        return _Built(build, graph_files, final, job.unavailable)
    say(f"build {job.backend.name}")
    try:
        build = job.backend.build(staging / ONNX_ARTIFACT, staging)
    except BackendOptionError as error:
        where = recipe.place("build", recipe.build.section(), error.option)
        raise RecipeError(error.message, where) from None
    return _Built(build, graph_files, final, job.backend.cannot_run(build))


def _check(
    recipe: Recipe,
    job: _Job,
    built: _Built,
    reference: Reference,
    ctx: WatchedContext,
    out: Path,
    say: Callable[[str], None],
) -> report.Checked:
    """The artifact (or, where it cannot run, the final graph) against the reference: on the
    check feeds, at every profile shape, on the golden file; and its latency."""
    say("check accuracy")
    graph = built.build.artifact.with_name(ONNX_ARTIFACT)
    candidate, _ = artifact_runner(job.backend, built.build, graph, built.not_run)
    outputs = accuracy.run(candidate, job.data)
    baseline = None
    if recipe.check.baseline:
        baseline = gate.baseline_metrics(recipe.check.baseline, golden=False)
    settings = gate.GateSettings.from_recipe(recipe)
    result = settings.compare(reference.outputs, outputs, baseline)
    # An engine runs at every shape its profiles accept: check their min/opt/max too.
    profiles = getattr(job.backend, "profiles", None)
    shape_sets = profiles.shape_sets() if profiles is not None else []
    shape_checks: list[gate.ShapeCheck] = []
    if shape_sets:
        say(f"check accuracy at {len(shape_sets)} profile shapes")
        shape_checks = gate.check_shapes(
            shape_sets,
            feeds.model_inputs(job.source),
            reference.runner,
            candidate,
            settings,
            recipe.check.seed,
            recipe.check.dims,
            recipe.input_ranges(),
        )
    if profiles is not None and not job.unavailable:
        ctx.warnings.extend(profiles.notes)  # the engine takes the check's shape only
    golden_check = None
    if job.golden is not None:
        say("check golden outputs")
        artifact = out / built.build.artifact.name
        what = checked(built.not_run, job.backend.name)
        golden_check = gate.check_compiled(
            job.golden, recipe, built.final, candidate, artifact, what
        )
    latency_report = None
    if recipe.check.latency_runs:
        say("measure latency")
        timed = candidate if built.not_run is None else graph_runner(graph, emulate=False)
        latency_report = _latency(reference, timed, job.data[0], recipe, job.model_files)
    return report.Checked(result, outputs, shape_checks, golden_check, latency_report)


def _latency(
    reference: Reference,
    candidate: BaseRunner,
    feed: feeds.Feed,
    recipe: Recipe,
    model_files: list[Path],
) -> dict[str, Any]:
    runners = {"reference": reference.runner, "artifact": candidate}
    runs = recipe.check.latency_runs
    # A large model's two sessions would double the peak memory: one at a time.
    together = _on_disk(model_files) <= EXTERNAL_DATA_THRESHOLD
    if together:
        with reference.runner, candidate:
            measured = latency.interleaved(runners, feed, runs)
    else:
        measured = latency.one_at_a_time(runners, feed, runs)
    return {**measured, "runs": runs, "interleaved": together}


def _describe_model(model_files: list[Path], source: onnx.ModelProto) -> dict[str, Any]:
    """The report's `model` section: the source model as the passes got it."""
    return {
        "path": str(model_files[0]),
        "sha256": files_digest(model_files),
        "opset": {o.domain or "ai.onnx": o.version for o in source.opset_import},
        "nodes": len(source.graph.node),
        "op_histogram": op_histogram(source),
        "inputs": [
            {"name": i.name, "dtype": str(i.dtype), "shape": list(i.shape)}
            for i in feeds.model_inputs(source)
        ],
    }


def _describe_build(built: _Built) -> dict[str, Any]:
    """The report's `build` section. ``size_bytes`` is the artifact alone (an ONNX one with
    its external data), which a deployment ships and `diff --size-margin` gates;
    ``total_bytes`` adds the other outputs."""
    build = built.build
    files = list(dict.fromkeys([build.artifact, *built.graph_files, *build.files]))
    shipped = built.graph_files if build.artifact in built.graph_files else [build.artifact]
    return {
        "backend": build.backend,
        "seconds": round(build.seconds, 6),
        "artifact": build.artifact.name,
        "sha256": file_sha256(*files),
        "size_bytes": sum(f.stat().st_size for f in shipped),
        "total_bytes": sum(f.stat().st_size for f in files),
        "files": sorted({f.name for f in files}),
        **build.details,
    }


def _cache_compile(
    job: _Job,
    recipe: Recipe,
    records: list[PassRecord],
    the_report: dict[str, Any],
    staging: Path,
    pairs: html_report.Pairs,
    drawn: html_report.Drawn,
) -> str | None:
    """Record in the report what the cache gave, and store the finished compile; its key."""
    if job.keys is None:
        the_report["cache"] = None
        return None
    the_report["cache"] = {
        "dir": str(job.keys.cache.root),
        "compile": "miss" if job.compile_key is not None else "not cached (backend)",
        "passes_from_cache": sum(r.cached for r in records),
    }
    if job.compile_key is None or job.unavailable:
        return None
    return store_compile(job.keys, recipe, job.data, the_report, staging, pairs, drawn)


def _read(recipe: Recipe, job: _Job) -> dict[str, Any] | None:
    """What the compile reads, with each file's sha256, for its recipe's direct entry
    (``unchanged.direct_inputs``; None: not one to serve that way)."""
    names = [info.name for info in feeds.model_inputs(job.source)]
    return direct_inputs(recipe, [*job.model_files, *check_files(recipe)], names)


def _remember(
    direct: Direct | None,
    recipe: Recipe,
    job: _Job,
    compile_key: str | None,
    read: dict[str, Any] | None,
) -> None:
    """Remember a cached compile in its recipe's direct entry, so that the next compile of
    the unchanged recipe is served from its files alone (unchanged.py); not when a file it
    read changed while it ran (``read``: what it read, taken before)."""
    if direct is None or compile_key is None or job.keys is None or read is None:
        return
    try:
        if _read(recipe, job) != read:
            log.warning("an input changed during the compile: not remembered for a direct hit")
            return
        candidate = direct_candidate(recipe, compile_key, read, job.model_files)
        record_direct(job.keys.cache, direct.key, candidate)
    except (TrtoptError, OSError) as error:  # the next compile takes the longer way
        log.warning("could not remember the compile for a direct hit: %s", error)


def _on_disk(model_files: list[Path]) -> int:
    """Bytes of a model file and its external data."""
    return sum(f.stat().st_size for f in model_files)


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
    try:  # the ONNX Runtime backend checks its execution providers here, before any pass
        return get_backend(recipe.build.backend, recipe.build.options(), profiles)
    except BackendOptionError as error:
        where = recipe.place("build", recipe.build.section(), error.option)
        raise RecipeError(error.message, where) from None


def _measuring(recipe: Recipe) -> ProviderChoice:
    """The execution providers of calibration and the reference run (`calibration`)."""
    try:
        return choose_providers(**recipe.calibration.model_dump(mode="json"))
    except BackendOptionError as error:
        raise RecipeError(error.message, recipe.place("calibration", error.option)) from None
