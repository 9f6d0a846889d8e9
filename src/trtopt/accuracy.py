"""Accuracy verdicts: Polygraphy's Comparator runs the runners, metrics.py measures, and the
thresholds (fixed limits, and a baseline report's values for ``max_degradation``) judge."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import Comparator, IterationResult

from . import metrics
from .feeds import Feed
from .metrics import DEFAULT_QUANTILE, HIGHER_IS_BETTER, THRESHOLD_FIELDS
from .recipe import Thresholds

Outputs = list[IterationResult]


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
    reference: Sequence[Feed],
    candidate: Sequence[Feed],
    thresholds_for: Callable[[str], Thresholds],
    class_scores: set[str],
    *,
    quantile: float = DEFAULT_QUANTILE,
    top_k: Mapping[str, int] | None = None,
    baseline: Mapping[str, Mapping[str, float | None]] | None = None,
) -> AccuracyResult:
    """Measure the candidate's outputs against the reference's (metrics.measure) and judge
    each output by ``thresholds_for(name)``; ``baseline``: a previous run's metrics per
    output, which ``max_degradation`` thresholds compare with."""
    measured = metrics.measure(
        reference, candidate, quantile=quantile, class_scores=class_scores, top_k=top_k
    )
    outputs = []
    for name, values in measured.items():
        if isinstance(values, str):
            outputs.append(OutputAccuracy(name, {}, error=values))
            continue
        thresholds = thresholds_for(name)
        checks = _checks(values, thresholds)
        if baseline is not None and thresholds.max_degradation:
            checks += _degradation_checks(
                values, baseline.get(name) or {}, thresholds.max_degradation
            )
        outputs.append(OutputAccuracy(name, values, checks))
    return AccuracyResult(outputs, samples=len(reference))


def _degradation_checks(
    measured: metrics.Measured,
    baseline: Mapping[str, float | None],
    allowed: Mapping[str, float],
) -> list[MetricCheck]:
    """A metric may be worse than the baseline's value by at most ``allowed[metric]``; a metric
    the baseline lacks is not checked (there is nothing to compare with)."""
    checks = []
    for metric, margin in allowed.items():
        value, base = measured.get(metric), baseline.get(metric)
        if value is None or base is None:
            continue
        limit = base - margin if HIGHER_IS_BETTER[metric] else base + margin
        ok = metrics.passes(metric, value, limit)
        checks.append(MetricCheck(f"{metric} vs baseline", value, limit, ok, base))
    return checks


def _checks(measured: metrics.Measured, thresholds: Thresholds) -> list[MetricCheck]:
    checks = []
    for metric, field_name in THRESHOLD_FIELDS.items():
        limit, value = getattr(thresholds, field_name), measured.get(metric)
        if limit is None or value is None:
            continue
        checks.append(MetricCheck(metric, value, limit, metrics.passes(metric, value, limit)))
    return checks
