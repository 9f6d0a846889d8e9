"""`trtopt check`: run an artifact on a golden file's inputs and gate it on the thresholds.

The thresholds, output kinds (class scores, top-k) and error quantile come from the recipe, or,
without one, from what the golden file recorded when it was written. A ``max_degradation``
threshold compares with a baseline report (a compile's report.json or a check's ``--json``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner

from . import accuracy, feeds
from ._version import versions
from .backends import ONNX_ARTIFACT, BuildResult, get_backend
from .backends.onnxruntime import session_loader
from .backends.tensorrt import ENGINE_FILE
from .calibration import DataSet
from .errors import EXIT_ACCURACY, EXIT_OK, DataError, UserError
from .feeds import Feed
from .formatting import format_limit, format_metric, format_value
from .golden import Golden, GoldenError, golden_bytes, load_golden, write_golden
from .inputs import apply_input_overrides, check_feeds, check_model_names
from .metrics import DEFAULT_QUANTILE
from .model import load_model, model_sha256
from .quiet import quiet_polygraphy
from .recipe import DEFAULT_THRESHOLDS, Recipe, Thresholds, load_recipe
from .session import ARTIFACT_CHECKED, Reference, artifact_runner, checked

CHECK_SCHEMA_VERSION = 1


@dataclass
class GateSettings:
    """How outputs are judged: thresholds per output, class-score outputs, k, quantile."""

    thresholds_for: Callable[[str], Thresholds]
    class_scores: set[str] = field(default_factory=set)
    top_k: dict[str, int] = field(default_factory=dict)
    quantile: float = DEFAULT_QUANTILE

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> GateSettings:
        check = recipe.check
        scores = {n for n, s in check.outputs.items() if s.class_scores}
        return cls(
            check.thresholds_for,
            scores,
            {n: s.top_k for n, s in check.outputs.items()},
            check.error_quantile,
        )

    @classmethod
    def from_golden(cls, golden: Golden) -> GateSettings:
        """What the recipe that wrote the golden file gated on (validated and checked
        against what its npz recorded when it was loaded)."""
        gate = golden.gate
        recorded = dict(gate.thresholds)
        return cls(
            lambda name: recorded.get(name, DEFAULT_THRESHOLDS),
            set(gate.class_scores),
            dict(gate.top_k),
            gate.error_quantile,
        )

    def compare(
        self,
        reference: accuracy.Outputs,
        candidate: accuracy.Outputs,
        baseline: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> accuracy.AccuracyResult:
        """Judge ``candidate``'s outputs against ``reference``'s by these settings."""
        return accuracy.compare(
            reference,
            candidate,
            self.thresholds_for,
            self.class_scores,
            quantile=self.quantile,
            top_k=self.top_k,
            baseline=baseline,
        )


@dataclass
class CheckResult:
    """The verdict of a check, what it ran, and the outputs it compared (for plots)."""

    accuracy: accuracy.AccuracyResult
    golden: Path
    artifact: Path
    checked: str
    recipe: str | None = None
    baseline: Path | None = None
    reference_outputs: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    candidate_outputs: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return self.accuracy.passed

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_ACCURACY

    def failures(self) -> list[str]:
        return self.accuracy.failures()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": CHECK_SCHEMA_VERSION,
            "kind": "check",
            "verdict": "pass" if self.passed else "fail",
            "exit_code": self.exit_code,
            "recipe": self.recipe,
            "golden": str(self.golden),
            "artifact": str(self.artifact),
            "checked": self.checked,
            "baseline": str(self.baseline) if self.baseline else None,
            "accuracy": {
                **self.accuracy.to_json(),
                "data": f"golden: {self.golden}",
                "failures": self.failures(),
            },
            "versions": versions(),
        }


PROFILE_SAMPLES = 2
"""Synthetic samples run at each optimization profile's min, opt and max shapes."""


@dataclass
class ShapeCheck:
    """The accuracy of the artifact at one profile shape set (``profile 0 max``)."""

    label: str
    shapes: dict[str, list[int]]
    accuracy: accuracy.AccuracyResult

    @property
    def passed(self) -> bool:
        return self.accuracy.passed

    def failures(self) -> list[str]:
        return [f"{self.label} {self.shapes}: {line}" for line in self.accuracy.failures()]

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.label, "shapes": self.shapes, **self.accuracy.to_json()}


