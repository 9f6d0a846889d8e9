"""compile = passes -> build -> check -> report, staged and moved into place atomically."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.logger import G_LOGGER
from pydantic import ValidationError

from . import accuracy, feeds, latency, report
from .backends import get_backend
from .backends.onnxruntime import session_loader
from .errors import (
    EXIT_ACCURACY,
    EXIT_OK,
    DataError,
    PassError,
    RecipeError,
    TrtoptError,
    did_you_mean,
)
from .model import file_sha256, load_model, model_sha256, op_histogram, save_model
from .passes import DEFAULT_PASSES, Pass, PassContext, get_pass
from .recipe import PassSpec, Recipe, load_recipe

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


@contextmanager
def _quiet_polygraphy() -> Iterator[None]:
    """Polygraphy logs every step (and every failed comparison) itself; trtopt reports for
    itself, so only Polygraphy's critical errors, which it raises anyway, get through."""
    colors, G_LOGGER.colors = G_LOGGER.colors, False
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            yield
    finally:
        G_LOGGER.colors = colors


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


def graph_signature(graph: gs.Graph) -> str:
    """A structural fingerprint (nodes, wiring, attributes, constants' shape and leading bytes)
    that tells whether a pass changed the graph without hashing every weight."""
    digest = hashlib.sha256()
    for node in graph.nodes:
        digest.update(repr((node.op, node.name, sorted(node.attrs.items(), key=str))).encode())
        digest.update(
            repr(([t.name for t in node.inputs], [t.name for t in node.outputs])).encode()
        )
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            head = np.asarray(tensor.values).tobytes()[:4096]
            digest.update(repr((tensor.name, tensor.shape, str(tensor.dtype))).encode())
            digest.update(zlib.crc32(head).to_bytes(4, "little"))
        else:
            digest.update(repr((tensor.name, tensor.shape, str(tensor.dtype))).encode())
    io = [t.name for t in (*graph.inputs, *graph.outputs)]
    digest.update(repr(io).encode())
    return digest.hexdigest()


