"""`trtopt monitor RECIPE --data DIR`: drift of a deployed model from its reference, measured on
inputs captured in production.

The compiled artifact (the recipe's output folder, or ``artifact``) and the reference (the
recipe's original model on ONNX Runtime CPU) run on every captured sample, one at a time: a
folder of ``.npz`` files (arrays by input name; a file holds one sample, or a batch along the
leading axis of inputs whose batch dim is dynamic) or a folder of images (preprocessed as the
recipe's image data source declares). Every metric of every output is measured per sample
(metrics.measure through the recipe's gate, GateSettings) and summarised over the samples as
its worst value, p50 and p99 (nearest rank, read in the metric's bad direction: the p99 of a
cosine is the value 99% of samples are at or above); a sample beyond a threshold is flagged by
its file (and its index in a batched file), and any flagged sample fails the gate (exit 1).
``max_degradation`` thresholds need a baseline report and are not applied here.

Every .npz file's arrays are checked against the model's inputs from their headers before
anything runs, so a file that does not fit is exit 2 naming it, its input and dim, before any
work; an image is checked as it is read.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
import zipfile
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import feeds, progress
from .._version import versions
from ..calibration import ImageSource
from ..calibration.files import IMAGE_SUFFIXES
from ..calibration.sources import load_image, read_npz
from ..errors import EXIT_ACCURACY, EXIT_OK, DataError, UserError
from ..feeds import Feed, InputInfo, check_names
from ..formatting import format_limit, format_metric
from ..gate import GateSettings, open_artifact
from ..html import (
    DPI,
    HISTOGRAM_BINS,
    MISSING_PLOTS,
    escape,
    has_matplotlib,
    page,
    png,
    table,
    versions_table,
)
from ..inputs import apply_input_overrides
from ..junit import junit_xml
from ..metrics import HIGHER_IS_BETTER, METRICS, THRESHOLD_FIELDS
from ..model import load_model, model_sha256
from ..quiet import quiet_polygraphy
from ..recipe import Recipe, load_recipe
from ..session import Reference

MONITOR_SCHEMA_VERSION = 1
QUANTILES = {"p50": 0.5, "p99": 0.99}
"""The quantiles of each metric's distribution a monitor reports (nearest rank)."""
MAX_LISTED = 20
"""Flagged samples the text table lists (the JSON lists all of them)."""
PLOT_COLUMNS = 3


@dataclass(frozen=True)
class Sample:
    """A captured sample: its file (relative to the data folder) and its row in a batched file
    (None: the file is one sample)."""

    file: str
    index: int | None = None

    def __str__(self) -> str:
        return self.file if self.index is None else f"{self.file}[{self.index}]"


@dataclass
class Flagged:
    """A sample beyond a threshold, and each threshold it broke (``logits: max_abs = ...``)."""

    sample: Sample
    failures: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "sample": str(self.sample),
            "file": self.sample.file,
            "index": self.sample.index,
            "failures": self.failures,
        }


@dataclass
class Distribution:
    """One metric of one output over the samples, its limit, and the samples beyond it."""

    metric: str
    limit: float | None
    values: array = field(default_factory=lambda: array("d"), repr=False)
    beyond: list[Sample] = field(default_factory=list)

    def _ranked(self) -> list[float]:
        """The values from best to worst (NaN last: it never passes)."""
        better = HIGHER_IS_BETTER[self.metric]
        return sorted(self.values, key=lambda v: (math.isnan(v), -v if better else v))

    def quantile(self, q: float) -> float:
        """The nearest-rank value ``q`` of the samples are at or better than."""
        ranked = self._ranked()
        return ranked[max(0, math.ceil(q * len(ranked)) - 1)] if ranked else math.nan

    @property
    def worst(self) -> float:
        return self.quantile(1.0)

    @property
    def passed(self) -> bool:
        return not self.beyond

    def to_json(self) -> dict[str, Any]:
        return {
            "worst": self.worst,
            **{name: self.quantile(q) for name, q in QUANTILES.items()},
            "limit": self.limit,
            "verdict": "not gated" if self.limit is None else "pass" if self.passed else "fail",
            "beyond": len(self.beyond),
        }


