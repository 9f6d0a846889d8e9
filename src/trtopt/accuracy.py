"""Accuracy checks: Polygraphy's Comparator runs and compares, trtopt applies the thresholds.

Polygraphy computes the error statistics (SimpleCompareFunc) and cosine similarity
(CosineSimilarityCompareFunc) per sample; trtopt aggregates them over the samples, adds top-1
agreement for class scores (Polygraphy has no agreement *rate*), and turns them into verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import (
    Comparator,
    CosineSimilarityCompareFunc,
    IterationResult,
    RunResults,
    SimpleCompareFunc,
)

from .recipe import Thresholds

Feed = dict[str, np.ndarray]
Outputs = list[IterationResult]

# metric -> (threshold field, higher is better)
GATES: dict[str, tuple[str, bool]] = {
    "max_abs": ("max_abs", False),
    "mean_abs": ("mean_abs", False),
    "max_rel": ("max_rel", False),
    "cosine": ("min_cosine", True),
    "top1": ("min_top1", True),
}


@dataclass
class MetricCheck:
    metric: str
    value: float
    limit: float
    passed: bool


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
        return [
            f"{self.name}: {c.metric} = {c.value:.6g} (limit {c.limit:.6g})"
            for c in self.checks
            if not c.passed
        ]


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
) -> AccuracyResult:
    """Compare the candidate's outputs with the reference's, sample by sample."""
    reference = [IterationResult(dict(r), runner_name="reference") for r in reference]
    candidate = [IterationResult(dict(c), runner_name="candidate") for c in candidate]
    run_results = RunResults([("reference", reference), ("candidate", candidate)])
    # Polygraphy's "max" check with infinite tolerances records the statistics without judging.
    stats, cosines = Comparator.compare_accuracy(
        run_results,
        compare_func=[
            SimpleCompareFunc(check_error_stat="max", atol=math.inf, rtol=math.inf),
            CosineSimilarityCompareFunc(),
        ],
    )
    stats_per_sample = next(iter(stats.values()))
    cosine_per_sample = next(iter(cosines.values()))

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
        metrics: dict[str, float | None] = {
            "max_abs": max(s.max_absdiff for s in per_sample),
            "mean_abs": float(np.mean([s.mean_absdiff for s in per_sample])),
            "max_rel": max(s.max_reldiff for s in per_sample),
            "cosine": min(c[name].cosine_similarity for c in cosine_per_sample),
            "top1": _top1_agreement(reference, candidate, name) if name in class_scores else None,
        }
        outputs.append(OutputAccuracy(name, metrics, _checks(metrics, thresholds_for(name))))
    return AccuracyResult(outputs, samples=len(reference))


def _top1_agreement(reference: Outputs, candidate: Outputs, name: str) -> float:
    """Fraction of rows (all but the last axis) whose argmax over the last axis agrees."""
    agree = total = 0
    for r, c in zip(reference, candidate):
        a, b = np.argmax(r[name], axis=-1), np.argmax(c[name], axis=-1)
        agree += int(np.sum(a == b))
        total += a.size
    return agree / total if total else 1.0


def _checks(metrics: dict[str, float | None], thresholds: Thresholds) -> list[MetricCheck]:
    checks = []
    for metric, (field_name, higher_is_better) in GATES.items():
        limit, value = getattr(thresholds, field_name), metrics.get(metric)
        if limit is None or value is None:
            continue
        ok = value >= limit if higher_is_better else value <= limit
        checks.append(MetricCheck(metric, value, limit, bool(ok) and not math.isnan(value)))
    return checks
