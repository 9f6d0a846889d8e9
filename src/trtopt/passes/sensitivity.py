"""Automatic sensitivity search: keep the fewest layers in higher precision so a metric passes.

Shared by ``quantize`` and ``precision`` (``auto: {metric, min|max}``). It replaces
Polygraphy's layer bisection (``debug precision``), which needs TensorRT <= 10 and only ever
keeps the first or last N layers.

1. The graph with every candidate lowered is judged; if it passes, nothing is kept.

Up to EACH_LIMIT candidates, every layer is measured on its own:

2. each candidate's effect is the metric's error when only that layer is lowered;
3. the smallest k such that keeping the k most sensitive layers passes is found by bisection
   (errors add up roughly monotonically);
4. each kept layer, least sensitive first, is lowered again if the metric still passes.

Above it, measuring every layer costs a judgement each (336 on a text detector: 50
minutes), so the layers are found by group testing instead: groups of consecutive layers (in
graph order) are lowered on top of what is already lowered, a group that breaks the metric
is halved, and a single layer that breaks it is kept. When few layers are the trouble (the
usual case: one BatchNormalization with a huge variance, a softmax input), that takes about
2 k log2(N / k) judgements for k kept layers of N.

Given a *ranking* (each layer's local error, ``local_error``: one streaming pass measures
every layer alone on its own inputs), the suspects above EACH_LIMIT are judged worst first
instead (below it, each layer's effect on the outputs measured alone is exact and cheap: on a
small CNN in INT8, where every layer's error adds up, it kept 9 layers in 26 judgements and
the ranking 10 in 35):

1. the k worst are kept for k = 1, 2, 4, ... until the metric passes, and the smallest such
   k is found by bisection; a culprit ranked r costs about 2 log2(r) judgements (one when it
   ranks first);
2. of those k, all but the last needed are lowered again by group testing, least suspicious
   first, so a benign layer ranked among the culprits is not kept.

Every judgement runs the candidate graph on ONNX Runtime CPU over the validation feeds, its
reduced-precision rounding made explicit (``emulation``), and compares it with the pass's
input graph (the reference) the way the accuracy check does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from pydantic import Field, model_validator

from .. import emulation, progress
from ..feeds import Feed
from ..metrics import CLASS_SCORE_METRICS, HIGHER_IS_BETTER, METRICS, measure, worst
from ..metrics import passes as keeps
from .base import PassOptions

log = logging.getLogger("trtopt.passes")

Metric = Literal[METRICS]  # type: ignore[valid-type]
MAX_REFINEMENTS = 64
"""At most this many kept layers are retried (step 4); the rest stay kept."""
EACH_LIMIT = 24
"""Up to this many candidates each is measured alone; above it, group testing finds them."""
JUDGED = f"on ONNX Runtime's CPU, FP16/BF16 rounding emulated: {emulation.LIMITS}"
"""How a judgement sees reduced precision, and what it cannot see (the report says it)."""


class AutoOptions(PassOptions):
    """Search for the fewest layers to keep in higher precision so that a metric passes."""

    metric: Metric = "cosine"
    """Any metric the check measures (metrics.METRICS), measured as the check does."""
    min: float | None = None
    """The lowest acceptable value (cosine, snr_db, psnr_db, top1, topk)."""
    max: Annotated[float, Field(ge=0)] | None = None
    """The highest acceptable value (max_abs, mean_abs, max_rel, quantile_abs)."""
    samples: Annotated[int, Field(ge=1)] = 8
    """Validation feeds each judgement runs (the first ones of data.validation or check)."""
    outputs: list[str] | None = None
    """Outputs judged (default: all); for top1 and topk, the outputs that hold class scores."""
    rank: bool = True
    """Above 24 candidates, judge the suspects worst local error first (each layer run alone
    in the lowered precision on its own inputs, in one streaming pass over the calibration
    data); false: group testing in graph order."""
    max_minutes: Annotated[float, Field(ge=0)] | None = None
    """Time budget of the search; when it runs out, the best passing set found so far is kept
    (every layer in float if none passed yet) and a warning says so. Default: no limit."""

    @model_validator(mode="after")
    def _limit(self) -> AutoOptions:
        if HIGHER_IS_BETTER[self.metric]:
            if self.min is None or self.max is not None:
                raise ValueError(f"metric {self.metric} takes a `min`")
        elif self.max is None or self.min is not None:
            raise ValueError(f"metric {self.metric} takes a `max`")
        return self

    @property
    def limit(self) -> float:
        return float(self.min if self.min is not None else self.max)  # type: ignore[arg-type]

    def passes(self, value: float) -> bool:
        return keeps(self.metric, value, self.limit)

    def effect(self, value: float) -> float:
        """Distance from perfect (0 is harmless), whichever way the metric points."""
        if np.isnan(value):
            return float("inf")
        return 1.0 - value if HIGHER_IS_BETTER[self.metric] else value


Candidate = onnx.ModelProto | tuple[onnx.ModelProto, Mapping[str, np.ndarray]]
"""A model, or a model whose large initializers are external data with their values beside it
(``calibration.split_graph(graph, external=True)``): ONNX Runtime is handed the arrays rather
than a serialized copy, which for a large model costs more than the judgement's runs."""


