"""Every accuracy metric: its name, which way is better, the threshold field that gates it,
its defaults, and the one implementation that the check and the automatic search both use.

Polygraphy's compare functions compute the error statistics (max, mean and quantile of the
absolute error; the relative error is Polygraphy's, ``|reference - candidate| / |candidate|``),
cosine similarity and PSNR per sample; SNR is Polygraphy's definition computed here
(``snr_db``), without its per-comparison logging, because the local error measure takes it
of every layer on every sample; trtopt adds top-1 and top-k agreement for class scores with
numpy (Polygraphy has no agreement *rate*) and takes the worst sample.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from .lazy import lazy_import

if TYPE_CHECKING:  # the recipe reads this module's names; feeds.py loads ONNX and Polygraphy
    import numpy as np

    from .feeds import Feed
else:
    np = lazy_import("numpy", globals())  # and NumPy only when measuring

DEFAULT_QUANTILE = 0.99
"""The error quantile ``quantile_abs`` measures unless the recipe says otherwise (p99)."""
DEFAULT_TOP_K = 5
"""k of the top-k agreement measured for class-score outputs unless the recipe says otherwise."""
DB_CEILING = 200.0
"""SNR/PSNR of identical outputs is infinite; it is reported as this many dB so that every
report stays standard JSON (float32 round-off alone gives well under 200 dB)."""

THRESHOLD_FIELDS: dict[str, str] = {
    "max_abs": "max_abs",
    "mean_abs": "mean_abs",
    "max_rel": "max_rel",
    "quantile_abs": "quantile_abs",
    "cosine": "min_cosine",
    "snr_db": "min_snr_db",
    "psnr_db": "min_psnr_db",
    "top1": "min_top1",
    "topk": "min_topk",
}
"""Each metric, in report order, and the ``Thresholds`` field that gates it."""
METRICS: tuple[str, ...] = tuple(THRESHOLD_FIELDS)
"""Every metric measured per output, in report order."""
HIGHER_IS_BETTER: dict[str, bool] = {
    metric: field.startswith("min_") for metric, field in THRESHOLD_FIELDS.items()
}
CLASS_SCORE_METRICS = ("top1", "topk")
"""Measured only for outputs that hold class scores along their last axis."""

Measured = dict[str, float | None]
"""One output's metrics over all samples (None: not measured for this output)."""


def measure(
    reference: Sequence[Feed],
    candidate: Sequence[Feed],
    *,
    quantile: float = DEFAULT_QUANTILE,
    class_scores: Collection[str] = (),
    top_k: Mapping[str, int] | None = None,
) -> dict[str, Measured | str]:
    """Every metric of every reference output over the samples (the worst sample counts), or
    why it cannot be measured (missing from the candidate, another shape).

    ``quantile``: the error quantile ``quantile_abs`` measures; ``class_scores``: the outputs
    top-1/top-k agreement is measured for; ``top_k``: their k (default DEFAULT_TOP_K)."""
    # Imported when measuring: a recipe needs the metric names, not Polygraphy.
    from polygraphy.comparator import (
        Comparator,
        CosineSimilarityCompareFunc,
        IterationResult,
        PsnrCompareFunc,
        RunResults,
        SimpleCompareFunc,
    )

    from .quiet import quiet_polygraphy

    ref = [IterationResult(_numeric(r), runner_name="reference") for r in reference]
    got = [IterationResult(_numeric(c), runner_name="candidate") for c in candidate]
    present = [n for n in ref[0] if all(n in c for c in got)]
    measured: dict[str, Measured | str] = {
        name: "missing from the artifact's outputs" for name in ref[0] if name not in present
    }
    # Polygraphy's "quantile" check with infinite tolerances records every statistic (max, mean
    # and the quantile) without judging; PSNR with a -inf threshold likewise.
    run_results = RunResults(
        [
            ("reference", [IterationResult({n: r[n] for n in present}) for r in ref]),
            ("candidate", [IterationResult({n: c[n] for n in present}) for c in got]),
        ]
    )
    with quiet_polygraphy():  # its comparisons log every statistic; the caller reports
        compared = Comparator.compare_accuracy(
            run_results,
            compare_func=[
                SimpleCompareFunc(
                    check_error_stat="quantile",
                    atol=math.inf,
                    rtol=math.inf,
                    error_quantile=quantile,
                ),
                CosineSimilarityCompareFunc(),
                PsnrCompareFunc(psnr_threshold=-math.inf),
            ],
        )
    stats, cosines, psnrs = (next(iter(per_pair.values())) for per_pair in compared)
    for name in present:
        per_sample = [s[name] for s in stats]
        shapes = {(r[name].shape, c[name].shape) for r, c in zip(ref, got)}
        mismatched = [(a, b) for a, b in shapes if a != b]
        if mismatched or not all(hasattr(s, "max_absdiff") for s in per_sample):
            a, b = mismatched[0] if mismatched else next(iter(shapes))
            measured[name] = f"shape {list(b)} != reference {list(a)}"
            continue
        scores = name in class_scores
        k = (top_k or {}).get(name, DEFAULT_TOP_K)
        measured[name] = {
            "max_abs": max(s.max_absdiff for s in per_sample),
            "mean_abs": float(np.mean([s.mean_absdiff for s in per_sample])),
            "max_rel": max(s.max_reldiff for s in per_sample),
            "quantile_abs": max(s.quantile_absdiff for s in per_sample),
            "cosine": min(c[name].cosine_similarity for c in cosines),
            "snr_db": _db(min(snr_db(r[name], c[name]) for r, c in zip(ref, got))),
            "psnr_db": _db(min(r[name].psnr for r in psnrs)),
            "top1": top1_agreement(reference, candidate, name) if scores else None,
            "topk": topk_agreement(reference, candidate, name, k) if scores else None,
        }
    return {name: measured[name] for name in ref[0]}


