"""The automatic sensitivity search finds the layers to keep in higher precision with few
judgements: each layer alone on small graphs, group testing on large ones, within a time
budget. A judge that knows the culprits stands in for ONNX Runtime, so the number of
judgements is exact; test_precision.py and test_quantize.py run the search on real graphs."""

from __future__ import annotations

import math

import pytest

from trtopt.passes import sensitivity
from trtopt.passes.sensitivity import AutoOptions, search


class KnownCulprits:
    """The metric is max_abs: 1 for each culprit lowered, 0.01 for every other layer lowered
    (errors that add up); at most ``limit`` passes."""

    def __init__(self, culprits: set[str], limit: float = 0.5) -> None:
        self.culprits = culprits
        self.options = AutoOptions(metric="max_abs", max=limit)
        self.evaluations = 0

    def __call__(self, lowered: set[str]) -> tuple[float, float]:
        self.evaluations += 1
        value = len(lowered & self.culprits) + 0.001 * len(lowered - self.culprits)
        return value, 1.0 - value


NAMES = [f"layer{i}" for i in range(300)]


def lowering(kept: set[str]) -> set[str]:
    return set(NAMES) - kept


@pytest.mark.parametrize("culprits", [{"layer17"}, {"layer17", "layer203"}, set()])
def test_group_testing_finds_the_culprits_in_few_judgements(culprits):
    judge = KnownCulprits(culprits)
    result = search(NAMES, lowering, judge)
    assert {k["node"] for k in result.kept} == culprits and result.reached
    k = max(1, len(culprits))
    assert judge.evaluations <= 2 + 2 * k * math.ceil(math.log2(len(NAMES))) + len(culprits)
    if culprits:
        assert all(k["value_alone"] >= 1 for k in result.kept)  # each measured for the report


def test_small_searches_still_measure_every_layer_alone():
    names = NAMES[: sensitivity.EACH_LIMIT]
    judge = KnownCulprits({"layer3"})
    result = search(names, lambda kept: set(names) - kept, judge)
    assert [k["node"] for k in result.kept] == ["layer3"]
    assert judge.evaluations > len(names)  # one judgement per layer, then the bisection


def test_a_search_out_of_time_keeps_what_it_has_not_cleared():
    judge = KnownCulprits({"layer17"})
    judge.options = AutoOptions(metric="max_abs", max=0.5, max_minutes=0)
    result = search(NAMES, lowering, judge)
    assert result.out_of_time and result.reached
    assert {k["node"] for k in result.kept} == set(NAMES)  # nothing cleared: all in float


class FloatFails(KnownCulprits):
    """Off by 1 even with every layer in float: no set of kept layers passes."""

    def __call__(self, lowered: set[str]) -> tuple[float, float]:
        value, cosine = super().__call__(lowered)
        return value + 1.0, cosine


def test_a_limit_not_even_float_reaches_keeps_every_layer_and_says_so():
    judge = FloatFails(set())
    result = search(NAMES, lowering, judge)
    assert not result.reached and {k["node"] for k in result.kept} == set(NAMES)
    assert judge.evaluations == 2  # every layer lowered, then every layer kept