def check_shapes(
    shape_sets: Sequence[tuple[str, Mapping[str, Sequence[int]]]],
    inputs: Sequence[feeds.InputInfo],
    reference: BaseRunner,
    candidate: BaseRunner,
    settings: GateSettings,
    seed: int,
    dims: Mapping[str, int],
    ranges: Mapping[str, tuple[float, float]],
    samples: int = PROFILE_SAMPLES,
) -> list[ShapeCheck]:
    """Run ``reference`` and ``candidate`` on synthetic feeds at each shape set (an engine's
    profiles' min, opt and max) and judge them by ``settings``: an engine is checked at every
    shape it accepts, not only at the check's."""
    checks = []
    for label, shapes in shape_sets:
        data = feeds.synthetic_feeds(inputs, samples, seed, dims, ranges, shapes)
        result = settings.compare(accuracy.run(reference, data), accuracy.run(candidate, data))
        given = {name: [int(n) for n in shape] for name, shape in shapes.items()}
        checks.append(ShapeCheck(label, given, result))
    return checks


def verify_golden(
    golden: Golden,
    model: onnx.ModelProto,
    what: str,
    model_sha: str | None = None,
    check_outputs: bool = True,
    recipe_file: Path | None = None,
) -> None:
    """Refuse a golden file that does not fit ``model`` (``what`` names it in messages): another
    source model (``model_sha``), other input names/dtypes/shapes, or other outputs. The hint
    names ``recipe_file`` as a path from the current folder (else the recorded recipe name)."""
    recorded = (golden.meta.get("model") or {}).get("sha256")
    update = "if the change is intended, run `trtopt golden update"
    if recipe_file is not None:
        update += f" {os.path.relpath(recipe_file)}`"
    else:
        named = golden.meta.get("recipe")
        update += " RECIPE`" + (f" (the recipe named '{named}')" if named else "")
    if model_sha is not None and recorded != model_sha:
        raise GoldenError(
            f"made from another model: its sha256 is {str(recorded)[:12]}..., {what} has "
            f"{model_sha[:12]}...; {update}",
            str(golden.path),
        )
    try:
        feeds.validate_feeds(golden.inputs, feeds.model_inputs(model), "golden inputs")
    except DataError as error:
        raise GoldenError(f"does not fit {what}: {error}", str(golden.path)) from None
    if check_outputs:
        names = [o.name for o in model.graph.output]
        if sorted(names) != sorted(golden.output_names):
            raise GoldenError(
                f"its outputs {golden.output_names} are not the outputs {names} of {what}",
                str(golden.path),
            )


