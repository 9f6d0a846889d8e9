"""Accuracy checks: Polygraphy's Comparator runs and compares, trtopt applies the thresholds.

Polygraphy computes the error statistics (SimpleCompareFunc, including the error quantile),
cosine similarity (CosineSimilarityCompareFunc), SNR and PSNR (SnrCompareFunc, PsnrCompareFunc)
per sample; trtopt aggregates them over the samples (the worst sample counts), adds top-1 and
top-k agreement for class scores with numpy (Polygraphy has no agreement *rate*), and turns them
into verdicts: against fixed limits, and against a baseline report's values (``max_degradation``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import (
    Comparator,
    CosineSimilarityCompareFunc,
    IterationResult,
    PsnrCompareFunc,
    RunResults,
    SimpleCompareFunc,
    SnrCompareFunc,
)

from .recipe import Thresholds

Feed = dict[str, np.ndarray]
Outputs = list[IterationResult]

DEFAULT_QUANTILE = 0.99
"""The error quantile ``quantile_abs`` measures unless the recipe says otherwise (p99)."""
DEFAULT_TOP_K = 5
DB_CEILING = 200.0
"""SNR/PSNR of identical outputs is infinite; it is reported as this many dB so that every
report stays standard JSON (float32 round-off alone gives well under 200 dB)."""

# metric -> (threshold field, higher is better)
GATES: dict[str, tuple[str, bool]] = {
    "max_abs": ("max_abs", False),
    "mean_abs": ("mean_abs", False),
    "max_rel": ("max_rel", False),
    "quantile_abs": ("quantile_abs", False),
    "cosine": ("min_cosine", True),
    "snr_db": ("min_snr_db", True),
    "psnr_db": ("min_psnr_db", True),
    "top1": ("min_top1", True),
    "topk": ("min_topk", True),
}
METRICS: tuple[str, ...] = tuple(GATES)
"""Every metric measured per output, in report order."""
HIGHER_IS_BETTER: dict[str, bool] = {metric: better for metric, (_, better) in GATES.items()}


@dataclass
class MetricCheck:
    metric: str
    value: float
    limit: float
    passed: bool
    baseline: float | None = None
    """For a ``max_degradation`` check: the baseline report's value the limit derives from."""

    def describe(self) -> str:
        against = f", baseline {self.baseline:.6g}" if self.baseline is not None else ""
        return f"{self.metric} = {self.value:.6g} (limit {self.limit:.6g}{against})"


@dataclass
class OutputAccuracy:
    """Metrics of one output over all samples, and the verdict of each gated metric."""

    name: str
    metrics: dict[str, float | None]
    checks: list[MetricCheck] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(check.passed for check in self.checks)

    def failures(self) -> list[str]:
        if self.error:
            return [f"{self.name}: {self.error}"]
        return [f"{self.name}: {c.describe()}" for c in self.checks if not c.passed]


@dataclass
class AccuracyResult:
    outputs: list[OutputAccuracy]
    samples: int

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    def failures(self) -> list[str]:
        return [line for output in self.outputs for line in output.failures()]

    def to_json(self) -> dict:
        return {
            "verdict": "pass" if self.passed else "fail",
            "samples": self.samples,
            "outputs": {
                o.name: {
                    "verdict": "pass" if o.passed else "fail",
                    "metrics": o.metrics,
                    "checks": [c.__dict__ for c in o.checks],
                    "error": o.error,
                }
                for o in self.outputs
            },
        }


def run(runner: BaseRunner, feeds: Sequence[Feed]) -> Outputs:
    """Run ``runner`` on every feed with Polygraphy's Comparator."""
    results = Comparator.run([runner], data_loader=list(feeds))
    return results[runner.name]