def run_pass(pass_: Pass, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Run one pass, turning an unexpected exception into a PassError that names it."""
    try:
        result = pass_.run(graph, ctx)
    except TrtoptError:
        raise
    except Exception as error:
        raise PassError(f"pass '{pass_.name}' failed: {type(error).__name__}: {error}") from error
    if not isinstance(result, gs.Graph):
        raise PassError(f"pass '{pass_.name}' returned {type(result).__name__}, not a gs.Graph")
    return result


def _to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph, keeping the source model's IR version and metadata."""
    model = gs.export_onnx(graph, do_type_check=True)
    model.ir_version = like.ir_version
    model.producer_name, model.producer_version = "trtopt", _version()
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    return model


def _version() -> str:
    from . import __version__

    return __version__


def optimize(
    model: str | Path | onnx.ModelProto, passes: Sequence[PassItem] | None = None
) -> onnx.ModelProto:
    """Run passes (default: DEFAULT_PASSES) over a model and return the optimized model."""
    source = load_model(model) if isinstance(model, (str, Path)) else model
    pipeline = instantiate(list(passes) if passes is not None else list(DEFAULT_PASSES))
    graph = gs.import_onnx(source)
    with tempfile.TemporaryDirectory(prefix="trtopt-") as scratch, _quiet_polygraphy():
        ctx = PassContext(scratch_dir=Path(scratch))
        for pass_ in pipeline:
            graph = run_pass(pass_, graph, ctx)
    return _to_model(graph, source)


def _apply_input_overrides(model: onnx.ModelProto, recipe: Recipe) -> None:
    """Write the recipe's declared input shapes into the model."""
    inputs = {value.name: value for value in model.graph.input}
    for name, spec in recipe.inputs.items():
        if name not in inputs:
            raise DataError(
                f"no model input named '{name}'{did_you_mean(name, inputs)}; "
                f"the model takes {[i.name for i in feeds.model_inputs(model)]}",
                recipe.place("inputs", name),
            )
        if spec.shape is None:
            continue
        shape = inputs[name].type.tensor_type.shape
        if len(spec.shape) != len(shape.dim):
            raise DataError(
                f"input '{name}' has rank {len(shape.dim)}, "
                f"the recipe gives {len(spec.shape)} dims",
                recipe.place("inputs", name, "shape"),
            )
        for dim, value in zip(shape.dim, spec.shape):
            dim.Clear()
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value


def _check_feeds(recipe: Recipe, model: onnx.ModelProto) -> tuple[list[feeds.Feed], str]:
    """The check inputs and a description of where they came from."""
    infos = feeds.model_inputs(model)
    check = recipe.check
    if check.data.npz:
        data = feeds.npz_feeds(check.data.npz, check.samples)
        feeds.validate_feeds(data, infos, check.data.npz)
        return data, f"npz: {check.data.npz}"
    ranges = {name: spec.range for name, spec in recipe.inputs.items() if spec.range}
    data = feeds.synthetic_feeds(infos, check.samples, check.seed, check.dims, ranges)
    return data, f"synthetic (seed {check.seed})"


def _stage(output_dir: Path) -> Path:
    """A fresh folder beside the output, on the same filesystem, so the final move is a rename."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.staging-", dir=output_dir.parent))


def _commit(staging: Path, output_dir: Path) -> None:
    """Replace ``output_dir`` by ``staging`` with renames; the old one is removed last."""
    backup = None
    if output_dir.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        os.rename(output_dir, backup / output_dir.name)
    os.rename(staging, output_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


class _Reference:
    """The original model on ONNX Runtime CPU, and its outputs on the check feeds."""

    def __init__(self, model_path: Path, data: list[feeds.Feed]) -> None:
        self.runner = OnnxrtRunner(session_loader(model_path), name="reference")
        self.outputs = accuracy.run(self.runner, data)


def _verify_stage(
    graph: gs.Graph,
    like: onnx.ModelProto,
    scratch: Path,
    data: list[feeds.Feed],
    reference: _Reference,
    recipe: Recipe,
) -> accuracy.AccuracyResult:
    path = scratch / "stage.onnx"
    save_model(_to_model(graph.copy(), like), path)
    outputs = accuracy.run(OnnxrtRunner(session_loader(path), name="stage"), data)
    class_scores = {n for n, s in recipe.check.outputs.items() if s.class_scores}
    return accuracy.compare(reference.outputs, outputs, recipe.check.thresholds_for, class_scores)


def _op_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = Counter(after)
    delta.subtract(before)
    return {op: n for op, n in sorted(delta.items()) if n}


def compile(
    recipe: str | Path | Recipe,
    output_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompileResult:
    """Compile a recipe: passes, build, accuracy check, report; the exit code is the verdict.

    Raises a TrtoptError for user errors (exit 2) and build failures (exit 3); an accuracy
    failure is a result (exit 1) with the artifact and report written.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise RecipeError("overrides apply to recipe files; pass a path or edit the Recipe")
    say = progress or (lambda message: log.info(message))
    out = Path(output_dir) if output_dir is not None else recipe.output_dir()
    model_path = Path(recipe.model)
    with _quiet_polygraphy():
        return _compile(recipe, model_path, out.resolve(), say)


def _compile(
    recipe: Recipe, model_path: Path, out: Path, say: Callable[[str], None]
) -> CompileResult:
    try:
        source = load_model(model_path)
    except TrtoptError as error:
        raise type(error)(error.message, f"{recipe.place('model')}: {model_path}") from None
    _apply_input_overrides(source, recipe)
    data, data_source = _check_feeds(recipe, source)
    reference = _Reference(model_path, data)

    staging = _stage(out)
    try:
        with tempfile.TemporaryDirectory(prefix="trtopt-scratch-") as scratch_name:
            scratch = Path(scratch_name)
            ctx = PassContext(scratch_dir=scratch, feeds=data)
            graph = gs.import_onnx(source)
            histogram = op_histogram(source)
            records, first_diverging = [], None
            for index, pass_ in enumerate(instantiate(recipe.passes)):
                say(f"pass {pass_.name}")
                before_sig, before_hist, start = (
                    graph_signature(graph),
                    histogram,
                    time.perf_counter(),
                )
                try:
                    graph = run_pass(pass_, graph, ctx)
                except PassError as error:
                    raise PassError(error.message, recipe.place("passes", index)) from error
                seconds = time.perf_counter() - start
                histogram = dict(sorted(Counter(node.op for node in graph.nodes).items()))
                record = {
                    "name": pass_.name,
                    "options": pass_.options.model_dump(mode="json"),
                    "seconds": round(seconds, 6),
                    "nodes_before": sum(before_hist.values()),
                    "nodes_after": len(graph.nodes),
                    "changed": graph_signature(graph) != before_sig,
                    "op_delta": _op_delta(before_hist, histogram),
                    "verification": None,
                }
                if recipe.check.verify_passes:
                    stage = _verify_stage(graph, source, scratch, data, reference, recipe)
                    record["verification"] = stage.to_json()
                    if not stage.passed and first_diverging is None:
                        first_diverging = pass_.name
                records.append(record)

            final = _to_model(graph, source)
            try:
                onnx.checker.check_model(final, full_check=False)
            except onnx.checker.ValidationError as error:
                raise PassError(f"the optimized graph is not valid ONNX: {error}") from error
            artifact_files = save_model(final, staging / "model.onnx")

            backend = get_backend(
                recipe.build.backend, getattr(recipe.build, recipe.build.backend).model_dump()
            )
            say(f"build {backend.name}")
            build = backend.build(staging / "model.onnx", staging)
            say("check accuracy")
            candidate = backend.runner(build)
            class_scores = {n for n, s in recipe.check.outputs.items() if s.class_scores}
            result = accuracy.compare(
                reference.outputs,
                accuracy.run(candidate, data),
                recipe.check.thresholds_for,
                class_scores,
            )
            latency_report = None
            if recipe.check.latency_runs:
                say("measure latency")
                with reference.runner, candidate:
                    latency_report = latency.interleaved(
                        {"reference": reference.runner, "artifact": candidate},
                        data[0],
                        recipe.check.latency_runs,
                    )
                latency_report["runs"] = recipe.check.latency_runs

        exit_code = EXIT_OK if result.passed and first_diverging is None else EXIT_ACCURACY
        built_files = [build.artifact, *artifact_files]
        the_report = {
            "schema_version": report.SCHEMA_VERSION,
            "verdict": "pass" if exit_code == EXIT_OK else "fail",
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
            "build": {
                "backend": build.backend,
                "seconds": round(build.seconds, 6),
                "artifact": build.artifact.name,
                "sha256": file_sha256(*dict.fromkeys(built_files)),
                "size_bytes": sum(f.stat().st_size for f in dict.fromkeys(built_files)),
                "files": sorted({f.name for f in built_files}),
                **build.details,
            },
            "accuracy": {
                **result.to_json(),
                "data": data_source,
                "failures": result.failures(),
            },
            "latency": latency_report,
        }
        if first_diverging:
            the_report["accuracy"]["failures"].insert(
                0, f"pass '{first_diverging}' is the first whose outputs diverge"
            )
        report.write_reports(the_report, staging)
        _commit(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CompileResult(exit_code, out, the_report)