def baseline_metrics(path: str | Path, golden: bool = True) -> dict[str, dict[str, Any]]:
    """Metrics per output of a baseline: a check's JSON, or a compile's report.json (its golden
    check when ``golden`` and it has one, else its own check)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
        if report.get("kind") != "check" and golden and report.get("golden"):
            report = report["golden"]
        outputs = report["accuracy"]["outputs"]
        return {name: dict(output.get("metrics") or {}) for name, output in outputs.items()}
    except FileNotFoundError:
        raise UserError("baseline report not found", str(path)) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"not a trtopt report or check result: {error}", str(path)) from None


def run_golden(
    golden: Golden,
    runner: BaseRunner,
    settings: GateSettings,
    baseline: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[accuracy.AccuracyResult, list[dict[str, np.ndarray]]]:
    """Run ``runner`` on the golden inputs and compare with the golden outputs."""
    candidate = accuracy.run(runner, golden.inputs)
    result = settings.compare(list(golden.outputs), candidate, baseline)
    return result, [{n: np.asarray(a) for n, a in c.items()} for c in candidate]


def _artifact_file(recipe: Recipe | None, artifact: str | Path | None) -> Path:
    """The artifact file: ``artifact`` (a file, or an output folder), else the recipe's output.

    An output folder's report.json names its artifact; a folder whose backend built nothing
    (its report marks the build unavailable) has nothing to check: its model.onnx is the graph
    the engine would be built from, checked only when ``artifact`` names it."""
    assert artifact is not None or recipe is not None
    path = Path(artifact) if artifact is not None else recipe.output_dir()  # type: ignore[union-attr]
    if path.is_dir():
        built = _built(path)
        if built.get("status") == "unavailable":
            raise UserError(
                f"no engine to check: the {built.get('backend')} backend built no "
                f"{ENGINE_FILE} ({built.get('reason') or 'unavailable'}); compile where it is "
                f"available, or pass --artifact {path / ONNX_ARTIFACT} to check the final "
                "ONNX graph on ONNX Runtime",
                str(path),
            )
        name = built.get("artifact") or _expected_name(recipe)
        path = path / name
    if not path.is_file():
        hint = (
            "; compile the recipe first (`trtopt compile RECIPE`), or name the output folder "
            "a compile wrote with -o: --artifact DIR"
            if recipe and artifact is None
            else ""
        )
        raise UserError(f"artifact not found{hint}", str(path))
    return path


def open_artifact(
    recipe: Recipe | None, artifact: str | Path | None = None
) -> tuple[Path, BaseRunner, Path, str]:
    """The artifact ``check`` would run (``artifact``: a file or an output folder, else the
    recipe's output folder), a runner for it, the ONNX graph it was built from, and what runs
    (the artifact, or that graph on ONNX Runtime where the artifact cannot run here). Raises
    UserError (exit 2) when there is none."""
    path = _artifact_file(recipe, artifact)
    runner, onnx_path, what_ran = _runner(path, recipe)
    return path, runner, onnx_path, what_ran


def _built(folder: Path) -> dict[str, Any]:
    """The `build` section of an output folder's report.json ({} when there is none)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        build = json.loads((folder / "report.json").read_text()).get("build")
        if isinstance(build, dict):
            return build
    return {}


def _expected_name(recipe: Recipe | None) -> str:
    """The artifact a recipe's backend writes: an engine for TensorRT, else the ONNX model."""
    if recipe is not None and recipe.build.backend != "onnxruntime":
        return ENGINE_FILE
    return ONNX_ARTIFACT


def _runner(path: Path, recipe: Recipe | None) -> tuple[BaseRunner, Path, str]:
    """A runner for the artifact, the ONNX graph it was built from, and what is checked."""
    if path.suffix == ".onnx":
        options = recipe.build.options() if recipe and recipe.build.backend == "onnxruntime" else {}
        runner = OnnxrtRunner(session_loader(path, **options), name="artifact")
        return runner, path, ARTIFACT_CHECKED
    onnx_path = path.with_name(ONNX_ARTIFACT)
    if not onnx_path.is_file():
        raise UserError(f"the ONNX graph the engine was built from is missing: {onnx_path}")
    name, options = _engine_backend(path, recipe)
    build = BuildResult(name, path, 0.0, details={"tensorrt": {}})
    runner, reason = artifact_runner(get_backend(name, options), build, onnx_path)
    cannot = f" (the engine cannot run: {reason})" if reason else ""
    return runner, onnx_path, checked(reason, name) + cannot


def _engine_backend(path: Path, recipe: Recipe | None) -> tuple[str, dict[str, Any]]:
    if recipe is not None and recipe.build.backend != "onnxruntime":
        return recipe.build.backend, recipe.build.options()
    report = path.with_name("report.json")
    try:
        built = json.loads(report.read_text())
        build = built["recipe"]["build"]
        return build["backend"], build[build["backend"].replace("-", "_")]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            "cannot tell which TensorRT built this engine: give its recipe, or keep its "
            "report.json beside it",
            str(path),
        ) from None


