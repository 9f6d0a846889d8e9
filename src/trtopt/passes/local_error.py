"""Local error: each layer run alone in lower precision on its own captured FP32 inputs.

Judging what lowering one layer does to the model's outputs costs a full run of the model per
layer (336 runs, 50 minutes, on a text detector at 640x640). A layer's *local* error costs
one streaming pass for all of them: the FP32 model runs sample by sample
(``calibration.collect``, within its memory budget), every candidate's inputs and outputs are
captured, and each candidate is run alone in the lowered form on those inputs (one small
ONNX Runtime model per layer, built once). The SQNR of its output against the FP32 output
(``metrics.snr_db``, the worst sample) says what the layer does to its own values: rounding
its inputs and weights costs FP16 about 70 dB; a constant or a value FP16 cannot hold (a
BatchNormalization variance of 9.8e7, an activation past 65504) shows as a few dB or -inf.

It does not say how much the model's outputs move (a later layer may amplify or drown the
error), so it orders the automatic search's suspects and, far below FP16's own rounding, keeps
a layer in FP32 outright.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .. import emulation
from ..calibration import DataSet, split_graph
from ..calibration.collect import DEFAULT_MEMORY_BUDGET, Observer, collect, groups
from ..calibration.sources import cut
from ..graph_io import peek, weight_bytes
from ..metrics import snr_db
from ..model import EXTERNAL_DATA_THRESHOLD

log = logging.getLogger("trtopt.passes")

DEFAULT_SAMPLES = 4
"""Samples of the data set each layer is measured on (the worst counts)."""
WEIGHTS_LIMIT = EXTERNAL_DATA_THRESHOLD
"""Weights (bytes) above which the local error is not measured: each node's session holds its
own weights beside the model that streams the data, which for a model this large (saved with
external data) holds it a second time (a 2 GiB transformer's FP16 pass peaked at 2.8x its
size)."""
Lower = Callable[[gs.Graph, set[str]], gs.Graph]
"""Rewrites the named nodes of a graph into their lowered form, in place, and returns it
(``Precision.lower``)."""


def unmeasured(graph: gs.Graph) -> str | None:
    """Why :func:`local_snr` would not measure ``graph`` (None: it would)."""
    weights = weight_bytes(graph)
    if weights <= WEIGHTS_LIMIT:
        return None
    return (
        f"not measured: {weights / 2**30:.2f} GiB of weights, over {WEIGHTS_LIMIT / 2**30:g} GiB "
        "(every node's session would hold its own)"
    )


def local_snr(
    graph: gs.Graph,
    nodes: Sequence[gs.Node],
    lower: Lower,
    data: DataSet,
    samples: int = DEFAULT_SAMPLES,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    watch: Sequence[str] = (),
    observe: Observer | None = None,
) -> dict[str, float]:
    """The local SQNR in dB of each of ``nodes`` (of ``graph``, typed), lowered alone by
    ``lower``, on the first ``samples`` samples of ``data``: the worst sample's, over the
    node's float outputs. NaN where it cannot be measured (a node that cannot run alone on
    ONNX Runtime, one with no float output, a non-finite FP32 output).

    ``memory_budget``: bytes of captured tensors per run, as ``collect`` takes it; the nodes are
    measured in several passes over the data when one sample's tensors exceed it.
    ``watch``/``observe``: other tensors to stream in the same pass, and the observer every
    tensor streamed is handed to once per sample (the FP16 range guard's statistics)."""
    model, weights = split_graph(graph)
    first = next(cut(data.first(), data.inputs))
    shapes = {name: np.shape(array) for name, array in first.items()}
    del first
    needs = {n.name: _captured(n) for n in nodes}
    # The tensors in node order, cut into runs within the budget; a node is measured in the
    # run that holds the last of its tensors, its earlier ones collected again there.
    ordered = list(dict.fromkeys([*(t for n in nodes for t in needs[n.name]), *watch]))
    planned = groups(model, ordered, memory_budget, shapes) or [[]]
    run_of = {t: index for index, names in enumerate(planned) for t in names}
    members: list[list[gs.Node]] = [[] for _ in planned]
    for node in nodes:
        members[max((run_of[t] for t in needs[node.name]), default=0)].append(node)
    # With an observer the whole data set streams (it sees every sample); without, only
    # the samples measured.
    source = data if observe is not None else _limited(data, samples)
    found: dict[str, float] = {}
    for names, measured in zip(planned, members):
        measure = _Measure(graph, measured, needs, lower, samples)
        tensors = list(dict.fromkeys([*names, *(t for n in measured for t in needs[n.name])]))
        own = set(names)  # the observer is handed each tensor once per sample

        def observe_both(name: str, array: np.ndarray, measure=measure, own=own) -> None:
            if observe is not None and name in own:
                observe(name, array)
            measure.observe(name, array)

        # Planned above, so that a node's tensors arrive in one run: not split again.
        collect(model, source, tensors, observe_both, sys.maxsize, weights=weights)
        found.update(measure.results())
    return found


def _captured(node: gs.Node) -> list[str]:
    """What a node's run alone needs from the model's run: its computed inputs and outputs."""
    inputs = [t.name for t in node.inputs if t.name and _constant(t) is None]
    outputs = [t.name for t in node.outputs if t.name]
    return list(dict.fromkeys([*inputs, *outputs]))


def _limited(data: DataSet, samples: int) -> DataSet:
    """``data`` cut to its first ``samples`` samples."""
    limit = min(samples, data.limit) if data.limit else samples
    return dataclasses.replace(data, source=data.source.model_copy(update={"limit": limit}))


class _Measure:
    """Runs each node alone as the tensors of one sample arrive, and keeps its worst SQNR."""

    def __init__(
        self,
        graph: gs.Graph,
        nodes: Sequence[gs.Node],
        needs: dict[str, list[str]],
        lower: Lower,
        samples: int,
    ) -> None:
        self.samples = samples
        self.needs = {n.name: needs[n.name] for n in nodes}
        self.sessions = {n.name: alone(graph, n, lower) for n in nodes}
        self.users: dict[str, list[str]] = {}
        for name, tensors in self.needs.items():
            for tensor in tensors:
                self.users.setdefault(tensor, []).append(name)
        self.missing = {name: len(t) for name, t in self.needs.items()}
        self.left = {tensor: len(users) for tensor, users in self.users.items()}
        self.held: dict[str, np.ndarray] = {}
        self.typed: dict[tuple[str, str], np.ndarray] = {}
        """Held tensors in the type a lowered node takes (converted once for all its users)."""
        self.worst = {name: math.inf for name in self.needs}
        self.measured = {name: 0 for name in self.needs}

    def observe(self, tensor: str, array: np.ndarray) -> None:
        users = self.users.get(tensor)
        if not users:
            return
        self.held[tensor] = array
        for name in users:
            self.missing[name] -= 1
            if self.missing[name]:
                continue
            self.missing[name] = len(self.needs[name])
            self._run(name)
            for needed in self.needs[name]:
                self.left[needed] -= 1
                if not self.left[needed]:  # every user has run on this sample
                    del self.held[needed]
                    self.typed.pop((needed, "tensor(float16)"), None)
                    self.left[needed] = len(self.users[needed])

    def _run(self, name: str) -> None:
        session = self.sessions[name]
        if session is None or math.isnan(self.worst[name]) or self.measured[name] >= self.samples:
            return
        # Fed in the type the lowered node takes, rounded here: ONNX Runtime drops a Cast to
        # FP16 in front of an op it has no FP16 kernel for (a BatchNormalization computes
        # from the FP32 values as if never lowered).
        feed = {i.name: self._typed(i.name, i.type) for i in session.get_inputs()}
        try:
            got = session.run(None, feed)
        except Exception as error:  # ONNX Runtime raises its own types
            log.debug("local error: %s does not run alone: %s", name, error)
            self.worst[name] = math.nan
            return
        values = []
        for output, array in zip(session.get_outputs(), got):
            expected = self.held[output.name]
            if expected.dtype != np.float32:
                continue
            found = snr_db(expected, array)
            if math.isnan(found):  # a NaN lowered (the worst), or a reference not finite
                found = -math.inf if np.isfinite(expected).all() else math.nan
            values.append(found)
        unknown = not values or any(math.isnan(v) for v in values)
        self.worst[name] = math.nan if unknown else min(self.worst[name], *values)
        self.measured[name] += 1

    def _typed(self, tensor: str, onnx_type: str) -> np.ndarray:
        array = self.held[tensor]
        if onnx_type != "tensor(float16)" or array.dtype != np.float32:
            return array
        key = (tensor, onnx_type)
        if key not in self.typed:
            with np.errstate(over="ignore"):  # what FP16 makes of it: inf, as a Cast would
                self.typed[key] = array.astype(np.float16)
        return self.typed[key]

    def results(self) -> dict[str, float]:
        return {
            name: value if self.measured[name] else math.nan for name, value in self.worst.items()
        }


def alone(graph: gs.Graph, node: gs.Node, lower: Lower) -> ort.InferenceSession | None:
    """An ONNX Runtime session of ``node`` alone, lowered by ``lower``: its computed inputs
    are the model's inputs, its constants (Constant nodes' values too) its own; None when it
    cannot be built. ``lower`` should give the lowered node's inputs and outputs its type
    (``io: convert``): the inputs' rounding is then in the data; the session rounds the rest as
    every judgement does (``emulation.session``)."""
    inputs: dict[str, gs.Variable] = {}
    copied = []
    for tensor in node.inputs:
        value = _constant(tensor)
        if value is not None:
            # A constant of its own: graphsurgeon finds a node among a tensor's consumers by
            # equality, which this copy of the node shares with the model's.
            copied.append(gs.Constant(tensor.name, peek(value)))
        elif isinstance(tensor, gs.Variable) and tensor.name:
            if tensor.name not in inputs:
                inputs[tensor.name] = gs.Variable(tensor.name, tensor.dtype, tensor.shape)
            copied.append(inputs[tensor.name])
        else:
            copied.append(tensor)
    outputs = [gs.Variable(t.name, t.dtype, t.shape) for t in node.outputs]
    single = gs.Graph(
        [gs.Node(node.op, node.name, dict(node.attrs), copied, outputs, domain=node.domain)],
        list(inputs.values()),
        [t for t in outputs if t.name],
        opset=graph.opset,
        import_domains=graph.import_domains,
        functions=graph.functions,
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # One node: nothing to optimize, and a thread pool of its own per session cost more to
    # start than the node takes to run. No memory arena: every session would keep the largest
    # output it ran (the PP-OCRv4 detector at 640x640: 4.0 GB peak in all, 1.4 without).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    try:
        model = gs.export_onnx(lower(single, {node.name}), do_type_check=False)
        return emulation.session(model, options)
    except Exception as error:  # graphsurgeon and ONNX Runtime raise many
        log.debug("local error: %s cannot run alone: %s", node.name, error)
        return None


def _constant(tensor: gs.Tensor) -> gs.Constant | None:
    """The values of a constant input: an initializer, or a Constant node's tensor value."""
    if isinstance(tensor, gs.Constant):
        return tensor
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return value
    return None
