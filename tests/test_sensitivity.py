"""The automatic sensitivity search finds the layers to keep in higher precision with few
judgements: each layer alone on small graphs, group testing on large ones, the worst local
error first when layers are ranked, within a time budget. A judge that knows the culprits
stands in for ONNX Runtime, so the number of judgements is exact; test_precision.py,
test_quantize.py and test_local_error.py run the search on real graphs."""

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
        self.judged: list[set[str]] = []
        """What was lowered in each judgement, in order."""

    def __call__(self, lowered: set[str]) -> tuple[float, float]:
        self.evaluations += 1
        self.judged.append(lowered)
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
    assert sorted(result.untried) == sorted(NAMES)  # and the report says none was tried


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


def ranked(*first: str) -> dict[str, float]:
    """Local errors that rank ``first`` worst, in that order; every other layer at FP16's own
    rounding (70 dB), one unmeasured (NaN)."""
    ranking = {name: 70.0 for name in NAMES}
    ranking.update({name: -30.0 + index for index, name in enumerate(first)})
    ranking["layer299"] = math.nan
    return ranking


def test_ranked_search_judges_the_worst_local_error_first():
    judge = KnownCulprits({"layer17"})
    result = search(NAMES, lowering, judge, ranking=ranked("layer17"))
    assert [k["node"] for k in result.kept] == ["layer17"] and result.reached
    # Every layer lowered, then all but the worst: that passes; then its effect alone.
    assert judge.judged[1] == set(NAMES) - {"layer17"}
    assert judge.evaluations == 3
    assert result.kept[0]["local_snr_db"] == -30.0


def test_ranked_search_finds_culprits_ranked_low_and_drops_benign_suspects():
    """Culprits ranked 1st and 3rd (a benign layer between them), the third ranked 4th or
    54th: the smallest passing prefix holds benign suspects, lowered again afterwards. Even
    ranked far down, the culprits cost fewer judgements than group testing in graph order."""
    culprits = {"layer5", "layer9", "layer250"}
    unranked = KnownCulprits(culprits)
    search(NAMES, lowering, unranked)
    for order in (
        ["layer5", "layer100", "layer9", "layer250"],
        ["layer5", "layer100", "layer9", *(f"layer{i}" for i in range(200, 251))],
    ):
        judge = KnownCulprits(culprits)
        result = search(NAMES, lowering, judge, ranking=ranked(*order))
        assert {k["node"] for k in result.kept} == culprits and result.reached
        assert judge.evaluations < unranked.evaluations


def test_ranked_search_out_of_time_or_out_of_reach_keeps_everything():
    judge = KnownCulprits({"layer17"})
    judge.options = AutoOptions(metric="max_abs", max=0.5, max_minutes=0)
    result = search(NAMES, lowering, judge, ranking=ranked("layer17"))
    assert result.out_of_time and not result.reached and len(result.kept) == len(NAMES)
    assert len(result.untried) == len(NAMES)
    judge = FloatFails(set())
    result = search(NAMES, lowering, judge, ranking=ranked("layer17"))
    assert not result.reached and not result.out_of_time and len(result.kept) == len(NAMES)


def test_rank_false_judges_in_graph_order_whatever_the_ranking():
    judge = KnownCulprits({"layer17"})
    judge.options = AutoOptions(metric="max_abs", max=0.5, rank=False)
    result = search(NAMES, lowering, judge, ranking=ranked("layer17"))
    unranked = KnownCulprits({"layer17"})
    search(NAMES, lowering, unranked)
    assert [k["node"] for k in result.kept] == ["layer17"]
    assert judge.judged == unranked.judged


class Slow(KnownCulprits):
    """Each judgement takes 10 s of a clock the search reads."""

    clock = 0.0

    def __call__(self, lowered: set[str]) -> tuple[float, float]:
        Slow.clock += 10.0
        return super().__call__(lowered)


def test_ranked_search_out_of_time_reports_the_kept_layers_it_never_tried(monkeypatch):
    """A 30 s budget: every layer lowered, the worst kept (fails), the two worst kept (passes);
    no time is left to try lowering the worst again alone, so it stays, reported untried."""
    monkeypatch.setattr(Slow, "clock", 0.0)
    monkeypatch.setattr(sensitivity.time, "perf_counter", lambda: Slow.clock)
    judge = Slow({"layer9"})
    judge.options = AutoOptions(metric="max_abs", max=0.5, max_minutes=0.5)
    result = search(NAMES, lowering, judge, ranking=ranked("layer5", "layer9"))
    assert result.out_of_time and result.reached and judge.evaluations == 3
    assert {k["node"] for k in result.kept} == {"layer5", "layer9"}
    assert result.untried == ["layer5"]  # benign, but never tried lowered