def check(
    recipe: str | Path | Recipe | None = None,
    *,
    artifact: str | Path | None = None,
    golden: str | Path | None = None,
    baseline: str | Path | None = None,
    overrides: list[str] | None = None,
) -> CheckResult:
    """Run an artifact on a golden file's inputs and apply the thresholds.

    ``recipe`` supplies the defaults: the artifact (its output folder), the golden file
    (``check.golden``), the thresholds and the baseline (``check.baseline``). Without a recipe,
    ``artifact`` and ``golden`` are required and the thresholds are the ones the golden file
    recorded. Raises GoldenError/UserError (exit 2) when a file is missing or does not fit; a
    failed threshold is a result (``exit_code`` 1).
    """
    if recipe is None and artifact is None:
        raise UserError("say what to check: a recipe, or --artifact PATH with --golden FILE")
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    golden_path = golden or (recipe.check.golden if recipe else None)
    if golden_path is None:
        where = recipe.place("check") if recipe else None
        raise UserError(
            "no golden file: set `check.golden` in the recipe or pass --golden FILE "
            "(`trtopt golden update RECIPE` writes one)",
            where,
        )
    loaded = load_golden(golden_path)
    path = _artifact_file(recipe, artifact)
    runner, onnx_path, what_ran = _runner(path, recipe)
    model = load_model(onnx_path, external_data=False)  # not ONNX: exit 2, named
    model_sha = model_sha256(Path(recipe.model)) if recipe else None
    what = f"the recipe's model {recipe.model}" if recipe else "the artifact"
    if recipe is not None:  # the reference itself: sha256 and inputs
        source = onnx.load(recipe.model, load_external_data=False)
        check_model_names(source, recipe)
        verify_golden(loaded, source, what, model_sha, False, recipe.file)
    verify_golden(loaded, model, f"the artifact {onnx_path}", None, True, recipe and recipe.file)
    settings = GateSettings.from_recipe(recipe) if recipe else GateSettings.from_golden(loaded)
    baseline_path = baseline or (recipe.check.baseline if recipe else None)
    name = recipe.name if recipe else loaded.meta.get("recipe")
    with quiet_polygraphy():
        return _check_golden(loaded, runner, settings, path, what_ran, name, baseline_path)


