"""``precision``: FP16/BF16 written into the graph (casts and converted weights).

TensorRT 11 is strongly typed: a layer runs in the type of its tensors, so reduced precision
is a graph rewrite. Every floating-point node is either *lowered* (its FP32 inputs and
outputs become FP16/BF16, its FP32 weights are converted) or *kept* in FP32; a Cast is
inserted only where a tensor crosses from one kind of node to the other, one per tensor and
target type, and Cast-of-Cast chains are folded, so no cascaded or no-op casts are emitted.
A node is kept when the keep list names it, when ONNX's schema of it has no FP16/BF16 at the
model's opset, or when the FP16 range guard finds a constant of it (weights, normalization
statistics, Constant-node values; no data needed) or, on calibration data, an activation that
FP16 cannot hold, or a local error far beyond FP16's rounding: run alone in FP16 on its own
FP32 inputs (``local_error``), its output's SQNR is below ``guard.min_local_snr_db``. That
one streaming pass also ranks the automatic search's suspects (``auto``), worst first.

Graphs that already hold Q/DQ are handled like any other: a lowered DequantizeLinear gets an
FP16 scale (opset 19 allows it: the model is raised, by ONNX's version converter where ops
changed meaning) and so outputs FP16, as TensorRT's strongly typed Q/DQ fusions require; a
DequantizeLinear and the op it feeds are lowered together or kept together, so no Cast comes
between them. The ``quantize`` pass's ``high_precision`` runs this pass after its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from pydantic import Field

from ..calibration import split_graph
from ..calibration.collect import DEFAULT_MEMORY_BUDGET, Observer, collect
from ..errors import DataError, RecipeError
from ..graph_io import peek
from ..metrics import DB_CEILING
from .base import Pass, PassContext, PassOptions, PassResult
from .fusion.opset import opset
from .graph_tools import (
    matches,
    name_nodes,
    onnx_dtype,
    raise_for,
    require_opset,
    shape_nodes,
    with_types,
)
from .local_error import DEFAULT_SAMPLES, local_snr, unmeasured
from .registry import register_pass
from .sensitivity import JUDGED, AutoOptions, Judge, search, uses_ranking

if TYPE_CHECKING:
    from ..calibration import DataSet

F32 = onnx.TensorProto.FLOAT
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
FP16_MAX = 65504.0
FP16_TINY = 2.0**-24
"""Below half of this, a value rounds to zero in FP16 (the smallest subnormal is 2**-24)."""
FP16_MIN_NORMAL = 2.0**-14
"""The smallest normal FP16 number: below it FP16 keeps fewer than its 11 significant bits."""
FP32_EXTREME = float(np.finfo(np.float32).max)
"""A constant this large (or infinite) stands for infinity (an attention mask's -3.4e38):
saturating it to +-65504 keeps its meaning, so the constant guard lets it through."""
LOCAL_SNR_DB = 30.0
"""A node whose output alone in FP16 is this far from FP32 or worse (3% RMS error) is kept:
rounding inputs, weights and output to FP16 costs 55-75 dB on real models (PP-OCRv4's
detector, recognizer and classifier, Silero VAD, BERT), 40 dB for a layer that cancels large
terms on synthetic data; PP-OCRv4's BatchNormalization whose variance FP16 cannot hold: -25."""
LOCAL_REPORTED = 10
"""The nodes of worst local error the report lists."""
QDQ_FP16_OPSET = 19
"""QuantizeLinear/DequantizeLinear take FP16/BF16 scales from opset 19."""
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
SCHEMA_TYPES = {"fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}
"""The lowered types as ONNX's operator schemas name them."""
SCALE_INPUT = 1
"""The scale's slot in QuantizeLinear and DequantizeLinear."""

DEFAULT_KEEP: tuple[str, ...] = (
    # Normalizations: mean/variance reductions overflow or lose precision in FP16 (the
    # classic failure of unfused LayerNorm: x**2 of activations > 256 exceeds 65504).
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Pow",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    # Exponentials and logs outside Softmax overflow quickly (exp(x) > 65504 for x > 11).
    "Exp",
    "Log",
    "Softplus",
    # Index/coordinate arithmetic: FP16 cannot count past 2048 exactly.
    "Range",
    "CumSum",
    "NonMaxSuppression",
    "RoiAlign",
    "TopK",
)
"""Op types kept in FP32 by default: numerically sensitive in FP16."""

FIXED_FP32_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (2,), "Upsample": (1,)}
"""Inputs that ONNX types as FP32 whatever the data type (Resize's scales)."""
ATTRIBUTE_TYPED = (
    "Constant",
    "ConstantOfShape",
    "RandomNormal",
    "RandomUniform",
    "EyeLike",
    "RandomNormalLike",
    "RandomUniformLike",
)
"""Ops whose output type comes from an attribute: kept, their consumers cast."""
TYPE_AGNOSTIC = ("Cast", "Shape", "Size")
EXACT_OPS = (
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Split",
    "Expand",
    "Tile",
    "Identity",
    "Cast",
    "Shape",
    "Size",
    "Pad",
    "DepthToSpace",
    "SpaceToDepth",
    "Where",
    "QuantizeLinear",
    "DequantizeLinear",
    "Relu",
    "MaxPool",
    "Max",
    "Min",
    "Neg",
    "Abs",
)
"""Ops that compute nothing a lower precision could change (beyond their inputs' rounding):
not candidates of the automatic search."""


class Keep(PassOptions):
    op_types: list[str] = list(DEFAULT_KEEP)
    """Op types kept in FP32 (default: DEFAULT_KEEP, numerically sensitive ops; [] lowers
    everything)."""
    nodes: list[str] = []
    """Regexes of node names kept in FP32 (searched anywhere in the name)."""


class Guard(PassOptions):
    enabled: bool = True
    """Keep in FP32 the nodes whose constants (weights, BatchNormalization statistics,
    Constant-node values, Q/DQ scales) leave FP16's range, and with calibration data those
    whose activations do."""
    overflow: Annotated[float, Field(gt=0)] = FP16_MAX
    """Keep a node when any of its constants or activations reaches this magnitude."""
    underflow: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Keep a node when more than this fraction of the non-zero values of one of its
    activations, or of the magnitude of one of its constants, would flush to 0."""
    min_local_snr_db: float | None = LOCAL_SNR_DB
    """With calibration data, keep a node whose output, computed alone in FP16 on its own FP32
    inputs, has an SQNR below this many dB against FP32 (the worst of ``local_samples``); null:
    not measured (``auto`` still ranks by it)."""
    local_samples: Annotated[int, Field(ge=1)] = DEFAULT_SAMPLES
    """Calibration samples each node's local error is measured on (the first ones)."""
    memory_budget: Annotated[int, Field(ge=1 << 20)] = DEFAULT_MEMORY_BUDGET
    """Bytes of activations exposed per calibration run (one sample) before tensors are
    grouped into several runs over the data."""


@register_pass("precision")
class Precision(Pass):
    """Lower floating-point math to FP16 or BF16 in the graph, keeping sensitive nodes in FP32."""

    exact = False  # its numbers move on purpose; the check's thresholds judge them

    class Options(PassOptions):
        dtype: Literal["fp16", "bf16"] = "fp16"
        keep_fp32: Keep = Keep()
        io: Literal["keep", "convert"] = "keep"
        """keep: model inputs and outputs keep their FP32 type; convert: they become dtype."""
        guard: Guard = Guard()
        """FP16 range guard on constants and, with calibration data, activations and each
        node's local error (BF16 has FP32's range and needs none)."""
        auto: AutoOptions | None = None
        """Keep the most sensitive nodes in FP32, as few as possible, until this passes. With
        calibration data, FP16's suspects are judged worst local error first."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph | PassResult:
        options: Any = self.options
        graph.toposort()
        name_nodes(graph)
        graph = with_types(graph)
        graph, reasons = self._qdq_opset(graph, ctx)
        float_nodes = [n for n in graph.nodes if _is_float_node(n)]
        shapes = shape_nodes(graph)
        for node in float_nodes:
            if node.name in shapes:
                continue  # shape arithmetic is never lowered and not worth listing
            if node.op in ATTRIBUTE_TYPED:
                continue
            if matches(node, options.keep_fp32.op_types, []):
                reasons[node.name] = f"op type {node.op} in keep_fp32"
            elif matches(node, [], options.keep_fp32.nodes):
                reasons[node.name] = "name matches keep_fp32.nodes"
            elif why := untyped_for(node, options.dtype, opset(graph)):
                reasons[node.name] = why
        reasons.update(_control_flow_fp32(graph, shapes))
        local: dict[str, float] | None = None
        if options.dtype == "fp16" and options.guard.enabled:
            candidates = [n for n in float_nodes if n.name not in shapes]
            reasons.update(self._constant_guard(candidates, reasons))
            guarded, local = self._guard(graph, float_nodes, shapes, reasons, ctx)
            reasons.update(guarded)
        lowered = {
            n.name
            for n in float_nodes
            if n.name not in reasons and n.name not in shapes and n.op not in ATTRIBUTE_TYPED
        }
        shared = fused_with_dequantize(graph, lowered)
        reasons.update(shared)
        lowered -= set(shared)
        kept_auto: list[dict] = []
        if options.auto is not None and lowered:
            feeds = (ctx.validation or ctx.feeds)[: options.auto.samples]
            if not feeds:
                raise DataError("precision.auto needs validation data (data.validation or check)")
            reference = gs.export_onnx(graph.copy(), do_type_check=False)
            try:
                judge = Judge(reference, feeds, options.auto)
            except ValueError as error:
                raise RecipeError(f"precision: {error}") from None
            measured = [n for n in graph.nodes if n.name in lowered and n.op not in EXACT_OPS]
            candidates = [n.name for n in measured]
            ranks = uses_ranking(options.auto, len(candidates)) and options.dtype == "fp16"
            if (
                local is None
                and ranks
                and ctx.calibration is not None
                and self._local_fits(graph, ctx)
            ):
                local = self._local(graph, measured, ctx.calibration, ctx)
            # BF16 has no ONNX Runtime CPU kernels: judge an FP32 graph that rounds every
            # lowered value to BF16 instead (TensorRT accumulates in FP32 as well).
            emulate = options.dtype == "bf16"
            result = search(
                candidates,
                lambda keep: gs.export_onnx(
                    self.lower(graph.copy(), lowered - keep, emulate=emulate)
                ),
                judge,
                ranking=local,
            )
            kept_auto = result.kept
            for item in kept_auto:
                reasons[item["node"]] = f"auto: effect {item['effect']:.3g} when lowered alone"
            lowered -= {k["node"] for k in kept_auto}
            shared = fused_with_dequantize(graph, lowered)
            reasons.update(shared)
            lowered -= set(shared)
            ctx.details["auto"] = result.to_json(options.auto.metric, options.auto.limit)
            if result.out_of_time:
                ctx.warnings.append(
                    f"precision.auto: the time budget ({options.auto.max_minutes:g} min) ran out; "
                    f"kept the best found: {len(result.kept)} nodes in FP32, "
                    f"{len(result.untried)} of them never tried lowered (details.auto.untried)"
                )
            if not result.reached and not result.out_of_time:
                ctx.warnings.append(
                    f"precision.auto: {options.auto.metric} {result.value:.6g} does not reach "
                    f"{options.auto.limit} even with every node in FP32"
                )
        graph = self.lower(graph, lowered)
        nodes = {n.name: n for n in graph.nodes}
        ctx.details["dtype"] = options.dtype
        ctx.details["lowered_nodes"] = len(lowered)
        kept = [
            {"node": name, "op": nodes[name].op if name in nodes else None, "reason": reason}
            for name, reason in reasons.items()
        ]
        ctx.details["kept_fp32"] = kept
        ctx.details["excluded_nodes"] = kept_auto
        return PassResult(graph, kept=kept)

    # -- the opset of Q/DQ with FP16 scales -----------------------------------------------

    def _qdq_opset(self, graph: gs.Graph, ctx: PassContext) -> tuple[gs.Graph, dict[str, str]]:
        """The graph at opset 19 when it holds Q/DQ (a lowered QuantizeLinear or
        DequantizeLinear takes an FP16/BF16 scale, which ONNX allows from opset 19), raised
        by ``raise_for`` (declared, or ONNX's version converter for older models); when it
        cannot be, the Q/DQ stay FP32, with the reason (and their fused consumers with them)."""
        qdq = [n for n in graph.nodes if n.op in QDQ_OPS]
        if not qdq or opset(graph) >= QDQ_FP16_OPSET:
            return graph, {}
        raised, how = raise_for(graph, QDQ_FP16_OPSET, "FP16/BF16 scales of Q/DQ")
        if raised is None:
            ctx.warnings.append(f"precision: Q/DQ stay FP32: {how}")
            ctx.details["opset"] = {"needed": QDQ_FP16_OPSET, "unchanged": how}
            return graph, {n.name: f"opset: {how}" for n in qdq}
        ctx.details["opset"] = how
        ctx.log.info("precision: opset %(from)s -> %(to)s (%(by)s)", how)
        if raised is not graph:  # rewritten by the version converter: typed and named anew
            graph = raised
            graph.toposort()
            name_nodes(graph)
            graph = with_types(graph)
        return graph, {}

    # -- the range guard ------------------------------------------------------------------

    def _constant_guard(self, nodes: list[gs.Node], already: dict[str, str]) -> dict[str, str]:
        """Nodes a constant input of which FP16 cannot hold, with the reason; no data needed.

        The activation guard sees what flows at run time; a weight, a BatchNormalization's
        statistics (a variance of 9.8e7 in PaddleOCR's detector) or a Constant node's value
        is converted (an initializer, saturated) or cast (a Constant node's output, to inf)
        without ever flowing, so it is checked here: over ``guard.overflow`` (stand-ins for
        infinity aside: FP32_EXTREME), or more than ``guard.underflow`` of its magnitude
        flushed to 0. A Q/DQ scale must stay a normal FP16 number (>= 2**-14): a subnormal
        one loses its significant bits, and one flushed to 0 is invalid."""
        options: Any = self.options
        guard = options.guard
        found: dict[str, str] = {}
        for node in nodes:
            if node.name in already:
                continue
            fixed = FIXED_FP32_INPUTS.get(node.op, ())
            for index, tensor in enumerate(node.inputs):
                values = None if index in fixed else constant_values(tensor)
                if values is None:
                    continue
                scale = node.op in QDQ_OPS and index == SCALE_INPUT
                why = _fp16_misfit(values, guard.overflow, guard.underflow, scale)
                if why:
                    found[node.name] = f"guard: constant '{tensor.name}' {why}"
                    break
        return found

    def _guard(
        self,
        graph: gs.Graph,
        float_nodes: list[gs.Node],
        shapes: set[str],
        already: dict[str, str],
        ctx: PassContext,
    ) -> tuple[dict[str, str], dict[str, float] | None]:
        """Nodes whose activations on the calibration data overflow FP16 or mostly flush to
        zero, or whose local error is too large, with the reason; and the local errors (None
        when not measured). Without calibration data: none. Constant nodes' values are the
        constant guard's. One streaming pass gives both."""
        options: Any = self.options
        guard = options.guard
        data = ctx.calibration
        if data is None:
            return {}, None
        if data.synthetic:
            ctx.warnings.append(
                "precision: FP16 range guard ran on synthetic data; declare data.calibration"
            )
        data.first()
        watched = {
            t.name
            for n in float_nodes
            if n.name not in already
            for t in (*n.inputs, *n.outputs)
            if isinstance(t, gs.Variable) and onnx_dtype(t) == F32 and not _from_constant_node(t)
        }
        stats: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in watched}

        def observe(name: str, array: np.ndarray) -> None:
            if name not in stats:
                return
            values = np.abs(np.asarray(array, dtype=np.float32))
            entry = stats[name]
            if values.size:
                entry[0] = max(entry[0], float(np.max(values, initial=0.0)))
            nonzero = values != 0
            entry[1] += float(np.count_nonzero(nonzero))
            entry[2] += float(np.count_nonzero(nonzero & (values < FP16_TINY / 2)))

        local = None
        if guard.min_local_snr_db is not None and self._local_fits(graph, ctx):
            measured = [
                n
                for n in float_nodes
                if n.name not in already
                and n.name not in shapes
                and n.op not in ATTRIBUTE_TYPED
                and n.op not in EXACT_OPS
            ]
            local = self._local(graph, measured, data, ctx, sorted(watched), observe)
        else:
            # The weights are fed from the graph's arrays (read from disk for a large model),
            # never serialized: the session adds no copy of them.
            model, weights = split_graph(graph)
            collect(model, data, sorted(watched), observe, guard.memory_budget, weights=weights)
            del model, weights
        found = {}
        for node in float_nodes:
            if node.name in already:
                continue
            for role, tensors in (("output", node.outputs), ("input", node.inputs)):
                for tensor in tensors:
                    if tensor.name not in stats:
                        continue
                    amax, nonzero, tiny = stats[tensor.name]
                    if not np.isfinite(amax) or amax >= guard.overflow:
                        found[node.name] = (
                            f"guard: {role} '{tensor.name}' reaches {amax:.4g} "
                            f"(FP16 max {FP16_MAX:g})"
                        )
                    elif nonzero and tiny / nonzero > guard.underflow:
                        found[node.name] = (
                            f"guard: {role} '{tensor.name}' would flush {tiny / nonzero:.0%} of "
                            "its non-zero values to 0 in FP16"
                        )
                    if node.name in found:
                        break
                if node.name in found:
                    break
            snr = (local or {}).get(node.name, np.nan)
            limit = guard.min_local_snr_db
            if node.name not in found and limit is not None and snr < limit:
                found[node.name] = (
                    f"guard: local error: its output alone in FP16 has SQNR {snr:.1f} dB "
                    f"(below {limit:g})"
                )
        return found, local

    @staticmethod
    def _local_fits(graph: gs.Graph, ctx: PassContext) -> bool:
        """Whether the local error can be measured (``local_error.unmeasured``; details say
        why not). The guard's constant and activation checks run either way."""
        why = unmeasured(graph)
        if why is not None:
            ctx.details["local_error"] = why
        return why is None

    def _local(
        self,
        graph: gs.Graph,
        nodes: list[gs.Node],
        data: DataSet,
        ctx: PassContext,
        watch: Sequence[str] = (),
        observe: Observer | None = None,
    ) -> dict[str, float]:
        """Each node's local FP16 error (``local_error.local_snr``), the worst in the report."""
        options: Any = self.options
        guard = options.guard
        # Inputs and outputs in FP16 too: rounded in the data, where ONNX Runtime keeps it.
        alone = Precision(options.model_copy(update={"io": "convert"}))
        local = local_snr(
            graph,
            nodes,
            alone.lower,
            data,
            guard.local_samples,
            guard.memory_budget,
            watch,
            observe,
        )
        ops = {n.name: n.op for n in nodes}
        measured = sorted((v, n) for n, v in local.items() if not np.isnan(v))
        ctx.details["local_error"] = {
            "judged": JUDGED,
            "samples": guard.local_samples,
            "nodes": len(measured),
            "unmeasured": [n for n, v in local.items() if np.isnan(v)],
            "worst": [
                {"node": n, "op": ops[n], "snr_db": max(-DB_CEILING, min(DB_CEILING, v))}
                for v, n in measured[:LOCAL_REPORTED]
            ],
        }
        return local

    # -- the rewrite ----------------------------------------------------------------------

    def lower(self, graph: gs.Graph, lowered: set[str], emulate: bool = False) -> gs.Graph:
        """Lower the nodes named in ``lowered`` (in place); ``emulate`` instead rounds their
        values to the target type inside an FP32 graph (for judging BF16 on a CPU). A
        DequantizeLinear and its consumers are lowered together or not at all
        (``fused_with_dequantize``)."""
        options: Any = self.options
        lowered = lowered - set(fused_with_dequantize(graph, lowered))
        target = onnx.TensorProto.FLOAT16 if options.dtype == "fp16" else onnx.TensorProto.BFLOAT16
        suffix = options.dtype
        if emulate:
            return _emulate(graph, lowered, target)
        np_target = np.float16 if target == onnx.TensorProto.FLOAT16 else ml_dtypes.bfloat16
        nodes = [n for n in graph.nodes if n.name in lowered]
        graph_outputs = {id(t) for t in graph.outputs}
        float32 = {
            t.name
            for t in graph.tensors().values()
            if isinstance(t, gs.Variable) and onnx_dtype(t) == F32
        }
        casts: dict[tuple[str, int], gs.Variable] = {}
        constants: dict[str, gs.Constant] = {}

        def cast(tensor: gs.Tensor, to: int) -> gs.Variable:
            key = (tensor.name, to)
            if key not in casts:
                label = "fp32" if to == F32 else suffix
                out = gs.Variable(f"{tensor.name}_{label}", dtype=_np(to), shape=tensor.shape)
                graph.nodes.append(
                    gs.Node("Cast", f"{tensor.name}_Cast_{label}", {"to": to}, [tensor], [out])
                )
                casts[key] = out
            return casts[key]

        # Model outputs computed by lowered nodes keep their name and FP32 type (io: keep):
        # the node writes a renamed low-precision tensor and a Cast restores the output.
        low_outputs: set[str] = set()
        for node in nodes:
            for index, tensor in enumerate(node.outputs):
                if tensor.name not in float32:
                    continue
                if id(tensor) in graph_outputs and options.io == "keep":
                    renamed = gs.Variable(
                        f"{tensor.name}_{suffix}", dtype=np_target, shape=tensor.shape
                    )
                    for consumer in list(tensor.outputs):
                        _replace_input(consumer, tensor, renamed)
                    node.outputs[index] = renamed
                    graph.nodes.append(
                        gs.Node(
                            "Cast", f"{tensor.name}_Cast_fp32", {"to": F32}, [renamed], [tensor]
                        )
                    )
                    casts[(renamed.name, F32)] = tensor
                    low_outputs.add(renamed.name)
                else:
                    tensor.dtype = np_target
                    low_outputs.add(tensor.name)
        if options.io == "convert":
            for tensor in graph.inputs:
                if tensor.name in float32:
                    tensor.dtype = np_target
                    low_outputs.add(tensor.name)
        for node in nodes:
            if node.op == "Cast":
                if node.attrs.get("to") == F32:
                    node.attrs["to"] = target
                continue
            fixed = FIXED_FP32_INPUTS.get(node.op, ())
            for index, tensor in enumerate(node.inputs):
                if index in fixed:
                    continue
                if isinstance(tensor, gs.Constant):
                    if tensor.dtype == np.float32:
                        if tensor.name not in constants:
                            # peek: an on-disk FP32 weight is read, converted and let go
                            constants[tensor.name] = gs.Constant(
                                f"{tensor.name}_{suffix}", _convert(peek(tensor), np_target)
                            )
                        node.inputs[index] = constants[tensor.name]
                elif tensor.name in float32 and tensor.name not in low_outputs:
                    node.inputs[index] = cast(tensor, target)
        for node in list(graph.nodes):
            if node.name in lowered or node.op in TYPE_AGNOSTIC:
                continue  # Cast, Shape and Size read any type: they need no Cast before them
            for index, tensor in enumerate(node.inputs):
                if isinstance(tensor, gs.Variable) and tensor.name in low_outputs:
                    node.inputs[index] = cast(tensor, F32)
        if options.io == "convert":
            for index, tensor in enumerate(graph.outputs):
                if tensor.name in float32 and tensor.name not in low_outputs:
                    graph.outputs[index] = cast(tensor, target)
        if any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
            require_opset(graph, QDQ_FP16_OPSET)
        fold_casts(graph)
        graph.cleanup().toposort()
        return graph


def fused_with_dequantize(graph: gs.Graph, lowered: set[str]) -> dict[str, str]:
    """Nodes of ``lowered`` that must stay FP32 with a DequantizeLinear, and why.

    TensorRT fuses a DequantizeLinear into the op that consumes it (DQ -> Conv is one INT8
    kernel) only when nothing stands between them; a Cast would, and the op would run in float
    on dequantized values. So a DequantizeLinear and its consumers run in one type: when one of
    them stays FP32 (kept, guarded, or a scale FP16 cannot hold), all do. Cast, Shape and Size
    read any type and take no part."""
    groups = []
    for node in graph.nodes:
        if node.op == "DequantizeLinear":
            consumers = [c for t in node.outputs for c in t.outputs if c.op not in TYPE_AGNOSTIC]
            groups.append([node, *consumers])
    found: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for group in groups:
            kept = [n for n in group if n.name not in lowered or n.name in found]
            if not kept:
                continue
            cause = kept[0]
            for node in group:
                if node.name in lowered and node.name not in found:
                    found[node.name] = (
                        f"fused with '{cause.name}' ({cause.op}), which stays FP32: a "
                        "DequantizeLinear and its consumers share one type"
                    )
                    changed = True
    return found


def constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    """The FP32 values of a constant input (an initializer, or a Constant node's output), or
    None for anything computed at run time."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(peek(tensor)) if tensor.dtype == np.float32 else None
    if not _from_constant_node(tensor):
        return None
    producer = tensor.inputs[0]
    value = producer.attrs.get("value")
    if isinstance(value, gs.Constant):
        return np.asarray(value.values) if value.dtype == np.float32 else None
    for name in ("value_float", "value_floats"):
        if name in producer.attrs:
            return np.asarray(producer.attrs[name], dtype=np.float32)
    return None


def untyped_for(node: gs.Node, dtype: str, version: int) -> str:
    """Why ONNX's schema of ``node`` at opset ``version`` takes no ``dtype`` (fp16, bf16) where
    the node now has FP32 ('' when it does, or for an op outside the standard domain): Conv,
    pooling and HardSigmoid take BF16 only from opset 22, for instance."""
    if node.domain not in (None, "", "ai.onnx"):
        return ""
    try:
        schema = onnx.defs.get_schema(node.op, version, "")
    except onnx.defs.SchemaError:
        return ""
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    fixed = FIXED_FP32_INPUTS.get(node.op, ())
    for formal, actual in ((schema.inputs, node.inputs), (schema.outputs, node.outputs)):
        for index, tensor in enumerate(actual):
            if (
                not formal
                or onnx_dtype(tensor) != F32
                or (actual is node.inputs and index in fixed)
            ):
                continue
            param = formal[min(index, len(formal) - 1)]  # the last one may be variadic
            types = allowed.get(param.type_str)
            if types is not None and SCHEMA_TYPES[dtype] not in types:
                return (
                    f"ONNX {node.op}-{schema.since_version} (opset {version}) takes no {dtype} "
                    f"for '{param.name}'"
                )
    return ""


def _from_constant_node(tensor: gs.Tensor) -> bool:
    return len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant"


def _fp16_misfit(values: np.ndarray, overflow: float, underflow: float, scale: bool) -> str:
    """Why FP16 cannot hold these constant values ('' when it can)."""
    magnitudes = np.abs(np.asarray(values, dtype=np.float32)).ravel()
    if not magnitudes.size:
        return ""
    real = magnitudes[magnitudes < FP32_EXTREME]  # infinities' stand-ins saturate
    amax = float(real.max(initial=0.0))
    if amax >= overflow:
        return f"reaches {amax:.4g} (FP16 max {FP16_MAX:g})"
    nonzero = magnitudes[magnitudes != 0]
    if scale:
        smallest = float(nonzero.min(initial=np.inf))
        if smallest < FP16_MIN_NORMAL:
            return (
                f"(a scale) holds {smallest:.3g}, below FP16's smallest normal "
                f"{FP16_MIN_NORMAL:.3g}"
            )
        return ""
    # By magnitude, not by count: a weight whose decayed entries (1e-9 beside 0.1) flush loses
    # nothing that matters; an epsilon of 1e-12 loses all it has.
    mass = float(nonzero.sum(dtype=np.float64))
    flushed = float(nonzero[nonzero < FP16_TINY / 2].sum(dtype=np.float64))
    if mass and flushed / mass > underflow:
        return f"would flush {flushed / mass:.0%} of its magnitude to 0 in FP16"
    return ""


def fold_casts(graph: gs.Graph) -> None:
    """Fold Cast chains between float types and remove Casts to the type they already have,
    so that no cascaded (Cast -> Cast) or no-op Cast remains."""
    outputs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        if node.op != "Cast" or not node.inputs:
            continue
        source = node.inputs[0]
        producer = source.inputs[0] if source.inputs else None
        if (
            producer is not None
            and producer.op == "Cast"
            and node.attrs.get("to") in FLOAT_TYPES
            and producer.attrs.get("to") in FLOAT_TYPES
            and producer.inputs
        ):
            origin = producer.inputs[0]
            origin_type = onnx_dtype(origin)
            # Float -> float -> float: skip the middle type. Integer sources may skip an FP32
            # step too (their values are exact in either float type's range of interest).
            if origin_type is not None:
                node.inputs[0] = origin
                source = origin
        if onnx_dtype(source) == node.attrs.get("to") and id(node.outputs[0]) not in outputs:
            result = node.outputs[0]
            for consumer in list(result.outputs):
                _replace_input(consumer, result, source)
            node.inputs.clear()
            node.outputs.clear()


def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """Swap ``old`` for ``new`` by index, which keeps graphsurgeon's producer/consumer links."""
    for index, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[index] = new


def _emulate(graph: gs.Graph, lowered: set[str], target: int) -> gs.Graph:
    """FP32 graph in which lowered nodes see and produce values rounded to ``target``."""
    np_target = np.float16 if target == onnx.TensorProto.FLOAT16 else ml_dtypes.bfloat16
    for node in [n for n in graph.nodes if n.name in lowered]:
        for index, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant) and tensor.dtype == np.float32:
                rounded = _convert(peek(tensor), np_target).astype(np.float32)
                node.inputs[index] = gs.Constant(f"{tensor.name}_rounded", rounded)
        for index, tensor in enumerate(list(node.outputs)):
            if onnx_dtype(tensor) != F32:
                continue
            raw = gs.Variable(f"{tensor.name}_raw", dtype=np.float32, shape=tensor.shape)
            low = gs.Variable(f"{tensor.name}_low", dtype=_np(target), shape=tensor.shape)
            node.outputs[index] = raw
            graph.nodes.append(
                gs.Node("Cast", f"{tensor.name}_round", {"to": target}, [raw], [low])
            )
            graph.nodes.append(gs.Node("Cast", f"{tensor.name}_back", {"to": F32}, [low], [tensor]))
    graph.cleanup().toposort()
    return graph


def _convert(values: np.ndarray, np_target: Any) -> np.ndarray:
    """FP32 values in the target type, saturating to its finite range instead of becoming
    infinite (what an attention mask's -3.4e38 needs: -65504 still masks)."""
    if np_target is np.float16:
        values = np.clip(values, -FP16_MAX, FP16_MAX)
    return np.asarray(np.asarray(values).astype(np_target))


def _np(onnx_type: int) -> Any:
    if onnx_type == onnx.TensorProto.BFLOAT16:
        return ml_dtypes.bfloat16
    return onnx.helper.tensor_dtype_to_np_dtype(onnx_type)


def _control_flow_fp32(graph: gs.Graph, skip: set[str] | dict) -> dict[str, str]:
    """If, Loop and Scan nodes, and the producers of what their bodies read from the main
    graph, stay FP32: the bodies are left as they are (FP32), and an outer value they read
    directly cannot be given a Cast."""
    reasons: dict[str, str] = {}
    for node in graph.nodes:
        bodies = [v for v in node.attrs.values() if isinstance(v, gs.Graph)]
        if not bodies or node.name in skip:
            continue
        reasons[node.name] = f"control flow ({node.op}): its subgraphs stay FP32"
        for tensor in _outer_reads(bodies):
            for producer in tensor.inputs:
                if producer.name not in skip:
                    reasons.setdefault(producer.name, f"read inside {node.op} '{node.name}'")
    return reasons


def _outer_reads(bodies: list[gs.Graph]) -> list[gs.Tensor]:
    """The values that ``bodies`` (and the bodies nested in them) read from outside."""
    local, read, pending = set(), [], list(bodies)
    while pending:
        body = pending.pop()
        local.update(id(t) for t in body.inputs)
        for inner in body.nodes:
            local.update(id(t) for t in inner.outputs)
            read.extend(t for t in inner.inputs if isinstance(t, gs.Variable))
            pending.extend(v for v in inner.attrs.values() if isinstance(v, gs.Graph))
    return [t for t in read if id(t) not in local]


def _is_float_node(node: gs.Node) -> bool:
    if node.op == "Cast":
        return node.attrs.get("to") == F32
    return any(onnx_dtype(t) == F32 for t in (*node.inputs, *node.outputs))