@dataclass
class OutputDrift:
    """Every metric of one output over the samples; ``error``: why it could not be compared
    (missing from the artifact, another shape), with the samples it happened on."""

    name: str
    metrics: dict[str, Distribution] = field(default_factory=dict)
    error: str | None = None
    error_samples: list[Sample] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and all(d.passed for d in self.metrics.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.passed else "fail",
            "metrics": {m: d.to_json() for m, d in self.metrics.items()},
            "error": self.error,
        }


@dataclass
class MonitorResult:
    """What a monitor ran and found: per output the distribution of every metric, and the
    samples beyond the thresholds."""

    recipe: str
    data: Path
    artifact: Path
    checked: str
    samples: int
    outputs: list[OutputDrift]
    flagged: list[Flagged]

    @property
    def passed(self) -> bool:
        return not self.flagged and all(o.passed for o in self.outputs)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_ACCURACY

    def failures(self) -> list[str]:
        """One line per failing output metric: its worst value and how many samples broke it."""
        lines = []
        for output in self.outputs:
            if output.error:
                count = len(output.error_samples)
                lines.append(f"{output.name}: {output.error} ({_samples(count)})")
            for metric, dist in output.metrics.items():
                if dist.beyond and dist.limit is not None:
                    lines.append(
                        f"{output.name}: {metric} worst {format_metric(dist.worst, dist.limit, 6)} "
                        f"(limit {format_limit(dist.limit)}) in {_samples(len(dist.beyond))}"
                    )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": MONITOR_SCHEMA_VERSION,
            "kind": "monitor",
            "verdict": "pass" if self.passed else "fail",
            "exit_code": self.exit_code,
            "recipe": self.recipe,
            "data": str(self.data),
            "artifact": str(self.artifact),
            "checked": self.checked,
            "samples": self.samples,
            "outputs": {o.name: o.to_json() for o in self.outputs},
            "flagged": [f.to_json() for f in self.flagged],
            "failures": self.failures(),
            "versions": versions(),
        }

    def format(self) -> str:
        """A table like `trtopt check`'s: per output and metric its worst, p50 and p99, the
        limit and the verdict; then the flagged samples."""
        flagged = f", {_samples(len(self.flagged))} beyond the thresholds" if self.flagged else ""
        lines = [
            f"{self.recipe}: {'PASS' if self.passed else 'FAIL'} "
            f"({_samples(self.samples)} from {self.data}{flagged})",
            f"  checked  {self.artifact}"
            + ("" if self.checked == "artifact" else f": {self.checked}"),
        ]
        rows = [("output", "metric", "worst", "p50", "p99", "limit", "verdict")]
        for output in self.outputs:
            if output.error:
                rows.append((output.name, "-", "-", "-", "-", "-", f"FAIL: {output.error}"))
            for metric, dist in output.metrics.items():
                shown = [format_metric(v, dist.limit, 6) for v in _stats(dist)]
                if dist.limit is None:
                    limit, verdict = "-", "not gated"
                else:
                    limit = format_limit(dist.limit)
                    verdict = "pass" if dist.passed else f"FAIL ({_samples(len(dist.beyond))})"
                rows.append((output.name, metric, *shown, limit, verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if self.flagged:
            lines.append("  flagged samples:")
            width = max(len(str(f.sample)) for f in self.flagged[:MAX_LISTED])
            for item in self.flagged[:MAX_LISTED]:
                lines.append(f"    {str(item.sample).ljust(width)}  {'; '.join(item.failures)}")
            if len(self.flagged) > MAX_LISTED:
                more = len(self.flagged) - MAX_LISTED
                lines.append(f"    ... and {more} more (--json lists all)")
        return "\n".join(lines)

    def write_junit(self, path: str | Path) -> Path:
        """JUnit XML: one test case per output and metric (a gated metric passes or fails,
        its failure naming the samples beyond the limit; an ungated one is skipped)."""
        path = Path(path)
        text = junit_xml([(f"monitor {self.recipe}", self._accuracy_section())])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self._name_samples(text), encoding="utf-8")
        except OSError as error:
            raise UserError(
                f"cannot write the JUnit file: {error.strerror or error}", str(path)
            ) from None
        return path

    def _accuracy_section(self) -> dict[str, Any]:
        """The worst value of each metric, shaped as a check's ``accuracy`` section."""
        outputs = {}
        for output in self.outputs:
            checks = [
                {"metric": m, "value": d.worst, "limit": d.limit, "passed": d.passed}
                for m, d in output.metrics.items()
                if d.limit is not None
            ]
            worst = {m: d.worst for m, d in output.metrics.items()}
            outputs[output.name] = {"metrics": worst, "checks": checks, "error": output.error}
        return {"outputs": outputs}

    def _name_samples(self, text: str) -> str:
        """``text`` (junit_xml's) with each failure naming the samples beyond its limit."""
        root = ET.fromstring(text)
        beyond = {
            (o.name, m): d.beyond for o in self.outputs for m, d in o.metrics.items() if d.beyond
        }
        errors = {o.name: o.error_samples for o in self.outputs if o.error}
        prefix = f"trtopt.monitor.{self.recipe}."  # junit_xml's classname: suite, then output
        for case in root.iter("testcase"):
            output = case.get("classname", "").removeprefix(prefix)
            samples = beyond.get((output, case.get("name", "")))
            if case.get("name") == "output":
                samples = errors.get(output)
            failure = case.find("failure")
            if failure is not None and samples:
                failure.text = f"{failure.text}\n{_samples(len(samples))}: " + ", ".join(
                    str(s) for s in samples
                )
        ET.indent(root)
        body = ET.tostring(root, encoding="unicode")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"

    def write_html(self, path: str | Path) -> Path:
        """An HTML page: the verdict, the distribution table, the flagged samples and, with
        matplotlib, a histogram of every metric over the samples with its limit."""
        path = Path(path)
        path.write_text(render_html(self), encoding="utf-8")
        return path


def _samples(count: int) -> str:
    return f"{count} sample{'' if count == 1 else 's'}"


def _stats(dist: Distribution) -> list[float]:
    return [dist.worst, *(dist.quantile(q) for q in QUANTILES.values())]


# -- the captured samples ---------------------------------------------------------------------


@dataclass
class _Captured:
    """The captured data: .npz files (each checked from its headers) or image files."""

    root: Path
    files: list[Path]
    rows: list[int | None]
    """Per .npz file: how many samples it holds (None: the whole file is one sample)."""
    images: ImageSource | None = None

    @property
    def total(self) -> int:
        return sum(1 if r is None else r for r in self.rows) if self.rows else len(self.files)

    def name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if path != self.root else path.name

    def samples(self, inputs: Sequence[InputInfo]) -> Iterator[tuple[Sample, Feed]]:
        """Every sample, one at a time: a file is read when its turn comes."""
        if self.images is not None:
            name = self.images.input or inputs[0].name
            for path in self.files:
                feed = {name: load_image(path, self.images)[None]}
                _fit({n: (a.dtype, a.shape) for n, a in feed.items()}, inputs, str(path))
                feeds.validate_feeds([feed], inputs, str(path))
                yield Sample(self.name(path)), feed
            return
        for path, rows in zip(self.files, self.rows):
            feed = read_npz(path)
            feeds.validate_feeds([feed], inputs, str(path))  # NaN and infinities
            if rows is None:
                yield Sample(self.name(path)), feed
                continue
            for index in range(rows):
                row = {n: a[index : index + 1] for n, a in feed.items()}
                yield Sample(self.name(path), index if rows > 1 else None), row


def _captured(data: Path, inputs: Sequence[InputInfo], recipe: Recipe) -> _Captured:
    """The .npz files (or else images) under ``data`` (a folder, or one .npz file), each .npz
    file checked against ``inputs`` from its array headers."""
    if data.is_file() and data.suffix == ".npz":
        root, files = data, [data]
    elif data.is_dir():
        root, files = data, sorted(p for p in data.rglob("*.npz") if p.is_file())
    else:
        raise DataError("no such folder of captured inputs (.npz files or images)", str(data))
    if files:
        return _Captured(root, files, [_fit(_npz_headers(p), inputs, str(p)) for p in files])
    images = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(
            f"no captured inputs: neither .npz files nor images ({', '.join(IMAGE_SUFFIXES)})",
            str(data),
        )
    spec = _image_spec(recipe, inputs, data)
    return _Captured(data, images, [], spec)


def _image_spec(recipe: Recipe, inputs: Sequence[InputInfo], data: Path) -> ImageSource:
    """The preprocessing of the recipe's first image source (data.validation,
    data.calibration, check.data), else the default one for the model's only input."""
    for source in (recipe.data.validation, recipe.data.calibration, recipe.check.data):
        if source is not None and source.images is not None:
            return source.images.model_copy(update={"folder": str(data)})
    if len(inputs) != 1:
        raise DataError(
            f"images feed one input and the model takes {[i.name for i in inputs]}: declare "
            "an images data source (data.validation.images, with its input) in the recipe",
            str(data),
        )
    return ImageSource(folder=str(data), input=inputs[0].name)


def _npz_headers(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Each array of an .npz file: its dtype and shape, read from its header only."""
    found = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as stream:
                    version = np.lib.format.read_magic(stream)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(stream)
                found[info.filename.removesuffix(".npy")] = (np.dtype(dtype), tuple(shape))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"not a readable .npz file: {error}", str(path)) from None
    return found


def _fit(
    arrays: Mapping[str, tuple[np.dtype, tuple[int, ...]]], inputs: Sequence[InputInfo], where: str
) -> int | None:
    """Check a file's arrays (dtype, shape) against the model's inputs, naming the input and
    dim that do not fit; return its sample count along the leading axis, or None when an
    input's leading dim is fixed (the file is one sample)."""
    expected = {info.name: info for info in inputs}
    check_names(arrays, inputs, where)
    named: dict[str, tuple[str, int]] = {}
    for name, (dtype, shape) in arrays.items():
        info = expected[name]
        declared = ["?" if d is None else d for d in info.shape]
        if dtype != info.dtype:
            raise DataError(
                f"input '{name}' has dtype {dtype}, the model expects {info.dtype}", where
            )
        if len(shape) != len(info.shape):
            raise DataError(
                f"input '{name}' has {len(shape)} dims {list(shape)}, the model expects "
                f"{len(info.shape)}: {declared}",
                where,
            )
        for index, (dim, size) in enumerate(zip(info.shape, shape)):
            if isinstance(dim, int) and dim != size:
                raise DataError(
                    f"input '{name}' dim {index} is {size}, the model expects {dim} (shape "
                    f"{list(shape)}, the model takes {declared})",
                    where,
                )
            if isinstance(dim, str):
                other, size_there = named.setdefault(dim, (name, size))
                if size_there != size:
                    raise DataError(
                        f"input '{name}' dim {index} ('{dim}') is {size}, but {size_there} in "
                        f"input '{other}'",
                        where,
                    )
        if shape and shape[0] == 0:
            raise DataError(f"input '{name}' has no samples (shape {list(shape)})", where)
    if any(not info.shape or isinstance(info.shape[0], int) for info in inputs):
        return None
    rows = {name: shape[0] for name, (_, shape) in arrays.items()}
    if len(set(rows.values())) > 1:
        raise DataError(f"inputs differ in their leading (sample) axis: {rows}", where)
    return next(iter(rows.values()))


# -- the monitor ------------------------------------------------------------------------------


def monitor(
    recipe: str | Path | Recipe,
    data: str | Path,
    artifact: str | Path | None = None,
    overrides: list[str] | None = None,
) -> MonitorResult:
    """Run the compiled artifact and the reference on inputs captured in production and judge
    every sample by the recipe's thresholds.

    ``recipe``: the recipe (its thresholds, output kinds, model and output folder);
    ``data``: a folder of .npz files (arrays by input name, a sample or a batch per file) or of
    images, or one .npz file; ``artifact``: the artifact file or output folder (default: the
    recipe's output folder); ``overrides``: ``--set`` key=value strings. Raises UserError/
    DataError (exit 2) when the artifact is missing or a file does not fit the model's inputs;
    samples beyond a threshold are a result (``exit_code`` 1).
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    model_path = Path(recipe.model)
    source = load_model(model_path, external_data=False)
    apply_input_overrides(source, recipe)  # the declared shapes are what a sample must fit
    inputs = feeds.model_inputs(source)
    path, runner, onnx_path, what_ran = open_artifact(recipe, artifact)
    _same_model(path, onnx_path, model_path)
    captured = _captured(Path(data), inputs, recipe)
    settings = GateSettings.from_recipe(recipe)
    outputs: dict[str, OutputDrift] = {}
    flagged: list[Flagged] = []
    count = 0
    with quiet_polygraphy(), progress.bar("monitor", captured.total, "sample") as bar:
        samples = captured.samples(inputs)
        first = next(samples, None)
        if first is None:
            raise DataError("the captured data holds no samples", str(data))
        reference = Reference(model_path, [first[1]])
        with reference.runner, runner:
            for sample, feed in _chain(first, samples):
                expected = reference.outputs[0] if count == 0 else _infer(reference.runner, feed)
                result = settings.compare([expected], [_infer(runner, feed)])
                failures = _record(outputs, result, sample, settings)
                if failures:
                    flagged.append(Flagged(sample, failures))
                count += 1
                bar.update(1)
    return MonitorResult(
        recipe.name, Path(data), path, what_ran, count, list(outputs.values()), flagged
    )


def _chain(first: tuple[Sample, Feed], rest: Iterator[tuple[Sample, Feed]]) -> Iterator:
    yield first
    yield from rest


def _infer(runner: Any, feed: Feed) -> Feed:
    """One run; the outputs copied (a runner may reuse its buffers)."""
    return {name: np.array(value) for name, value in runner.infer(feed).items()}


def _record(
    outputs: dict[str, OutputDrift], result: Any, sample: Sample, settings: GateSettings
) -> list[str]:
    """Add one sample's metrics (an AccuracyResult) to the distributions; return the
    thresholds it broke."""
    for output in result.outputs:
        drift = outputs.setdefault(output.name, OutputDrift(output.name))
        if output.error:
            drift.error = drift.error or output.error
            drift.error_samples.append(sample)
            continue
        thresholds = settings.thresholds_for(output.name)
        failed = {c.metric for c in output.checks if not c.passed}
        for metric in METRICS:
            value = output.metrics.get(metric)
            if value is None:
                continue
            limit = getattr(thresholds, THRESHOLD_FIELDS[metric])
            dist = drift.metrics.setdefault(metric, Distribution(metric, limit))
            dist.values.append(float(value))
            if metric in failed:
                dist.beyond.append(sample)
    return result.failures()


def _same_model(artifact: Path, onnx_path: Path, model_path: Path) -> None:
    """Refuse an artifact whose report.json says it was compiled from another model than the
    recipe's: its outputs would drift from a reference it was never made from."""
    for report in (artifact.with_name("report.json"), onnx_path.with_name("report.json")):
        try:
            recorded = json.loads(report.read_text())["model"]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        actual = model_sha256(model_path)
        if recorded != actual:
            raise UserError(
                f"compiled from another model (sha256 {str(recorded)[:12]}..., the recipe's "
                f"model {model_path} has {actual[:12]}...): compile the recipe again",
                str(artifact),
            )
        return


# -- the page ---------------------------------------------------------------------------------


def render_html(result: MonitorResult) -> str:
    """The monitor's page: verdict, distributions, flagged samples, plots (with matplotlib),
    versions; self-contained (plots are embedded PNG images)."""
    verdict = "pass" if result.passed else "fail"
    summary = [
        f"{_samples(result.samples)} from <code>{escape(result.data)}</code>, "
        f"{len(result.flagged)} beyond the thresholds",
        f"checked <code>{escape(result.artifact)}</code> ({escape(result.checked)}) against the "
        "original model on ONNX Runtime CPU",
    ]
    items = "".join(f"<li>{escape(line)}</li>" for line in result.failures())
    parts = [
        f'<div class="verdict {verdict}" id="verdict"><span class="badge">{verdict.upper()}'
        f"</span> &nbsp;<b>trtopt monitor: {escape(result.recipe)}</b>"
        + "".join(f"<div>{line}</div>" for line in summary)
        + (f'<ul class="failures">{items}</ul>' if items else "")
        + "</div>",
        "<h2>Distribution over the samples</h2>",
        _distribution_table(result),
    ]
    if result.flagged:
        parts.append("<h2>Samples beyond the thresholds</h2>")
        rows = [
            [
                f"<td><code>{escape(f.sample)}</code></td>",
                f"<td>{escape('; '.join(f.failures))}</td>",
            ]
            for f in result.flagged
        ]
        parts.append(table(["sample", "thresholds broken"], rows))
    parts.append("<h2>Distributions</h2>")
    if has_matplotlib():
        parts += [_output_plot(o) for o in result.outputs if o.metrics]
    else:
        parts.append(f'<p class="note">{MISSING_PLOTS}</p>')
    parts += ["<h2>Versions</h2>", versions_table(versions())]
    return page(f"trtopt monitor {result.recipe}: {verdict.upper()}", parts)


def _distribution_table(result: MonitorResult) -> str:
    rows = []
    for output in result.outputs:
        if output.error:
            cells = [f"<td>{escape(output.name)}</td>", *["<td>-</td>"] * 6]
            rows.append([*cells, f'<td class="bad">FAIL: {escape(output.error)}</td>'])
        for metric, dist in output.metrics.items():
            values = [
                f'<td class="num">{escape(format_metric(v, dist.limit, 6))}</td>'
                for v in _stats(dist)
            ]
            if dist.limit is None:
                limit, verdict = "-", '<td class="dim">not gated</td>'
            elif dist.passed:
                limit, verdict = escape(format_limit(dist.limit)), '<td class="ok">pass</td>'
            else:
                limit, verdict = escape(format_limit(dist.limit)), '<td class="bad">FAIL</td>'
            rows.append(
                [
                    f"<td>{escape(output.name)}</td>",
                    f"<td>{escape(metric)}</td>",
                    *values,
                    f'<td class="num">{limit}</td>',
                    f'<td class="num">{len(dist.beyond)}</td>',
                    verdict,
                ]
            )
    header = ["output", "metric", "worst", "p50", "p99", "limit", "samples beyond", "verdict"]
    return table(header, rows)


def _output_plot(output: OutputDrift) -> str:
    """A histogram of each metric of ``output`` over the samples, its limit in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = list(output.metrics.values())
    rows = math.ceil(len(metrics) / PLOT_COLUMNS)
    figure = Figure(figsize=(10, 2.6 * rows), dpi=DPI)
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.9, wspace=0.25, hspace=0.6)
    FigureCanvasAgg(figure)
    for position, dist in enumerate(metrics, start=1):
        axes = figure.add_subplot(rows, PLOT_COLUMNS, position)
        values = np.asarray(dist.values, dtype=np.float64)
        values = values[np.isfinite(values)]
        logged = values.size and values.min() > 0 and values.max() > 100 * values.min()
        bins: Any = HISTOGRAM_BINS
        if logged:
            bins = np.geomspace(values.min(), values.max(), HISTOGRAM_BINS + 1)
            axes.set_xscale("log")
        axes.hist(values, bins=bins, color="#0969da")
        if dist.limit is not None:
            axes.axvline(dist.limit, color="#cf222e", linewidth=1.5, label="limit")
            axes.legend(loc="upper right", fontsize="small")
        axes.xaxis.set_major_locator(MaxNLocator(4))
        axes.tick_params(labelsize=8)
        axes.set_title(f"{output.name} {dist.metric} ({len(dist.beyond)} beyond)", fontsize=10)
        axes.set_ylabel("samples")
    return png(figure, f"{output.name}: each metric's distribution over the samples")


__all__ = [
    "MONITOR_SCHEMA_VERSION",
    "Distribution",
    "Flagged",
    "MonitorResult",
    "OutputDrift",
    "Sample",
    "monitor",
    "render_html",
]
