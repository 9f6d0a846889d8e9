"""report.html: one self-contained page people can read at a glance.

The verdict comes first, then accuracy per output (error histogram, reference-vs-artifact
scatter), passes (node counts and time), latency, the layers kept in higher precision and the
versions. Plots are static PNG images embedded as base64 (no script, no network); they are
drawn with matplotlib (``pip install 'trtopt[report]'``), and without it the page keeps its
tables and says how to get the plots.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import io
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .formatting import (
    coverage_type,
    describe_coverage,
    format_limit,
    format_metric,
    format_value,
    latency_where,
)
from .lazy import lazy_import

if TYPE_CHECKING:
    import numpy as np
else:  # a compile served from the cache writes its page from plots drawn before
    np = lazy_import("numpy", globals())

SCATTER_POINTS = 4000
"""Most points a scatter plot draws (an even stride through the values): enough to see the
shape of the error, few enough to keep the page small."""
HISTOGRAM_BINS = 60
LOG_COUNTS_ABOVE = 50
"""Error histograms switch to a log count axis when a bin holds more values than this."""
DPI = 80
MISSING_PLOTS = "Plots need matplotlib: pip install 'trtopt[report]'."

Pairs = dict[str, tuple["np.ndarray", "np.ndarray"]]
Drawn = dict[str, str]
"""Plots drawn for a page, by name (``output:<name>``, ``passes``, ``latency``): embedded
``<img>`` markup, which a cached compile keeps so that a hit's page needs no matplotlib."""

PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:72rem;
padding:1rem 1.5rem;color:#1d2125;background:#fff;line-height:1.4}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.6rem 0 .5rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}h3{font-size:1rem;margin:1rem 0 .3rem}
.verdict{padding:.8rem 1.2rem;border-radius:.4rem;margin:.5rem 0 1rem}
.pass{background:#dafbe1;border:2px solid #1a7f37}.fail{background:#ffebe9;border:2px solid #cf222e}
.incomplete{background:#fff8c5;border:2px solid #9a6700}
.badge{font-weight:700;font-size:1.6rem;letter-spacing:.05em}
table{border-collapse:collapse;margin:.4rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.ok{color:#1a7f37}td.bad{color:#cf222e;font-weight:700}td.dim{color:#6e7781}
img{max-width:100%;height:auto;display:block;margin:.3rem 0}
ul.failures{margin:.3rem 0 0 1.2rem;padding:0;color:#cf222e}
.note{color:#6e7781;font-size:.9rem}code{font-size:.85rem}
"""


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def output_pairs(
    reference: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]]
) -> Pairs:
    """Per output, the reference's and the candidate's values over every sample, flattened
    (outputs whose shapes differ are left out: there is nothing to pair)."""
    pairs: Pairs = {}
    for name in reference[0] if reference else []:
        refs, cands = [], []
        for r, c in zip(reference, candidate):
            if name not in c or np.shape(r[name]) != np.shape(c[name]):
                break
            refs.append(np.asarray(r[name], dtype=np.float64).ravel())
            cands.append(np.asarray(c[name], dtype=np.float64).ravel())
        else:
            if refs:
                pairs[name] = (np.concatenate(refs), np.concatenate(cands))
    return pairs


# -- plots ------------------------------------------------------------------------------------


def new_figure(width: float, height: float, left: float = 0.07) -> Any:
    """A matplotlib figure of the report's size and margins."""
    # The object API with an Agg canvas: no pyplot, so no global backend switch in the caller.
    # Fixed margins rather than a layout engine, which doubles the drawing time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    figure.subplots_adjust(left=left, right=0.98, bottom=0.5 / height, top=1 - 0.35 / height)
    figure.subplots_adjust(wspace=0.25)
    FigureCanvasAgg(figure)
    return figure


def png(figure: Any, alt: str) -> str:
    """A matplotlib figure as an embedded PNG ``<img>`` (the page stays one file)."""
    buffer = io.BytesIO()
    # No Software/date metadata: the same report gives the same bytes.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def error_histogram(axes: Any, error: np.ndarray) -> None:
    """Draw the histogram of absolute errors on ``axes``: a log count axis when a bin is
    crowded (the tail of large errors stays visible), counts written as plain integers
    (1,000,000), never as fractions of an offset such as "1e6"."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    counts, _, _ = axes.hist(error, bins=HISTOGRAM_BINS, color="#0969da")
    if counts.max(initial=0) > LOG_COUNTS_ABOVE:
        axes.set_yscale("log")
        axes.set_ylim(bottom=0.5)  # from 1 up: at least two labelled decades
        axes.yaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(FuncFormatter(_count))
    axes.set_xlabel("absolute error")
    axes.set_ylabel("values")


def _count(value: float, _position: object = None) -> str:
    return f"{value:,.0f}" if value >= 1 or value == 0 else f"{value:g}"


def _output_plot(name: str, reference: np.ndarray, candidate: np.ndarray) -> str:
    finite = np.isfinite(reference) & np.isfinite(candidate)
    reference, candidate = reference[finite], candidate[finite]
    error = np.abs(candidate - reference)
    figure = new_figure(10, 3.4, left=0.11)
    left, right = figure.subplots(1, 2)
    error_histogram(left, error)
    left.set_title(f"{name}: |artifact - reference| ({error.size:,} values)")
    step = max(1, reference.size // SCATTER_POINTS)
    right.scatter(reference[::step], candidate[::step], s=4, alpha=0.5, color="#0969da")
    if reference.size:
        low = float(min(reference.min(), candidate.min()))
        high = float(max(reference.max(), candidate.max()))
        right.plot([low, high], [low, high], color="#cf222e", linewidth=1, label="y = x")
        right.legend(loc="upper left")
    right.set_xlabel("reference")
    right.set_ylabel("artifact")
    right.set_title(f"{name}: artifact vs reference")
    return png(figure, f"{name}: error histogram and reference-vs-artifact scatter")


def _passes_plot(passes: Sequence[Mapping[str, Any]]) -> str:
    labels = [f"{i + 1}. {p['name']}" for i, p in enumerate(passes)]
    rows = np.arange(len(passes))
    widest = max(len(label) for label in labels)
    figure = new_figure(10, 0.45 * len(passes) + 1.4, left=min(0.4, 0.012 * widest + 0.03))
    nodes, seconds = figure.subplots(1, 2, sharey=True)
    before, after = [p["nodes_before"] for p in passes], [p["nodes_after"] for p in passes]
    nodes.barh(rows - 0.2, before, 0.4, color="#8c959f")
    nodes.barh(rows + 0.2, after, 0.4, color="#0969da")
    nodes.set_yticks(rows, labels)
    nodes.invert_yaxis()
    nodes.set_xlabel("nodes")
    nodes.set_title("nodes per pass (grey: before, blue: after)")
    seconds.barh(rows, [p["seconds"] for p in passes], 0.6, color="#bf8700")
    seconds.set_xlabel("seconds")
    seconds.set_title("time per pass")
    return png(figure, "node count and time per pass")


def _latency_plot(latency: Mapping[str, Any]) -> str:
    who = [w for w in ("reference", "artifact") if isinstance(latency.get(w), dict)]
    figure = new_figure(10, 2.8, left=0.1)
    axes = figure.subplots()
    samples = [latency[w].get("samples_ms") for w in who]
    if all(samples):
        axes.boxplot(samples, orientation="horizontal", tick_labels=who, showfliers=True)
    else:  # a report without the raw times: medians and p90 only
        rows = np.arange(len(who))
        axes.barh(rows - 0.2, [latency[w]["median_ms"] for w in who], 0.4, label="median")
        axes.barh(rows + 0.2, [latency[w]["p90_ms"] for w in who], 0.4, label="p90")
        axes.set_yticks(rows, who)
        axes.legend()
    axes.set_xlabel("milliseconds per inference")
    axes.set_title(f"latency over {latency.get('runs', '?')} runs")
    return png(figure, "latency distribution")


# -- page ------------------------------------------------------------------------------------


def escape(value: Any) -> str:
    """Any value as HTML text."""
    return html.escape(str(value))


def _num(value: Any) -> str:
    return escape(format_value(value, 6))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table: ``header`` as text, each row's cells as ready ``<td>`` markup."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _accuracy_table(acc: Mapping[str, Any]) -> str:
    rows = []
    for name, output in acc.get("outputs", {}).items():
        if output.get("error"):
            cells = [f"<td>{escape(name)}</td>", "<td>-</td>", "<td>-</td>", "<td>-</td>"]
            rows.append([*cells, f'<td class="bad">FAIL: {escape(output["error"])}</td>'])
            continue
        gated = {c["metric"]: c for c in output.get("checks", [])}
        items = [(m, v, gated.pop(m, None)) for m, v in output.get("metrics", {}).items()]
        items += [(m, c["value"], c) for m, c in gated.items()]
        for metric, value, check in items:
            if value is None:
                continue
            if check is None:
                limit, verdict = "-", '<td class="dim">not gated</td>'
            else:
                limit = escape(format_limit(check["limit"]))
                if check.get("baseline") is not None:
                    limit += f" (baseline {_num(check['baseline'])})"
                verdict = (
                    '<td class="ok">pass</td>' if check["passed"] else '<td class="bad">FAIL</td>'
                )
            rows.append(
                [
                    f"<td>{escape(name)}</td>",
                    f"<td>{escape(metric)}</td>",
                    '<td class="num">'
                    + escape(format_metric(value, check and check["limit"], 6))
                    + "</td>",
                    f'<td class="num">{limit}</td>',
                    verdict,
                ]
            )
    return table(["output", "metric", "value", "limit", "verdict"], rows)


def _verdict_block(title: str, verdict: str, lines: Sequence[str], failures: Sequence[str]) -> str:
    kind = verdict if verdict in ("pass", "fail", "incomplete") else "fail"
    items = "".join(f"<li>{escape(f)}</li>" for f in failures)
    summary = "".join(f"<div>{line}</div>" for line in lines)
    return (
        f'<div class="verdict {kind}" id="verdict"><span class="badge">{escape(verdict.upper())}'
        f"</span> &nbsp;<b>{escape(title)}</b>{summary}"
        + (f'<ul class="failures">{items}</ul>' if items else "")
        + "</div>"
    )


def render(
    report: Mapping[str, Any], pairs: Pairs | None = None, drawn: Drawn | None = None
) -> str:
    """The page for a compile report (report.json) or a check result (`trtopt check --json`);
    ``pairs`` (see output_pairs) adds the per-output plots. ``drawn`` holds plots drawn
    before, by name (a cached compile's: the same data draws the same plot), and gains the
    ones drawn now."""
    drawn = {} if drawn is None else drawn
    plots = bool(drawn) or has_matplotlib()

    def plot(key: str, draw: Callable[[], str]) -> str:
        if key not in drawn and has_matplotlib():
            drawn[key] = draw()
        return drawn.get(key, "")

    is_check = report.get("kind") == "check"
    name = report.get("recipe") if is_check else (report.get("recipe") or {}).get("name")
    name = name or "check"
    acc = report.get("accuracy") or {}
    golden = None if is_check else report.get("golden")
    failures = list(acc.get("failures") or [])  # a compile's include its golden check's
    lines = []
    if is_check:
        samples = acc.get("samples")
        lines.append(f"golden file <code>{escape(report['golden'])}</code>, {samples} samples")
        lines.append(
            f"checked <code>{escape(report['artifact'])}</code> ({escape(report['checked'])})"
        )
    else:
        model, build = report["model"], report["build"]
        lines.append(
            f"model <code>{escape(model['path'])}</code> ({model['nodes']} nodes) &rarr; "
            f"{escape(build['backend'])} artifact <code>{escape(build['artifact'])}</code> "
            f"({build['size_bytes']:,} bytes)"
        )
        lines.append(f"accuracy on {acc.get('samples')} samples ({escape(acc.get('data'))})")
        if acc.get("artifact_not_run"):
            lines.append(escape(acc["artifact_not_run"]))
        if golden:
            lines.append(
                f"golden check: <b>{escape(golden['verdict'])}</b> on "
                f"<code>{escape(golden['golden'])}</code>"
            )
    parts = [
        _verdict_block(
            f"trtopt {'check' if is_check else 'compile'}: {name}",
            report.get("verdict", "fail"),
            lines,
            failures,
        ),
    ]

    parts.append("<h2>Accuracy</h2>")
    if not is_check and acc:
        parts.append(
            f'<p class="note">Reference: the original model on ONNX Runtime CPU; '
            f"data: {escape(acc.get('data'))}.</p>"
        )
    parts.append(_accuracy_table(acc))
    if golden:
        parts.append(f"<h3>Golden check ({escape(golden['golden'])})</h3>")
        parts.append(_accuracy_table(golden["accuracy"]))
    for shape_check in [] if is_check else acc.get("profiles") or []:
        shapes = ", ".join(f"{k} {v}" for k, v in shape_check["shapes"].items())
        parts.append(
            f"<h3>At {escape(shape_check['profile'])} ({escape(shapes)}): "
            f"{escape(shape_check['verdict'])}</h3>"
        )
        parts.append(_accuracy_table(shape_check))
    # The outputs plotted: those paired now, else those a cached compile drew.
    pairs = pairs or {}
    outputs = list(pairs) or [k.partition(":")[2] for k in drawn if k.startswith("output:")]
    if outputs:
        parts.append("<h3>Per output</h3>")
        if plots:
            parts += [
                plot(f"output:{n}", partial(_output_plot, n, *pairs.get(n, ()))) for n in outputs
            ]
        else:
            parts.append(f'<p class="note">{MISSING_PLOTS}</p>')

    passes = [] if is_check else report.get("passes") or []
    if passes:
        parts.append("<h2>Passes</h2>")
        if plots:
            parts.append(plot("passes", partial(_passes_plot, passes)))
        rows = [
            [
                f"<td>{i + 1}. {escape(p['name'])}</td>",
                f'<td class="num">{p["nodes_before"]}</td>',
                f'<td class="num">{p["nodes_after"]}</td>',
                f'<td class="num">{p["seconds"]:.3f}</td>',
                "<td>"
                + (
                    f"<b>rolled back</b>: {escape(p['rolled_back'])}"
                    if p.get("rolled_back")
                    else escape(", ".join(f"{op} {n:+d}" for op, n in p["op_delta"].items()))
                    or "no-op"
                )
                + "</td>",
            ]
            for i, p in enumerate(passes)
        ]
        parts.append(table(["pass", "nodes before", "nodes after", "seconds", "changes"], rows))
        if report.get("first_diverging_pass"):
            parts.append(
                f"<p><b>First pass whose outputs diverge: {escape(report['first_diverging_pass'])}"
                "</b></p>"
            )

    latency = None if is_check else report.get("latency")
    if latency:
        parts.append("<h2>Latency</h2>")
        parts.append(
            f'<p class="note">On {escape(latency_where(report))}; '
            "reference and artifact measured in alternating rounds.</p>"
        )
        if plots:
            parts.append(plot("latency", partial(_latency_plot, latency)))
        rows = [
            [
                f"<td>{w}</td>",
                f'<td class="num">{latency[w]["median_ms"]:.3f}</td>',
                f'<td class="num">{latency[w]["p90_ms"]:.3f}</td>',
            ]
            for w in ("reference", "artifact")
            if isinstance(latency.get(w), dict)
        ]
        parts.append(table(["model", "median ms", "p90 ms"], rows))

    coverage = None if is_check else report.get("quantized_coverage")
    if coverage:
        heading = f"{coverage_type(coverage)} coverage"
        parts.append(f"<h2>{escape(heading)}</h2><p>{escape(describe_coverage(coverage))}</p>")
    kept = [] if is_check else report.get("kept_in_higher_precision") or []
    if kept:
        parts.append("<h2>Kept in higher precision</h2>")
        rows = [
            [
                f"<td>{escape(k.get('node'))}</td>",
                f"<td>{escape(k.get('pass'))}</td>",
                f"<td>{escape(k.get('reason', ''))}</td>",
            ]
            for k in kept
        ]
        parts.append(table(["node", "pass", "why"], rows))

    warnings = [] if is_check else report.get("warnings") or []
    if warnings:
        parts.append(
            "<h2>Warnings</h2><ul>" + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>"
        )
    versions = report.get("versions") or {}
    if versions:
        parts += ["<h2>Versions</h2>", versions_table(versions)]
    if not plots:
        parts.append(f'<p class="note">{MISSING_PLOTS}</p>')

    return page(f"trtopt {name}: {str(report.get('verdict', '')).upper()}", parts)


def page(title: str, parts: Sequence[str]) -> str:
    """A whole self-contained page: ``parts`` (markup) under ``title``, in the report's look."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{PAGE_CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def versions_table(versions: Mapping[str, str | None]) -> str:
    """Each package and its version ('not installed' for None), as a table."""
    rows = [
        [f"<td>{escape(k)}</td>", f"<td>{escape(v if v is not None else 'not installed')}</td>"]
        for k, v in versions.items()
    ]
    return table(["package", "version"], rows)


def write_html(
    report: Mapping[str, Any],
    path: str | Path,
    pairs: Pairs | None = None,
    drawn: Drawn | None = None,
) -> Path:
    """Write the page for ``report`` to ``path`` (``pairs``, ``drawn``: as :func:`render`)."""
    path = Path(path)
    path.write_text(render(report, pairs, drawn), encoding="utf-8")
    return path