def _numeric(feed: Feed) -> Feed:
    """Boolean outputs as 0.0/1.0 (an error of 1 where they differ): Polygraphy's quantile and
    SNR subtract arrays, which NumPy refuses for booleans."""
    return {
        n: a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.bool_ else a
        for n, a in feed.items()
    }


def worst(metric: str, values: Sequence[float | None]) -> float:
    """The worst of ``values`` (NaN when there is none, or one is NaN)."""
    found = [float(v) for v in values if v is not None]
    if not found or any(math.isnan(v) for v in found):
        return float("nan")
    return min(found) if HIGHER_IS_BETTER[metric] else max(found)


def passes(metric: str, value: float, limit: float) -> bool:
    """Whether ``value`` keeps ``limit`` (a NaN never does)."""
    if math.isnan(value):
        return False
    return value >= limit if HIGHER_IS_BETTER[metric] else value <= limit


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-noise ratio of ``candidate`` against ``reference`` in dB (Polygraphy's
    SnrCompareFunc: 10 log10(mean(reference**2) / mean((reference - candidate)**2))): inf when
    they are equal, -inf when the reference is all zero and the candidate is not, NaN when
    either holds a NaN. FP32 arrays are summed in FP32 (BLAS; float64 where a sum overflows):
    the local error measure takes it of every layer on every sample."""
    ref = np.asarray(reference).ravel()
    cand = np.asarray(candidate).ravel()
    wide = ref.dtype != np.float32 or cand.dtype not in (np.float32, np.float16)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for dtype in (np.float64,) if wide else (np.float32, np.float64):
            values = ref.astype(dtype, copy=False)
            noise = values - cand.astype(dtype, copy=False)
            noise_power, signal_power = float(noise @ noise), float(values @ values)
            if math.isfinite(noise_power) and math.isfinite(signal_power):
                break
        if noise_power == 0:
            return math.inf
        if signal_power == 0:
            return -math.inf
        return float(10 * np.log10(signal_power / noise_power))


def _db(value: float) -> float:
    return float(min(max(value, -DB_CEILING), DB_CEILING))


def top1_agreement(reference: Sequence[Feed], candidate: Sequence[Feed], name: str) -> float:
    """Fraction of rows (all but the last axis) whose argmax over the last axis agrees."""
    agree = total = 0
    for r, c in zip(reference, candidate):
        a, b = np.argmax(r[name], axis=-1), np.argmax(c[name], axis=-1)
        agree += int(np.sum(a == b))
        total += a.size
    return agree / total if total else 1.0


def topk_agreement(
    reference: Sequence[Feed], candidate: Sequence[Feed], name: str, k: int
) -> float:
    """Fraction of rows whose reference argmax is among the candidate's k largest scores."""
    agree = total = 0
    for r, c in zip(reference, candidate):
        label = np.argmax(r[name], axis=-1)[..., None]
        kk = min(k, c[name].shape[-1])
        top = np.argpartition(-np.asarray(c[name]), kk - 1, axis=-1)[..., :kk]
        agree += int(np.sum(np.any(top == label, axis=-1)))
        total += label.size
    return agree / total if total else 1.0
