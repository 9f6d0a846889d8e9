"""One definition of every metric: the check (accuracy.compare) and the automatic search
(sensitivity) measure the same arrays to the same numbers."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from trtopt import accuracy, metrics
from trtopt.passes.sensitivity import AutoOptions, metric_values
from trtopt.recipe import CheckSpec


def _outputs(seed: int) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    reference = [
        {"scores": rng.normal(size=(3, 10)).astype(np.float32), "map": rng.random((2, 8, 8))}
        for _ in range(3)
    ]
    candidate = [
        {name: (a + rng.normal(scale=0.05, size=a.shape)).astype(a.dtype) for name, a in r.items()}
        for r in reference
    ]
    return reference, candidate


@pytest.mark.parametrize("metric", metrics.METRICS)
def test_the_search_measures_what_the_check_gates(metric):
    reference, candidate = _outputs(0)
    spec = CheckSpec(outputs={"scores": {"class_scores": True}})
    checked = accuracy.compare(reference, candidate, spec.thresholds_for, {"scores"})
    names = ["scores"] if metric in metrics.CLASS_SCORE_METRICS else ["scores", "map"]
    judged = [o.metrics[metric] for o in checked.outputs if o.name in names]
    expected = metrics.worst(metric, judged)
    searched, cosine = metric_values(metric, reference, candidate, names)
    assert math.isclose(searched, expected, rel_tol=1e-12)
    assert cosine == min(o.metrics["cosine"] for o in checked.outputs if o.name in names)
    limit = {"min" if metrics.HIGHER_IS_BETTER[metric] else "max": abs(expected)}
    assert AutoOptions(metric=metric, **limit).passes(searched) == metrics.passes(
        metric, expected, abs(expected)
    )


def test_max_rel_is_relative_to_the_candidate_as_polygraphy_defines_it():
    reference = [{"y": np.array([1.0, 4.0], np.float32)}]
    candidate = [{"y": np.array([2.0, 4.0], np.float32)}]
    measured = metrics.measure(reference, candidate)["y"]
    assert not isinstance(measured, str)
    assert measured["max_rel"] == pytest.approx(0.5)  # |1 - 2| / |2|


def test_a_missing_or_reshaped_output_is_a_reason_not_a_number():
    reference = [{"a": np.zeros(3, np.float32), "b": np.zeros(3, np.float32)}]
    candidate = [{"a": np.zeros(4, np.float32)}]
    measured = metrics.measure(reference, candidate)
    assert measured["a"] == "shape [4] != reference [3]"
    assert measured["b"] == "missing from the artifact's outputs"
    assert math.isnan(metric_values("cosine", reference, candidate)[0])


def test_boolean_outputs_are_measured_as_zeros_and_ones():
    reference = [{"mask": np.array([True, False, True, True])}]
    candidate = [{"mask": np.array([True, True, True, True])}]
    measured = metrics.measure(reference, candidate)["mask"]
    assert not isinstance(measured, str)
    assert measured["max_abs"] == 1.0 and measured["mean_abs"] == 0.25


def test_measuring_never_looks_for_torch():
    """Polygraphy's comparisons ask whether each value is a torch tensor, which imports torch
    wherever it is installed (seconds of every compile); trtopt's measuring must not."""
    probe = """
import sys
import numpy as np

looked = []

class Record:  # Polygraphy swallows errors here: record the lookups rather than refuse them
    def find_spec(self, name, path=None, target=None):
        looked.append(name)

sys.meta_path.insert(0, Record())
from trtopt import metrics

reference = [{"y": np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10)}]
candidate = [{"y": reference[0]["y"] + np.float32(1e-3)}]
measured = metrics.measure(reference, candidate, class_scores={"y"})
print(measured["y"]["cosine"] > 0.99, [n for n in looked if n.split(".")[0] == "torch"])
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True []"