def compare(
    reference: Outputs,
    candidate: Outputs,
    thresholds_for: Callable[[str], Thresholds],
    class_scores: set[str],
    *,
    quantile: float = DEFAULT_QUANTILE,
    top_k: Mapping[str, int] | None = None,
    baseline: Mapping[str, Mapping[str, float | None]] | None = None,
) -> AccuracyResult:
    """Compare the candidate's outputs with the reference's, sample by sample.

    ``quantile`` is the error quantile ``quantile_abs`` measures; ``top_k`` the k of top-k
    agreement per class-score output (default DEFAULT_TOP_K); ``baseline`` a previous run's
    metrics per output, which ``max_degradation`` thresholds compare with.
    """
    reference = [IterationResult(dict(r), runner_name="reference") for r in reference]
    candidate = [IterationResult(dict(c), runner_name="candidate") for c in candidate]
    run_results = RunResults([("reference", reference), ("candidate", candidate)])
    # Polygraphy's "quantile" check with infinite tolerances records every statistic (max, mean
    # and the quantile) without judging; SNR/PSNR with -inf thresholds likewise.
    stats, cosines, snrs, psnrs = Comparator.compare_accuracy(
        run_results,
        compare_func=[
            SimpleCompareFunc(
                check_error_stat="quantile", atol=math.inf, rtol=math.inf, error_quantile=quantile
            ),
            CosineSimilarityCompareFunc(),
            SnrCompareFunc(snr_threshold=-math.inf),
            PsnrCompareFunc(psnr_threshold=-math.inf),
        ],
    )
    stats_per_sample = next(iter(stats.values()))
    cosine_per_sample = next(iter(cosines.values()))
    snr_per_sample = next(iter(snrs.values()))
    psnr_per_sample = next(iter(psnrs.values()))

    outputs = []
    for name in reference[0]:
        if any(name not in c for c in candidate):
            outputs.append(OutputAccuracy(name, {}, error="missing from the artifact's outputs"))
            continue
        per_sample = [s[name] for s in stats_per_sample]
        shapes = {(r[name].shape, c[name].shape) for r, c in zip(reference, candidate)}
        mismatched = [(a, b) for a, b in shapes if a != b]
        if mismatched or not all(hasattr(s, "max_absdiff") for s in per_sample):
            a, b = mismatched[0] if mismatched else next(iter(shapes))
            outputs.append(
                OutputAccuracy(name, {}, error=f"shape {list(b)} != reference {list(a)}")
            )
            continue
        scores = name in class_scores
        k = (top_k or {}).get(name, DEFAULT_TOP_K)
        metrics: dict[str, float | None] = {
            "max_abs": max(s.max_absdiff for s in per_sample),
            "mean_abs": float(np.mean([s.mean_absdiff for s in per_sample])),
            "max_rel": max(s.max_reldiff for s in per_sample),
            "quantile_abs": max(s.quantile_absdiff for s in per_sample),
            "cosine": min(c[name].cosine_similarity for c in cosine_per_sample),
            "snr_db": _db(min(r[name].snr for r in snr_per_sample)),
            "psnr_db": _db(min(r[name].psnr for r in psnr_per_sample)),
            "top1": _top1_agreement(reference, candidate, name) if scores else None,
            "topk": _topk_agreement(reference, candidate, name, k) if scores else None,
        }
        thresholds = thresholds_for(name)
        checks = _checks(metrics, thresholds)
        if baseline is not None and thresholds.max_degradation:
            checks += _degradation_checks(
                metrics, baseline.get(name) or {}, thresholds.max_degradation
            )
        outputs.append(OutputAccuracy(name, metrics, checks))
    return AccuracyResult(outputs, samples=len(reference))


def _db(value: float) -> float:
    return float(min(max(value, -DB_CEILING), DB_CEILING))


def _top1_agreement(reference: Outputs, candidate: Outputs, name: str) -> float:
    """Fraction of rows (all but the last axis) whose argmax over the last axis agrees."""
    agree = total = 0
    for r, c in zip(reference, candidate):
        a, b = np.argmax(r[name], axis=-1), np.argmax(c[name], axis=-1)
        agree += int(np.sum(a == b))
        total += a.size
    return agree / total if total else 1.0


def _topk_agreement(reference: Outputs, candidate: Outputs, name: str, k: int) -> float:
    """Fraction of rows whose reference argmax is among the candidate's k largest scores."""
    agree = total = 0
    for r, c in zip(reference, candidate):
        label = np.argmax(r[name], axis=-1)[..., None]
        kk = min(k, c[name].shape[-1])
        top = np.argpartition(-np.asarray(c[name]), kk - 1, axis=-1)[..., :kk]
        agree += int(np.sum(np.any(top == label, axis=-1)))
        total += label.size
    return agree / total if total else 1.0


def _degradation_checks(
    metrics: dict[str, float | None],
    baseline: Mapping[str, float | None],
    allowed: Mapping[str, float],
) -> list[MetricCheck]:
    """A metric may be worse than the baseline's value by at most ``allowed[metric]``; a metric
    the baseline lacks is not checked (there is nothing to compare with)."""
    checks = []
    for metric, margin in allowed.items():
        value, base = metrics.get(metric), baseline.get(metric)
        if value is None or base is None:
            continue
        higher_is_better = HIGHER_IS_BETTER[metric]
        limit = base - margin if higher_is_better else base + margin
        ok = value >= limit if higher_is_better else value <= limit
        name = f"{metric} vs baseline"
        checks.append(MetricCheck(name, value, limit, bool(ok) and not math.isnan(value), base))
    return checks


def _checks(metrics: dict[str, float | None], thresholds: Thresholds) -> list[MetricCheck]:
    checks = []
    for metric, (field_name, higher_is_better) in GATES.items():
        limit, value = getattr(thresholds, field_name), metrics.get(metric)
        if limit is None or value is None:
            continue
        ok = value >= limit if higher_is_better else value <= limit
        checks.append(MetricCheck(metric, value, limit, bool(ok) and not math.isnan(value)))
    return checks