def format_check(result: CheckResult | Mapping[str, Any]) -> str:
    """A table people can read: every metric of every output, its limit and verdict."""
    data = result.to_json() if isinstance(result, CheckResult) else result
    acc = data["accuracy"]
    lines = [
        f"{data.get('recipe') or 'check'}: {data['verdict'].upper()} "
        f"({acc['samples']} golden samples from {data['golden']})",
        f"  checked  {data['artifact']}"
        + ("" if data["checked"] == "artifact" else f": {data['checked']}"),
    ]
    rows = [("output", "metric", "value", "limit", "verdict")]
    for name, output in acc["outputs"].items():
        if output.get("error"):
            rows.append((name, "-", "-", "-", f"FAIL: {output['error']}"))
            continue
        gated = {c["metric"]: c for c in output["checks"]}
        for metric, value in output["metrics"].items():
            if value is None:
                continue
            check_ = gated.pop(metric, None)
            rows.append((name, metric, *_cells(value, check_)))
        for metric, check_ in gated.items():  # degradation checks
            rows.append((name, metric, *_cells(check_["value"], check_)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lines += [f"  FAIL {line}" for line in acc["failures"]]
    return "\n".join(lines)


def _cells(value: Any, check_: Mapping[str, Any] | None) -> tuple[str, str, str]:
    if check_ is None:
        return _num(value), "-", "not gated"
    limit = format_limit(check_["limit"])
    if check_.get("baseline") is not None:
        limit += f" (baseline {_num(check_['baseline'])})"
    shown = format_metric(value, check_["limit"], 6)
    return shown, limit, "pass" if check_["passed"] else "FAIL"


def _num(value: Any) -> str:
    return format_value(value, 6)


def update_golden(
    recipe: str | Path | Recipe,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    samples: int | None = None,
) -> Golden:
    """Run the reference (the recipe's original model on ONNX Runtime CPU) on the recipe's check
    data and write the golden file: to ``path``, else the recipe's ``check.golden``, else
    ``golden/<name>.npz`` under the current folder.

    ``samples`` (default ``check.golden_samples``, else ``check.samples``) feeds are stored:
    the recipe's ``data.validation`` when it declares one, else its check data.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    check = recipe.check
    if samples is not None and samples < 1:
        raise UserError(f"golden samples must be at least 1, not {samples}", "--samples")
    count = samples or check.golden_samples or check.samples
    model_path = Path(recipe.model)
    source = load_model(model_path, external_data=False)  # its inputs are what is read
    apply_input_overrides(source, recipe)
    infos = feeds.model_inputs(source)
    with quiet_polygraphy():
        if recipe.data.validation is not None:
            data_set = DataSet(recipe.data.validation, infos, check.dims, recipe.input_ranges())
            data, provenance = data_set.take(count), f"data.validation: {data_set.describe()}"
        else:
            resized = check.model_copy(update={"samples": count})
            data, described = check_feeds(recipe.model_copy(update={"check": resized}), source)
            provenance = f"check.data: {described}"
        reference = Reference(model_path, data)
    outputs = [{name: np.asarray(array) for name, array in r.items()} for r in reference.outputs]

    out = Path(os.path.normpath(path or check.golden or Path("golden") / f"{recipe.name}.npz"))
    inputs_digest = hashlib.sha256(golden_bytes(data, [])).hexdigest()

    def tensors(feed: Feed) -> list[dict[str, Any]]:
        return [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in feed.items()]

    names = list(outputs[0])
    meta = {
        "recipe": recipe.name,
        "model": {
            "file": os.path.relpath(model_path.resolve(), out.resolve().parent).replace(
                os.sep, "/"
            ),
            "sha256": model_sha256(model_path),
        },
        "reference": "original model on ONNX Runtime CPU",
        "data": {
            "source": provenance,
            "samples": len(data),
            "seed": check.seed,
            "dims": dict(sorted(check.dims.items())),
            "inputs_sha256": inputs_digest,
        },
        "inputs": tensors(data[0]),
        "outputs": tensors(outputs[0]),
        "thresholds": {
            name: check.thresholds_for(name).model_dump(exclude_none=True) for name in names
        },
        "class_scores": sorted(n for n, s in check.outputs.items() if s.class_scores),
        "top_k": {n: s.top_k for n, s in sorted(check.outputs.items()) if s.class_scores},
        "error_quantile": check.error_quantile,
        "versions": versions(),
    }
    write_golden(out, data, outputs, meta)
    return load_golden(out)


__all__: Sequence[str] = [
    "CheckResult",
    "GateSettings",
    "ShapeCheck",
    "baseline_metrics",
    "check",
    "check_compiled",
    "check_shapes",
    "format_check",
    "golden_for_recipe",
    "open_artifact",
    "run_golden",
    "verify_golden",
]


def golden_for_recipe(recipe: Recipe, source: onnx.ModelProto) -> Golden | None:
    """The recipe's golden file (``check.golden``), verified against its model before any
    work is done; None when the recipe names none."""
    if not recipe.check.golden:
        return None
    golden = load_golden(recipe.check.golden)
    what = f"the recipe's model {recipe.model}"
    verify_golden(golden, source, what, model_sha256(Path(recipe.model)), False, recipe.file)
    return golden


def check_compiled(
    golden: Golden,
    recipe: Recipe,
    final: onnx.ModelProto,
    runner: BaseRunner,
    artifact: Path,
    what_ran: str,
) -> CheckResult:
    """The check a compile runs on its artifact when its recipe names a golden file."""
    verify_golden(golden, final, "the optimized model", None, True, recipe.file)
    settings = GateSettings.from_recipe(recipe)
    return _check_golden(
        golden, runner, settings, artifact, what_ran, recipe.name, recipe.check.baseline
    )


def _check_golden(
    golden: Golden,
    runner: BaseRunner,
    settings: GateSettings,
    artifact: Path,
    what_ran: str,
    recipe_name: str | None,
    baseline: str | Path | None,
) -> CheckResult:
    """Run ``runner`` on the golden inputs, judge it by ``settings`` (and the ``baseline``
    report's metrics) and say what ran."""
    base = baseline_metrics(baseline) if baseline else None
    result, candidate = run_golden(golden, runner, settings, base)
    return CheckResult(
        result,
        Path(os.path.normpath(golden.path)),
        artifact,
        what_ran,
        recipe_name,
        Path(baseline) if baseline else None,
        [dict(o) for o in golden.outputs],
        candidate,
    )