def session(model: Candidate) -> ort.InferenceSession:
    """A judging session: FP16/BF16 rounded as TensorRT's kernels round it
    (``emulation.session``), where ONNX Runtime's CPU would compute most FP16 ops unrounded."""
    proto, weights = (model, {}) if isinstance(model, onnx.ModelProto) else model
    return emulation.session(proto, weights=weights)


def run(model: Candidate, feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feed))) for feed in feeds]


def metric_values(
    metric: str,
    reference: Sequence[Feed],
    candidate: Sequence[Feed],
    outputs: Sequence[str] | None = None,
) -> tuple[float, float]:
    """``metric`` and cosine over all feeds, the worst judged output counting, measured as the
    accuracy check measures them (metrics.measure)."""
    names = list(outputs) if outputs else list(reference[0])
    scores = names if metric in CLASS_SCORE_METRICS else ()
    measured = measure(reference, candidate, class_scores=scores)
    found = [measured[name] for name in names]
    nan = float("nan")
    return (
        worst(metric, [nan if isinstance(m, str) else m[metric] for m in found]),
        worst("cosine", [nan if isinstance(m, str) else m["cosine"] for m in found]),
    )


@dataclass
class Judge:
    """Judges candidate models against the reference outputs on fixed feeds."""

    reference_model: Candidate | None
    feeds: Sequence[Feed]
    options: AutoOptions
    evaluations: int = 0
    reference: list[dict[str, np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        assert self.reference_model is not None
        self.reference = run(self.reference_model, self.feeds)
        self.reference_model = None  # only its outputs are needed from here on
        unknown = [o for o in self.options.outputs or [] if o not in self.reference[0]]
        if unknown:
            raise ValueError(f"auto.outputs names unknown outputs {unknown}")

    def __call__(self, model: Candidate) -> tuple[float, float]:
        """(metric value, cosine) of ``model``; cosine breaks ties between layers."""
        self.evaluations += 1
        outputs = run(model, self.feeds)
        return metric_values(self.options.metric, self.reference, outputs, self.options.outputs)


@dataclass
class SearchResult:
    kept: list[dict]
    """Each kept layer: {node, effect, metric value when only it is lowered}."""
    reached: bool
    value: float
    """The metric of the final graph."""
    all_lowered_value: float
    evaluations: int
    seconds: float = 0.0
    """Wall time of the search."""
    out_of_time: bool = False
    """The time budget (``max_minutes``) ran out: the result is the best found by then."""
    untried: list[str] = field(default_factory=list)
    """Kept layers the search ran out of time before trying to lower: some may not need to
    stay."""

    def to_json(self, metric: str, limit: float) -> dict:
        return {
            "metric": metric,
            "limit": limit,
            "reached": self.reached,
            "value": self.value,
            "value_all_lowered": self.all_lowered_value,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 3),
            "out_of_time": self.out_of_time,
            "untried": self.untried,
            "kept": self.kept,
            "judged": JUDGED,
        }


def uses_ranking(options: AutoOptions, count: int) -> bool:
    """Whether a search over ``count`` candidates judges them by a ranking (``rank``, above
    EACH_LIMIT): a caller measures local errors only then."""
    return options.rank and count > EACH_LIMIT


def search(
    candidates: Sequence[str],
    build: Callable[[set[str]], Candidate],
    judge: Judge,
    ranking: Mapping[str, float] | None = None,
) -> SearchResult:
    """The fewest ``candidates`` to keep (``build(kept)`` gives the graph) so the metric passes.

    ``ranking``: each candidate's local error as an SQNR in dB (lower is worse; NaN where not
    measured, judged last): above EACH_LIMIT candidates the suspects are then judged worst
    first (the module docstring)."""
    options = judge.options
    start = time.perf_counter()
    budget = None if options.max_minutes is None else options.max_minutes * 60.0
    with progress.bar("quantize.auto search", len(candidates) + 1, "graph") as shown:
        result = _search(candidates, build, judge, shown, budget, start, ranking)
    if result.out_of_time:
        log.warning("auto: the time budget ran out; keeping the best set found")
    return result


def _search(
    candidates: Sequence[str],
    build: Callable[[set[str]], Candidate],
    judge: Judge,
    shown: Any,
    budget: float | None,
    start: float,
    ranking: Mapping[str, float] | None,
) -> SearchResult:
    options = judge.options
    out_of_time = False

    def time_left() -> bool:
        nonlocal out_of_time
        out_of_time = out_of_time or (budget is not None and time.perf_counter() - start >= budget)
        return not out_of_time

    def judged(kept: set[str]) -> tuple[float, float]:
        result = judge(build(kept))
        shown.update(1)
        return result

    everything, _ = judged(set())
    log.info("auto: %s = %.6g with every layer lowered", options.metric, everything)
    if options.passes(everything) or not candidates:
        return SearchResult(
            [],
            options.passes(everything),
            everything,
            everything,
            judge.evaluations,
            time.perf_counter() - start,
        )
    if ranking is not None and uses_ranking(options, len(candidates)):
        return _ranked_search(
            candidates, ranking, judged, options, everything, time_left, start, judge
        )
    if len(candidates) > EACH_LIMIT:
        return _group_search(candidates, judged, options, everything, time_left, start, judge)
    effects: dict[str, tuple[float, float, float]] = {}
    all_names = set(candidates)
    unmeasured = set()
    for name in candidates:  # a layer not measured in time counts as the most sensitive
        if not time_left():
            effects[name] = (np.inf, np.inf, float("nan"))
            unmeasured.add(name)
            continue
        value, cosine = judged(all_names - {name})
        effects[name] = (options.effect(value), 1.0 - cosine, value)
    order = sorted(candidates, key=lambda n: (-effects[n][0], -effects[n][1], n))
    shown.total = shown.n + 2 + int(np.ceil(np.log2(len(order) + 1))) + MAX_REFINEMENTS
    shown.refresh()

    def passes(kept: set[str]) -> tuple[bool, float]:
        value, _ = judged(kept)
        return options.passes(value), value

    low, high = 1, len(order)
    ok_high, value_high = passes(set(order))
    if not ok_high:
        kept = set(order)
        reached, final = False, value_high
    else:
        best_value = value_high
        while low < high and time_left():
            middle = (low + high) // 2
            ok, value = passes(set(order[:middle]))
            if ok:
                high, best_value = middle, value
            else:
                low = middle + 1
        kept, reached, final = set(order[:high]), True, best_value
        for name in sorted(kept, key=lambda n: (effects[n][0], effects[n][1]))[:MAX_REFINEMENTS]:
            if len(kept) == 1 or not time_left():
                break
            ok, value = passes(kept - {name})
            if ok:
                kept.discard(name)
                final = value
    listed = [
        {"node": name, "effect": effects[name][0], "value_alone": effects[name][2]}
        for name in order
        if name in kept
    ]
    untried = [n for n in order if n in kept and n in unmeasured]
    seconds = time.perf_counter() - start
    return SearchResult(
        listed, reached, final, everything, judge.evaluations, seconds, out_of_time, untried
    )


def _group_search(
    candidates: Sequence[str],
    judged: Callable[[set[str]], tuple[float, float]],
    options: AutoOptions,
    everything: float,
    time_left: Callable[[], bool],
    start: float,
    judge: Judge,
) -> SearchResult:
    """Adaptive group testing over ``candidates`` in graph order (the module docstring)."""
    kept = set(candidates)
    final, _ = judged(kept)  # every candidate kept: the best the search can reach
    if not options.passes(final):
        nan = float("nan")
        unmeasured = {"effect": options.effect(nan), "value_alone": nan}
        listed = [{"node": name, **unmeasured} for name in candidates]
        seconds = time.perf_counter() - start
        return SearchResult(listed, False, final, everything, judge.evaluations, seconds)
    half = len(candidates) // 2
    groups = [list(candidates[half:]), list(candidates[:half])]  # all at once already failed
    kept, final, untried = _lower_groups(kept, final, groups, judged, options, time_left)
    listed = _alone(candidates, kept, judged, options, time_left)
    seconds = time.perf_counter() - start
    return SearchResult(
        listed, True, final, everything, judge.evaluations, seconds, not time_left(), untried
    )


def _ranked_search(
    candidates: Sequence[str],
    ranking: Mapping[str, float],
    judged: Callable[[set[str]], tuple[float, float]],
    options: AutoOptions,
    everything: float,
    time_left: Callable[[], bool],
    start: float,
    judge: Judge,
) -> SearchResult:
    """The worst-ranked prefix that passes, then its benign members lowered again (the
    module docstring)."""
    position = {name: index for index, name in enumerate(candidates)}

    def suspicion(name: str) -> tuple[bool, float, int]:
        local = ranking.get(name, float("nan"))
        return (np.isnan(local), local, position[name])  # unmeasured last; then graph order

    order = sorted(candidates, key=suspicion)
    failed, size, final = 0, 1, float("nan")
    while True:  # keep the 1, 2, 4, ... worst until the metric passes
        if not time_left():  # nothing passed yet: every candidate stays, not judged
            return _every_one_kept(order, float("nan"), everything, judge, start, True)
        value, _ = judged(set(order[:size]))
        if options.passes(value):
            final = value
            break
        if size == len(order):  # not even every candidate kept passes
            return _every_one_kept(order, value, everything, judge, start, False)
        failed, size = size, min(2 * size, len(order))
    low = failed + 1
    while low < size and time_left():  # the smallest passing prefix, by bisection
        middle = (low + size) // 2
        value, _ = judged(set(order[:middle]))
        if options.passes(value):
            size, final = middle, value
        else:
            low = middle + 1
    kept = set(order[:size])
    # The last of the prefix is needed; the others are lowered again where the metric allows,
    # least suspicious first.
    benign_first = order[: size - 1][::-1]
    kept, final, untried = _lower_groups(kept, final, [benign_first], judged, options, time_left)
    listed = _alone(order, kept, judged, options, time_left)
    for item in listed:
        item["local_snr_db"] = ranking.get(item["node"], float("nan"))
    seconds = time.perf_counter() - start
    return SearchResult(
        listed, True, final, everything, judge.evaluations, seconds, not time_left(), untried
    )


def _every_one_kept(
    order: Sequence[str],
    value: float,
    everything: float,
    judge: Judge,
    start: float,
    out_of_time: bool,
) -> SearchResult:
    """Every candidate kept, none measured alone: not even that passes (``value``), or time
    ran out before any kept set passed (``value`` NaN: not judged)."""
    nan = float("nan")
    unmeasured = {"effect": judge.options.effect(nan), "value_alone": nan}
    listed = [{"node": name, **unmeasured} for name in order]
    seconds = time.perf_counter() - start
    untried = list(order) if out_of_time else []
    return SearchResult(
        listed, False, value, everything, judge.evaluations, seconds, out_of_time, untried
    )


def _lower_groups(
    kept: set[str],
    final: float,
    groups: list[list[str]],
    judged: Callable[[set[str]], tuple[float, float]],
    options: AutoOptions,
    time_left: Callable[[], bool],
) -> tuple[set[str], float, list[str]]:
    """Group testing: each group (the last first) is lowered on top of what is already
    lowered; one that breaks the metric is halved, a single layer that does stays kept. Also
    returns the layers of the groups left when time ran out (kept, untried)."""
    groups = [g for g in groups if g]
    while groups and time_left():
        group = groups.pop()
        value, _ = judged(kept - set(group))
        if options.passes(value):
            kept = kept - set(group)
            final = value
        elif len(group) > 1:
            half = len(group) // 2
            groups += [group[half:], group[:half]]
    return kept, final, [name for group in groups for name in group]


def _alone(
    order: Sequence[str],
    kept: set[str],
    judged: Callable[[set[str]], tuple[float, float]],
    options: AutoOptions,
    time_left: Callable[[], bool],
) -> list[dict]:
    """Each kept layer (in ``order``) with its effect alone, for the report (not measured once
    time ran out)."""
    listed = []
    for name in (n for n in order if n in kept):
        alone = judged(set(order) - {name})[0] if time_left() else float("nan")
        listed.append({"node": name, "effect": options.effect(alone), "value_alone": alone})
    return listed
