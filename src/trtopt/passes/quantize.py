"""``quantize``: explicit INT8 or FP8 Q/DQ, or INT4 weight-only DequantizeLinear, placed the
way TensorRT's strongly typed builder wants it.

TensorRT 11 has no implicit INT8 and no calibrators: precision is what the graph says, so
this pass calibrates activation ranges on ONNX Runtime (streaming, cached; see
trtopt.calibration) and writes QuantizeLinear/DequantizeLinear pairs into the ONNX graph.
Every placement rule below cites TensorRT's "Working with Quantized Types" guidance
(explicit quantization, Q/DQ layer placement recommendations) next to the code applying it.

INT8 and FP8 (E4M3) share the placement and the calibrated ranges; they differ in the
quantized type (:class:`QuantizedType`: scale = amax / 127 or amax / 448) and in what FP8
cannot run, which ``FP8_RULES`` names node by node (the reason lands in the pass's details).
A model below the opset its Q/DQ need (13, FP8 19) is converted by ONNX's version converter.

INT4 (``dtype: int4``) is weight-only, as TensorRT runs it: the constant weights of MatMul and
Gemm become block-wise INT4 behind a DequantizeLinear (opset 21, ``axis`` + ``block_size``, no
activation Q/DQ), scales in the weight's float type; ``INT4_RULES`` name what stays float.
``method: rtn`` rounds each block to nearest (trtopt.passes.blockwise); ``method: awq`` chooses
each block's clip ratio on calibration data and, with ``awq: {scale: true}``, a per-channel
scale first (trtopt.passes.awq), dividing the activation by it with one Mul ahead of the
products that read it.

``placement: onnxruntime`` places INT8 Q/DQ for ONNX Runtime's CPU kernels instead
(trtopt.passes.ort_placement: outputs quantized too, so that its QDQ fusions form QLinearConv,
QLinearMatMul, QLinearAdd ...); the calibration, exclusions and the automatic search are the
same for both placements, which hand this pass a :class:`~trtopt.passes.qdq_plan.Plan`. The
default is tensorrt here: a pass knows no backend; a recipe whose build is ONNX Runtime's
gives it onnxruntime (trtopt.pipeline).

``high_precision: fp16 | bf16`` lowers the float ops around the Q/DQ with the ``precision``
pass itself (its keep list and range guard; the Q/DQ take scales of that type). It defaults to
fp32 here: a pass knows no backend; a recipe whose build is TensorRT's gives it fp16
(trtopt.pipeline). The automatic search judges every candidate with that type around it, the
graph that would ship.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import ml_dtypes  # onnx's own dependency: the numpy types of FLOAT8E4M3FN and friends
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from pydantic import Field, ValidationInfo, field_validator

from ..calibration import calibrate_each, split_graph, tensorrt_cache
from ..calibration.calibrators import Calibrator
from ..calibration.collect import DEFAULT_MEMORY_BUDGET, collect
from ..errors import DataError, RecipeError
from ..graph_io import peek
from . import awq, blockwise, ort_placement
from .base import Pass, PassContext, PassOptions, PassResult
from .fusion.opset import opset
from .fusion.pattern import constant_value
from .graph_tools import (
    is_float,
    matches,
    name_nodes,
    onnx_dtype,
    raise_for,
    require_opset,
    shape_nodes,
    with_types,
)
from .local_error import local_snr, unmeasured
from .precision import QDQ_FP16_OPSET, Precision
from .qdq_plan import Plan, Site, insert_qdq
from .registry import register_pass
from .sensitivity import AutoOptions, Candidate, Judge, search, uses_ranking

if TYPE_CHECKING:
    pass

INT8_MAX = 127
FP8_MAX = 448.0
"""The largest finite FLOAT8E4M3FN value: FP8 scales are amax / 448 (TensorRT, ModelOpt)."""
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Ops whose inputs are quantized: TensorRT runs them as INT8 kernels when both the data
and the weight inputs come from DequantizeLinear."""
POOLING_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
MIN_QDQ_OPSET = 13
"""Per-channel (``axis``) DequantizeLinear needs opset 13."""
FP8_OPSET = 19
"""QuantizeLinear/DequantizeLinear take FLOAT8E4M3FN from opset 19."""
INT4_OPSET = 21
"""DequantizeLinear takes INT4 and block-wise scales (``block_size``) from opset 21."""


@dataclass(frozen=True)
class QuantizedType:
    """One quantized element type: its ONNX and numpy types, the largest magnitude a scale maps
    amax to, the opset its Q/DQ need, and how scaled values become it."""

    name: str
    onnx_type: int
    numpy_type: Any
    max: float
    opset: int
    cast: Callable[[np.ndarray], np.ndarray]


def _to_int8(scaled: np.ndarray) -> np.ndarray:
    # Narrow range [-127, 127]: TensorRT's symmetric INT8.
    return np.clip(np.rint(scaled), -INT8_MAX, INT8_MAX).astype(np.int8)


def _to_fp8(scaled: np.ndarray) -> np.ndarray:
    # Round to nearest even, saturating at +-448 as QuantizeLinear does (saturate=1): E4M3FN
    # has no infinity, and ml_dtypes turns an out-of-range value into NaN.
    return np.clip(scaled, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)


INT8 = QuantizedType("int8", onnx.TensorProto.INT8, np.int8, INT8_MAX, MIN_QDQ_OPSET, _to_int8)
FP8 = QuantizedType(
    "fp8",
    onnx.TensorProto.FLOAT8E4M3FN,
    ml_dtypes.float8_e4m3fn,
    FP8_MAX,
    FP8_OPSET,
    _to_fp8,
)
INT4 = QuantizedType(
    "int4",
    onnx.TensorProto.INT4,
    ml_dtypes.int4,
    blockwise.INT4_MAX,
    INT4_OPSET,
    blockwise.to_int4,
)
QUANTIZED_TYPES = {t.name: t for t in (INT8, FP8, INT4)}
DEFAULT_CALIBRATORS = {"int8": "minmax", "fp8": "minmax"}
"""The calibrator a type gets unless one is named. Measured on PaddleOCR's pretrained detector,
recognizer and classifier (worst held-out cosine on rendered text): FP8 with minmax ranges
0.993 / 0.915 / 0.995, with entropy ranges 0.978 / 0.390 / 0.984. INT8 (FP16 around) on 64
held-out samples: the recognizer's output error 0.287 with minmax, 0.831 with entropy (no line
decoded as FP32 does), all-MiniLM-L6-v2's 0.227 and 0.292; minmax was better on the detector
and classifier too. TensorRT's own default is entropy: name it, or let ``calibrator: auto``
choose per model by the validation score (a judgement per calibrator)."""
AUTO_CALIBRATORS = ("entropy", "minmax", "percentile")
"""What ``calibrator: auto`` chooses from, ties going to the earlier (entropy: TensorRT's)."""

# -- what TensorRT cannot run in FP8 ----------------------------------------------------------

FP8_OPS = ("Conv", "Gemm", "MatMul")
FP8_CHANNEL_MULTIPLE = 16
FP8_MAX_FILTER = 32


@dataclass(frozen=True)
class PlacementRule:
    """A named reason a node is left in float: ``check`` returns why, or None."""

    name: str
    check: Callable[[gs.Node], str | None]


def _known(dims: Sequence[Any] | None) -> list[int] | None:
    """``dims`` as positive ints, or None when any is unknown or symbolic."""
    if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return [int(d) for d in dims]


def _fp8_op(node: gs.Node) -> str | None:
    """TensorRT runs FP8 only in convolution and matrix-multiply kernels ("FP8 is only
    supported for matrix multiplications (GEMM) on Ada and later", TensorRT for RTX's
    Working with Quantized Types; ModelOpt's ONNX FP8 mode quantizes Conv, Gemm, MatMul and
    their residual Adds only). A deconvolution or pooling in FP8 would only add rounding."""
    if node.op in FP8_OPS:
        return None
    return f"TensorRT has no FP8 {node.op} kernel (FP8 runs in {', '.join(FP8_OPS)})"


def _fp8_conv_channels(node: gs.Node) -> str | None:
    """FP8 tensor-core convolutions read channels in vectors of 16 (16-byte aligned FP8
    operands, as cuBLASLt's FP8 matmuls require of every dimension; ModelOpt's FP8 mode skips
    convolutions with fewer than 16 input or output channels): the output channels and the
    input channels per group must be multiples of 16. Depthwise convolutions never are."""
    if node.op != "Conv":
        return None
    shape = _known(node.inputs[1].shape if len(node.inputs) > 1 else None)
    if shape is None or len(shape) < 3:
        return "the weight shape (channel counts) is unknown"
    wrong = [
        f"{what} {count}"
        for what, count in (("output channels", shape[0]), ("input channels per group", shape[1]))
        if count % FP8_CHANNEL_MULTIPLE
    ]
    if wrong:
        return f"{' and '.join(wrong)} not a multiple of {FP8_CHANNEL_MULTIPLE}"
    return None


def _fp8_conv_filter(node: gs.Node) -> str | None:
    """FP8 convolution kernels take filters of at most 32 taps (ModelOpt's FP8 mode: "the
    filter size for FP8 conv kernels should be less than 32"); a larger one (7x7, a 1D
    filter bank) stays float."""
    if node.op != "Conv":
        return None
    shape = _known(node.inputs[1].shape if len(node.inputs) > 1 else None)
    if shape is None:
        return None  # _fp8_conv_channels already refused it
    taps = int(np.prod(shape[2:], dtype=np.int64))
    if taps > FP8_MAX_FILTER:
        kernel = "x".join(str(k) for k in shape[2:])
        return f"filter {kernel} has {taps} taps, over {FP8_MAX_FILTER}"
    return None


def _fp8_gemv(node: gs.Node) -> str | None:
    """A matrix product with one row or one column (M or N = 1, a GEMV) cannot use tensor
    cores: TensorRT runs it as a float GEMV, so Q/DQ around it only add rounding (ModelOpt's
    ``enable_gemv_detection_for_trt``). Known only from static shapes: a dynamic dim may be 1
    at run time, which this cannot see."""
    if node.op not in ("MatMul", "Gemm") or not node.outputs:
        return None
    out = node.outputs[0].shape
    if out is not None and len(out) < 2:
        return "a matrix-vector product (GEMV)"
    out = _known(out)
    if out is None:
        return None
    weight = len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant)
    # With a constant B, TensorRT folds the batch dims into M.
    m = int(np.prod(out[:-1], dtype=np.int64)) if weight or node.op == "Gemm" else out[-2]
    if m == 1 or out[-1] == 1:
        return f"M={m}, N={out[-1]}: a matrix-vector product (GEMV)"
    return None


FP8_RULES = (
    PlacementRule("fp8-op", _fp8_op),
    PlacementRule("fp8-conv-channels", _fp8_conv_channels),
    PlacementRule("fp8-conv-filter", _fp8_conv_filter),
    PlacementRule("fp8-gemv", _fp8_gemv),
)
"""Why TensorRT would not run a node in FP8, in the order checked; each rule's docstring
cites its source. A refused node keeps float inputs and is named in ``details.skipped``."""


# -- what TensorRT runs as INT4 ------------------------------------------------------------

INT4_OPS = ("MatMul", "Gemm")
"""TensorRT's INT4 is weight-only: "INT4 (signed 4-bit integer, weight-only quantization)"
(Working with Quantized Types); its kernels dequantize a GEMM's weights (ModelOpt's INT4
quantizes MatMul and Gemm weights only)."""
INT4_FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
MIN_INT4_BLOCK = 16
"""The smallest block a layer falls back to when the requested one does not divide its K."""


def weight_of(node: gs.Node) -> gs.Constant | None:
    """A MatMul's or Gemm's B when it is constant (an initializer or a Constant node's value),
    without loading its values."""
    if len(node.inputs) < 2:
        return None
    tensor = node.inputs[1]
    if isinstance(tensor, gs.Constant):
        return tensor
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return value if isinstance(value, gs.Constant) else None
    return None


def _int4_weight(node: gs.Node) -> str | None:
    """INT4 is weight-only: a B computed at run time (attention's activation x activation
    products) has no ahead-of-time scales and stays float."""
    if weight_of(node) is None:
        return "B is computed, not a constant weight (INT4 is weight-only)"
    return None


def _int4_weight_rank(node: gs.Node) -> str | None:
    """Block-wise INT4 weights are matrices [K, N] (ModelOpt's INT4 skips others; TensorRT
    runs them as a GEMM's dequantized B): a 1-D or batched constant B stays float."""
    weight = weight_of(node)
    if weight is not None and len(weight.shape) != 2:
        return f"a {len(weight.shape)}-D weight (INT4 blocks 2-D weights)"
    return None


def _int4_weight_type(node: gs.Node) -> str | None:
    """Scales take the weight's own float type (FP32, FP16 or BF16); an integer or already
    quantized B is left as it is."""
    weight = weight_of(node)
    if weight is not None and np.dtype(weight.dtype) not in INT4_FLOAT_TYPES:
        return f"a {np.dtype(weight.dtype).name} weight"
    return None


INT4_RULES = (
    PlacementRule("int4-weight", _int4_weight),
    PlacementRule("int4-weight-rank", _int4_weight_rank),
    PlacementRule("int4-weight-type", _int4_weight_type),
)
"""Why a MatMul or Gemm keeps a float weight under dtype int4, in the order checked (then
``int4-block``: no block size TensorRT reads as meant, see ``blockwise.fitting_block``)."""


def refusal(node: gs.Node, rules: Sequence[PlacementRule]) -> str | None:
    """``'<rule>: <why>'`` for the first rule that refuses ``node``, else None."""
    for rule in rules:
        why = rule.check(node)
        if why:
            return f"{rule.name}: {why}"
    return None


# -- options --------------------------------------------------------------------------------


class Exclude(PassOptions):
    op_types: list[str] = []
    """Op types never quantized, e.g. [MatMul] to keep attention in float."""
    nodes: list[str] = []
    """Regexes of node names never quantized (searched anywhere in the name)."""

    @field_validator("nodes")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"invalid regex {pattern!r}: {error}") from None
        return value


class AwqOptions(PassOptions):
    """What ``method: awq`` searches (trtopt.passes.awq). The default is ModelOpt's default
    for ONNX INT4, awq_clip: on PaddleOCR's PP-OCRv4 recognizer (64 held-out text lines,
    relative output error; RTN 0.263 / 0.163 / 0.093 at blocks 128 / 64 / 32) clips alone
    gave 0.151 / 0.131 / 0.077, a channel scale and then clips 0.166 / 0.149 / 0.091, though
    the scale lowers every layer's own error on held-out data too."""

    scale: bool = False
    """Search a scale per input channel first, AWQ's s = mean|x|^a / mean|w|^(1-a) (the
    activation is divided by it with one Mul, the weight's rows multiplied): awq_lite, and
    with ``clip`` awq_full."""
    clip: bool = True
    """Search a clip ratio per block, 1 down to ``clip_min`` by 0.05 (awq_clip)."""
    steps: Annotated[int, Field(ge=1, le=100)] = 10
    """Exponents tried for the scale: a = 0, 1/steps, ..., 1 (ModelOpt's step 0.1)."""
    clip_min: Annotated[float, Field(ge=0.1, lt=1)] = 0.5
    """The smallest clip ratio tried (ModelOpt's 0.5)."""


@dataclass
class Guarded:
    """What the precision pass's data guard kept FP32 around every unit quantized
    (``Quantize._guarded``): node -> reason, and that run's details (its local errors)."""

    reasons: dict[str, str]
    details: dict[str, Any]


# -- the pass -------------------------------------------------------------------------------


@register_pass("quantize")
class Quantize(Pass):
    """Calibrated INT8 or FP8 Q/DQ where TensorRT fuses them (or INT8 where ONNX Runtime's CPU
    kernels do: ``placement``), or INT4 MatMul/Gemm weights.

    INT4 is weight-only: block-wise INT4 weights behind a DequantizeLinear, activations float."""

    exact = False  # its numbers move on purpose; the check's thresholds judge them

    class Options(PassOptions):
        dtype: Literal["int8", "fp8", "int4"] = "int8"
        """Quantized type: int8 (every TensorRT GPU), fp8 (E4M3; compute capability 8.9 and
        later: Ada, Hopper, Blackwell) or int4 (weight-only; 8.0 and later). int8 and fp8 use
        the same calibrated ranges, scale = amax / 127 or amax / 448; fp8 raises the model's
        opset to 19. int4 stores MatMul and Gemm weights as block-wise INT4 (scale = block
        amax / 7) and raises the opset to 21. fp8 and int4 leave in float what TensorRT cannot
        run in that type (details.skipped names each node and why)."""
        method: Literal["awq", "rtn"] = "awq"
        """int4 only: awq (activation-aware: each block's clip ratio, and with ``awq.scale`` a
        channel scale, chosen on the calibration data; never worse than rtn on it) or rtn
        (each block rounded to nearest; needs no data)."""
        block_size: Literal[32, 64, 128] = 128
        """int4 only: weights per scale along K. A layer whose K it does not divide uses the
        largest block below it that does (TensorRT reads whole blocks only: a partial last
        block would build as another block size); details.block_sizes names those."""
        awq: AwqOptions = AwqOptions()
        """int4 with method awq: what it searches."""
        placement: Literal["tensorrt", "onnxruntime"] = "tensorrt"
        """Whose INT8 kernels the Q/DQ are placed for. tensorrt: inputs of the quantized ops
        only, so TensorRT fuses each with its bias, activation and residual. onnxruntime: the
        node groups ONNX Runtime's CPU runs in integer (QLinearConv, QLinearMatMul, QGemm,
        QLinearAdd, ...: outputs quantized too, UINT8 activations, a Relu folded into the Q,
        INT32 biases; trtopt.passes.ort_placement), without which ONNX Runtime runs a QDQ graph
        in float. In a recipe the default follows the build's backend; int8 only (pooling and
        residual_add are TensorRT's rules)."""
        high_precision: Literal["fp32", "fp16", "bf16"] = "fp32"
        """The type of the float ops around the Q/DQ: fp16 or bf16 lower them as the
        ``precision`` pass does (its keep list and FP16 range guard; the Q/DQ take scales of
        that type at opset 19), fp32 leaves them as they are. TensorRT runs the non-quantized
        layers in the graph's own types: with fp16 their weights take half the bytes. In a
        recipe the default is fp16 when the build is tensorrt or tensorrt-rtx, else fp32 (ONNX
        Runtime's CPU kernels gain nothing from FP16); an explicit value wins. ``auto`` judges
        its candidates with this type around them (bf16 rounded in an FP32 graph: ONNX
        Runtime's CPU has no BF16 kernels)."""
        calibrator: Calibrator | Literal["auto"] | None = None
        """How activation ranges are chosen from the calibration histograms. Default: minmax,
        measured best on every pretrained model here, INT8 and FP8 (TensorRT's own default is
        entropy, which clipped PP-OCRv4's recognizer to no correct line in INT8). auto:
        entropy, minmax and percentile from one collection of histograms, the model quantized
        with each (what goes around included) judged on the validation data by ``auto``'s
        metric and samples (without ``auto``: cosine, 8 feeds), the best kept
        (details.calibration.scores). Not for int4 (weight-only: no activation ranges), nor
        are percentile, per_channel, pooling, residual_add and bins."""
        percentile: Annotated[float, Field(gt=50, le=100)] = 99.99
        """The percentile calibrator's percentile of |x|."""
        per_channel: bool = True
        """Weights get one scale per output channel (else one per tensor)."""
        symmetric: bool = True
        """Zero point 0. TensorRT rejects non-zero zero points, so this must stay true."""
        op_types: list[str] = list(QUANTIZED_OPS)
        """Ops whose inputs are quantized (from Conv, ConvTranspose, Gemm, MatMul)."""
        pooling: bool = True
        """Also quantize inputs of pooling ops, so TensorRT keeps the INT8 region through them
        (int8 only: TensorRT has no FP8 pooling)."""
        residual_add: bool = True
        """Quantize the skip input of an Add that follows a Conv, so TensorRT fuses the Add
        (and a following Relu) into the Conv's INT8 or FP8 kernel."""
        exclude: Exclude = Exclude()
        auto: AutoOptions | None = None
        """Keep the most sensitive layers in float, as few as possible, until this passes."""
        cache: bool = True
        """Cache ranges by model, data and settings, in the stage cache (--no-cache: none).
        int4 has no ranges: its AWQ statistics are computed on every run of the pass."""
        memory_budget: Annotated[int, Field(ge=1 << 20)] = DEFAULT_MEMORY_BUDGET
        """Bytes of activations exposed per calibration run (one sample) before tensors are
        grouped into several runs (int4: AWQ's statistics are collected the same way)."""
        bins: Annotated[int, Field(ge=256, le=1 << 16)] = 2048
        """Histogram bins per tensor (a power of two)."""

        @field_validator("symmetric")
        @classmethod
        def _symmetric(cls, value: bool) -> bool:
            if not value:
                raise ValueError(
                    "TensorRT accepts only symmetric INT8 (zero point 0): "
                    "'Non-zero zero point is not supported'"
                )
            return value

        @field_validator("op_types")
        @classmethod
        def _ops(cls, value: list[str], info: ValidationInfo) -> list[str]:
            allowed = INT4_OPS if info.data.get("dtype") == "int4" else QUANTIZED_OPS
            unknown = [op for op in value if op not in allowed]
            if unknown:
                raise ValueError(f"cannot quantize {unknown}; choose from {list(allowed)}")
            return value

        @field_validator("placement")
        @classmethod
        def _placement(cls, value: str, info: ValidationInfo) -> str:
            dtype = info.data.get("dtype")
            if value == "onnxruntime" and dtype not in (None, "int8"):
                raise ValueError(
                    f"onnxruntime has no {dtype} CPU kernels: placement onnxruntime is int8 only"
                )
            return value

        @field_validator("method", "block_size", "awq")
        @classmethod
        def _int4_only(cls, value: Any, info: ValidationInfo) -> Any:
            dtype = info.data.get("dtype")
            if dtype is not None and dtype != "int4":
                raise ValueError(f"applies to dtype int4 only, not {dtype}")
            return value

        @field_validator(
            "calibrator", "percentile", "per_channel", "pooling", "residual_add", "bins"
        )
        @classmethod
        def _not_int4(cls, value: Any, info: ValidationInfo) -> Any:
            if info.data.get("dtype") == "int4":
                raise ValueError(
                    "means nothing for dtype int4: it is weight-only (no activation ranges) "
                    "with one scale per block of weights"
                )
            return value

        @field_validator("bins")
        @classmethod
        def _pow2(cls, value: int) -> int:
            if value & (value - 1):
                raise ValueError("bins must be a power of two")
            return value

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__(options)
        self.qtype = QUANTIZED_TYPES[self.options.dtype]  # type: ignore[attr-defined]
        self._quantized_weights: dict[tuple[str, Any], tuple[np.ndarray, np.ndarray]] = {}
        """Quantized values and scales per (weight, axis; INT4: weight, node), shared by the
        search's candidates."""
        self._awq: dict[str, tuple[str, np.ndarray | None, np.ndarray | None]] = {}
        """INT4 with AWQ, per node: its activation, channel scale (or None) and block clips
        (of the weight as [K, N])."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        options: Any = self.options
        qtype = self.qtype
        self._quantized_weights.clear()
        self._awq.clear()
        graph.toposort()
        name_nodes(graph)
        graph = with_types(graph)
        plan = self.plan(graph)
        if qtype is not INT8:
            ctx.details["dtype"] = qtype.name
        if plan.sites:
            raised, how = self._raise_opset(graph)
            if raised is None:
                ctx.warnings.append(f"quantize: left the model unchanged: {how}")
                ctx.details["opset"] = {"needed": qtype.opset, "unchanged": how}
                ctx.details["quantized_nodes"] = 0
                return PassResult(graph)
            if how:
                ctx.details["opset"] = how
                ctx.log.info("quantize: opset %(from)s -> %(to)s (%(by)s)", how)
            if raised is not graph:  # rewritten by the version converter: placed anew
                graph = raised
                graph.toposort()
                name_nodes(graph)  # the nodes it adds have no names
                graph = with_types(graph)
                plan = self.plan(graph)
        ctx.details["placement"] = plan.reasons
        if qtype is not INT8:
            ctx.details["skipped"] = plan.skipped
        macs = layer_macs(graph)
        if qtype is INT4:  # weight-only GEMMs: convolutions are not INT4's to take
            ops = {n.name: n.op for n in graph.nodes}
            macs = {name: count for name, count in macs.items() if ops[name] in INT4_OPS}
        activations = plan.activations()
        coverage_key = f"{qtype.name}_coverage"
        if not plan.sites:
            ctx.details["quantized_nodes"] = 0
            ctx.details[coverage_key] = self._coverage(macs, set())
            graph, around = self._lower_around(graph, ctx)
            return PassResult(graph, kept=around, coverage=ctx.details[coverage_key])
        ranges: dict[str, float] = {}
        guarded: Guarded | None = None  # calibrator auto measures it first
        if qtype is INT4:
            self._int4_details(plan, ctx)
            if options.method == "awq":
                self._search_awq(graph, plan, ctx)
        else:
            ranges, guarded = self._calibrate(graph, plan, activations, ctx)

        kept: list[dict] = []
        excluded: set[str] = set()
        if options.auto is not None:
            if guarded is None:
                guarded = self._guarded(graph, plan, ranges, ctx)
            # Every judgement runs a candidate whose weights ONNX Runtime is handed as arrays
            # (shared with this graph, INT8 ones quantized once): for a large model, exporting
            # and serializing every candidate whole cost more than running it.
            judge = self._judge(split_graph(graph, external=True), ctx)
            result_search = search(
                plan.units,
                lambda keep: split_graph(
                    self._candidate(graph, plan, ranges, keep, guarded, ctx), external=True
                ),
                judge,
                ranking=self._local(graph, plan, ranges, ctx),
            )
            excluded = {k["node"] for k in result_search.kept}
            kept = result_search.kept
            ctx.details["auto"] = result_search.to_json(options.auto.metric, options.auto.limit)
            if result_search.out_of_time:
                ctx.warnings.append(
                    f"quantize.auto: the time budget ({options.auto.max_minutes:g} min) ran out; "
                    f"kept the best found: {len(result_search.kept)} layers in float"
                )
            if not result_search.reached:
                ctx.warnings.append(
                    f"quantize.auto: {options.auto.metric} {result_search.value:.6g} does not "
                    f"reach {options.auto.limit} even with every layer in float"
                )
        graph = self.apply(graph, plan, ranges, excluded)
        ctx.details["quantized_nodes"] = len([u for u in plan.units if u not in excluded])
        ctx.details["excluded_nodes"] = kept
        quantized = self._coverage(macs, set(plan.units) - excluded)
        ctx.details[coverage_key] = quantized
        ops = {n.name: n.op for n in graph.nodes}
        reported = [
            {
                "node": k["node"],
                "op": ops.get(k["node"]),
                "reason": f"auto: effect {k['effect']:.3g} when quantized alone",
            }
            for k in kept
        ]
        self._quantized_weights.clear()
        graph, around = self._lower_around(graph, ctx, guarded)
        # graphsurgeon tensors reference themselves (through their input and output lists),
        # so the FP32 weights replaced above are freed only by the cyclic collector, which
        # may not run before the caller exports the graph: another copy of the weights.
        gc.collect()
        return PassResult(graph, kept=reported + around, coverage=quantized)

    def _calibrate(
        self, graph: gs.Graph, plan: Plan, activations: list[str], ctx: PassContext
    ) -> tuple[dict[str, float], Guarded | None]:
        """Activation ranges (amax) by tensor, calibrated on ``ctx.calibration``; and for
        calibrator auto, what the data guard kept around the Q/DQ (``_guarded``) while
        judging (else None: not measured)."""
        options: Any = self.options
        data = ctx.calibration_data("quantize", "calibrated")
        calibrator = options.calibrator or DEFAULT_CALIBRATORS[self.qtype.name]
        # The graph as ONNX Runtime runs it, its weights graph inputs fed from the graph's own
        # arrays: a whole export would hold another copy of every weight, and the serialized
        # model and ONNX Runtime's initializers two more.
        reference, weights = split_graph(graph)
        results = calibrate_each(
            reference,
            data,
            activations,
            AUTO_CALIBRATORS if calibrator == "auto" else [calibrator],
            percentile=options.percentile,
            bins=options.bins,
            memory_budget=options.memory_budget,
            use_cache=options.cache,
            weights=weights,
        )
        del reference, weights
        scores: dict[str, float] = {}
        guarded = None
        if calibrator == "auto":
            calibrator, scores, guarded = self._choose(
                graph, plan, {name: found.ranges for name, found in results.items()}, ctx
            )
        result = results[calibrator]
        ctx.details["calibration"] = {
            "data": data.describe(),
            "synthetic": data.synthetic,
            "calibrator": calibrator,
            "cached": result.cached,
            "feeds": result.feeds,
            "tensors": len(activations),
            "cache_file": str(result.cache_file) if result.cache_file else None,
        }
        if scores:
            ctx.details["calibration"]["scores"] = scores
        if ctx.artifacts_dir is not None and self.qtype is INT8:
            # TensorRT's INT8 calibration cache (scales amax / 127); FP8 has no such file.
            (ctx.artifacts_dir / "calibration.cache").write_text(tensorrt_cache(result.ranges))
        return result.ranges, guarded

    def _choose(
        self,
        graph: gs.Graph,
        plan: Plan,
        ranges: dict[str, dict[str, float]],
        ctx: PassContext,
    ) -> tuple[str, dict[str, float], Guarded | None]:
        """calibrator auto: the calibrator whose ranges, every unit quantized, give the best
        validation score, each candidate judged as it would ship (``_candidate``; the data
        guard measured once, with the first calibrator's ranges, as the search reuses it);
        each calibrator's score; and that guard's finding."""
        options: Any = self.options
        scoring = options.auto or AutoOptions(metric="cosine", min=-1.0)
        judge = self._judge(split_graph(graph, external=True), ctx, scoring, "calibrator auto")
        guarded = self._guarded(graph, plan, ranges[AUTO_CALIBRATORS[0]], ctx)
        scores = {
            name: judge(
                split_graph(self._candidate(graph, plan, found, set(), guarded, ctx), external=True)
            )[0]
            for name, found in ranges.items()
        }
        best = min(scores, key=lambda name: scoring.effect(scores[name]))  # ties: the earlier
        ctx.log.info("quantize: calibrator auto chose %s (%s)", best, scores)
        return best, scores, guarded

    def _int4_details(self, plan: Plan, ctx: PassContext) -> None:
        """What the report says of an INT4 run: the method, the block size, and the layers
        that took another block size."""
        options: Any = self.options
        ctx.details["int4"] = {
            "method": options.method,
            "block_size": options.block_size,
            "block_sizes": {
                s.node: s.block_size for s in plan.sites if s.block_size != options.block_size
            },
        }

    def _search_awq(self, graph: gs.Graph, plan: Plan, ctx: PassContext) -> None:
        """AWQ's channel scales and block clips for every group of INT4 products that read
        one activation as rows [.., K] (a Gemm with transA reads it transposed: rounded to
        nearest), from statistics streamed over the calibration data (``awq.Statistics``)."""
        options: Any = self.options
        nodes = {n.name: n for n in graph.nodes}
        groups: dict[str, list[Site]] = {}
        for site in plan.sites:
            node = nodes[site.node]
            if not int(node.attrs.get("transA", 0)):
                groups.setdefault(node.inputs[0].name, []).append(site)
        if not groups:
            return
        data = ctx.calibration_data("quantize", "calibrated")
        tensors = graph.tensors()

        def rows(site: Site) -> np.ndarray:  # the weight as [K, N]
            values = np.asarray(constant_value(tensors[site.tensor]), np.float32)
            return values if site.weight_axis == 0 else values.T

        stats = {
            name: awq.Statistics.empty(rows(sites[0]).shape[0]) for name, sites in groups.items()
        }
        reference, weights = split_graph(graph)
        feeds = collect(
            reference,
            data,
            sorted(groups),
            lambda name, array: stats[name].add(array),
            memory_budget=options.memory_budget,
            weights=weights,
        )
        del reference, weights
        found = {}
        for name, sites in groups.items():
            choice = awq.search(
                [rows(site) for site in sites],
                stats[name],
                sites[0].block_size or options.block_size,
                scale=options.awq.scale,
                clip=options.awq.clip,
                steps=options.awq.steps,
                clip_min=options.awq.clip_min,
            )
            for site, clips in zip(sites, choice.clips):  # clips of the weight as [K, N]
                self._awq[site.node] = (name, choice.scale, clips)
            found[name] = {
                "nodes": [site.node for site in sites],
                "alpha": choice.alpha,
                "error": choice.error,
                "rtn_error": choice.rtn_error,
            }
        ctx.details["int4"]["awq"] = {
            "data": data.describe(),
            "synthetic": data.synthetic,
            "feeds": feeds,
            "activations": found,
        }

    def _raise_opset(self, graph: gs.Graph) -> tuple[gs.Graph | None, dict | str | None]:
        """The graph at the opset its Q/DQ need (``raise_for``; None for how when it already
        is), or None and why not.

        INT8 needs 13 (per-channel DequantizeLinear) and FP8 19; a model below (PaddleOCR's
        exports are opset 11 and 12) is converted, not relabelled: opset 13 changed Squeeze,
        Unsqueeze, Split and ReduceSum. FP16 or BF16 around the Q/DQ (``high_precision``)
        gives them scales of that type, which need opset 19: raised here too, before
        calibration, so that ranges are measured on the graph that ships; when only that
        fails the Q/DQ are placed at their own opset and the lowering keeps them FP32."""
        options: Any = self.options
        needed = self.qtype.opset
        wanted = needed if options.high_precision == "fp32" else max(needed, QDQ_FP16_OPSET)
        current = opset(graph)
        if current >= wanted:
            return graph, None
        raised, how = raise_for(graph, wanted)
        if raised is None and wanted > needed:
            if current >= needed:
                return graph, None
            raised, how = raise_for(graph, needed)
        return raised, how

    def _lower_around(
        self, graph: gs.Graph, ctx: PassContext, guarded: Guarded | None = None
    ) -> tuple[gs.Graph, list[dict]]:
        """``high_precision``: the float ops around the Q/DQ lowered to FP16 or BF16 by the
        precision pass itself (its default keep list, its FP16 range guard on constants and
        calibration activations, a DequantizeLinear lowered with the op it fuses into, FP16
        scales), its details under ``details.high_precision``; and the nodes it kept FP32.
        After an automatic search, ``guarded`` is what its data guard found before the search
        (``_guarded``), applied as every judged candidate had it: the graph judged ships."""
        options: Any = self.options
        if options.high_precision == "fp32":
            return graph, []
        inner = PassContext(scratch_dir=ctx.scratch_dir, log=ctx.log)
        if guarded is None:
            inner.calibration = ctx.calibration
        result = self._lowering(guarded).run(graph, inner)
        reasons = guarded.reasons if guarded is not None else {}
        kept = [{**k, "reason": reasons.get(k["node"], k["reason"])} for k in result.kept]
        inner.details["kept_fp32"] = kept
        ctx.details["high_precision"] = {**(guarded.details if guarded else {}), **inner.details}
        ctx.warnings += [
            w.replace("precision:", "quantize.high_precision:", 1) for w in inner.warnings
        ]
        around = [
            {**k, "reason": f"high_precision {options.high_precision}: {k['reason']}"} for k in kept
        ]
        return result.graph, around

    def _lowering(self, guarded: Guarded | None) -> Precision:
        """The precision pass ``high_precision`` runs, keeping the ``guarded`` nodes too."""
        options: Any = self.options
        names = sorted(guarded.reasons) if guarded is not None else []
        keep = {"nodes": ["^(?:" + "|".join(map(re.escape, names)) + ")$"]} if names else {}
        return Precision(
            Precision.Options.model_validate({"dtype": options.high_precision, "keep_fp32": keep})
        )

    def _guarded(
        self, graph: gs.Graph, plan: Plan, ranges: dict[str, float], ctx: PassContext
    ) -> Guarded | None:
        """What the precision pass's data guard keeps FP32 around every unit quantized (None
        for high_precision fp32), measured once for the whole search.

        Sound to reuse for every candidate: the activation guard reads each float tensor's
        range and the share of it FP16 would flush, and the local error runs each node alone in
        FP16 on its captured inputs. Both are properties of the values that flow, which a Q/DQ
        changes only by rounding to a step of amax / 127 (or clipping at amax, which never
        widens a range): a candidate's tensors are the same tensors, its Q/DQ a subset of the
        same names. A node near a threshold could go either way; the same decision is then
        applied to the graph that ships (``_lower_around``), so it is the graph judged. What
        does depend on the candidate's structure the precision pass redoes for each one
        without data: the constant guard (a unit left in float has its FP32 weight, not a
        scale), the keep list, and which ops share a DequantizeLinear's type. A consumer kept
        with a guarded DequantizeLinear stays kept in a candidate without it: conservative."""
        options: Any = self.options
        if options.high_precision == "fp32":
            return None
        if ctx.calibration is None or options.high_precision != "fp16":  # BF16 has no guard
            return Guarded({}, {})
        quantized = self.apply(graph.copy(), plan, ranges, set())
        measured = PassContext(
            scratch_dir=ctx.scratch_dir, log=ctx.log, calibration=ctx.calibration
        )
        lowering = self._lowering(None)
        with_data = {k["node"]: k["reason"] for k in lowering.run(quantized.copy(), measured).kept}
        structural = PassContext(scratch_dir=ctx.scratch_dir, log=ctx.log)
        without = {k["node"] for k in lowering.run(quantized, structural).kept}
        ctx.warnings += [
            w.replace("precision:", "quantize.high_precision:", 1) for w in measured.warnings
        ]
        reasons = {node: why for node, why in with_data.items() if node not in without}
        return Guarded(reasons, measured.details)

    def _candidate(
        self,
        graph: gs.Graph,
        plan: Plan,
        ranges: dict[str, float],
        keep: set[str],
        guarded: Guarded | None,
        ctx: PassContext,
    ) -> gs.Graph:
        """The graph the search judges for ``keep``: the one that would ship, with FP16 around
        it. BF16 has no ONNX Runtime CPU kernels: its candidate is an FP32 graph in which the
        nodes the precision pass lowers see and produce values rounded to BF16 (TensorRT
        accumulates in FP32 too), as the precision pass's own search judges BF16."""
        candidate = self.apply(graph.copy(), plan, ranges, keep)
        if guarded is None:
            return candidate
        lowering = self._lowering(guarded)
        inner = PassContext(scratch_dir=ctx.scratch_dir, log=ctx.log)
        if self.options.high_precision == "fp16":  # type: ignore[attr-defined]
            return lowering.run(candidate, inner).graph
        names = {n.name for n in candidate.nodes}
        lowered = lowering.run(candidate.copy(), inner).graph
        rounded = {
            n.name
            for n in lowered.nodes
            if n.name in names
            and any(onnx_dtype(t) == onnx.TensorProto.BFLOAT16 for t in n.outputs)
        }
        return lowering.lower(candidate, rounded, emulate=True)

    def _coverage(self, macs: dict[str, int | None], quantized: set[str]) -> dict[str, Any]:
        """``coverage``, and for a type other than INT8 which type it counts."""
        found = coverage(macs, quantized)
        return found if self.qtype is INT8 else {"dtype": self.qtype.name, **found}

    def _local(
        self, graph: gs.Graph, plan: Plan, ranges: dict[str, float], ctx: PassContext
    ) -> dict[str, float] | None:
        """Each unit's local error, quantized alone on its own FP32 inputs from the calibration
        data (``local_error``), which the search judges worst first; None without data, for a
        model too large to measure (``local_error.unmeasured``, said in the details), or where
        the search measures every unit's effect alone."""
        options: Any = self.options
        if ctx.calibration is None or not uses_ranking(options.auto, len(plan.units)):
            return None
        why = unmeasured(graph)
        if why is not None:  # the search judges in graph order instead
            ctx.details["local_error"] = why
            return None
        units = set(plan.units)

        def alone(single: gs.Graph, names: set[str]) -> gs.Graph:
            return self.apply(single, plan.only(names), ranges, set())

        nodes = [n for n in graph.nodes if n.name in units]
        return local_snr(graph, nodes, alone, ctx.calibration, memory_budget=options.memory_budget)

    def _judge(
        self,
        reference: Candidate,
        ctx: PassContext,
        auto: AutoOptions | None = None,
        what: str = "auto",
    ) -> Judge:
        """Judges candidates against ``reference`` on the validation feeds by ``auto`` (default:
        the options' ``auto``); ``what`` names the option that needs them."""
        auto = auto or self.options.auto  # type: ignore[attr-defined]
        assert auto is not None
        feeds = (ctx.validation or ctx.feeds)[: auto.samples]
        if not feeds:
            raise DataError(f"quantize.{what} needs validation data (data.validation or check)")
        try:
            return Judge(reference, feeds, auto)
        except ValueError as error:
            raise RecipeError(f"quantize: {error}") from None

    # -- placement ------------------------------------------------------------------------

    def plan(self, graph: gs.Graph) -> Plan:
        """Where Q/DQ go. Each rule is TensorRT's explicit-quantization guidance."""
        options: Any = self.options
        plan = Plan()
        # Rule: no Q/DQ in shape subgraphs. TensorRT computes shapes on the host in INT32/
        # INT64; a quantized shape computation cannot build and would change shapes.
        shapes = shape_nodes(graph)
        skipped = set()
        for node in graph.nodes:
            if node.name in shapes or matches(
                node, options.exclude.op_types, options.exclude.nodes
            ):
                skipped.add(node.name)
        if options.placement == "onnxruntime":
            return ort_placement.plan(graph, options.op_types, skipped, options.per_channel)
        rules = {FP8: FP8_RULES, INT4: INT4_RULES}.get(self.qtype, ())
        ops = [op for op in options.op_types if self.qtype is not INT4 or op in INT4_OPS]
        quantized: set[str] = set()
        for node in graph.nodes:
            if node.name in skipped or node.op not in ops:
                continue
            why = refusal(node, rules)
            if not why and self.qtype is INT4:
                site, why = self._int4_site(node)
                if site:
                    plan.sites.append(site)
                    plan.units.append(node.name)
                    plan.reasons[node.name] = (
                        f"{node.op}: weight (INT4 blocks of {site.block_size})"
                    )
                    continue
            if why:
                plan.skipped[node.name] = why
                continue
            sites = self._compute_sites(node)
            if sites:
                plan.sites += sites
                plan.units.append(node.name)
                quantized.add(node.name)
                plan.reasons[node.name] = f"{node.op}: data and weight inputs"
        for node in graph.nodes if self.qtype is not INT4 else ():
            if node.name in skipped:
                continue
            if options.pooling and node.op in POOLING_OPS:
                site = self._pooling_site(node, quantized)
                why = refusal(node, rules) if site else None
                if why:
                    plan.skipped[node.name] = why
                elif site:
                    plan.sites.append(site)
                    plan.units.append(node.name)
                    plan.reasons[node.name] = f"{node.op}: input (INT8 pooling)"
            elif options.residual_add and node.op == "Add":
                site = self._residual_site(graph, node, quantized)
                if site:
                    plan.sites.append(site)
                    plan.units.append(node.name)
                    plan.reasons[node.name] = f"Add: residual input '{site.tensor}'"
        return plan

    def _compute_sites(self, node: gs.Node) -> list[Site]:
        """Rule: quantize the data and weight inputs of Conv, ConvTranspose, Gemm and MatMul,
        never their outputs. TensorRT fuses DQ -> op -> (bias, activation, residual Add) ->
        Q into one INT8 kernel; a Q/DQ on the op's own output would split that fusion.
        Bias inputs stay float: TensorRT rejects INT32 DequantizeLinear and folds the bias
        into the kernel itself."""
        options: Any = self.options
        slots: list[tuple[int, int | None]] = []  # (input slot, per-channel axis of weights)
        if node.op == "Conv":
            # Rule: weights [C_out, C_in/g, k...] per output channel -> axis 0.
            slots = [(0, None), (1, 0)]
        elif node.op == "ConvTranspose":
            # Rule: weights [C_in, C_out/g, k...] -> output channel axis 1, which TensorRT
            # supports for groups == 1; grouped deconvolution falls back to per-tensor.
            group = int(node.attrs.get("group", 1))
            slots = [(0, None), (1, 1 if group == 1 else -1)]
        elif node.op == "Gemm":
            # Rule: B is [K, N] (or [N, K] with transB): per output column N.
            slots = [(0, None), (1, 0 if int(node.attrs.get("transB", 0)) else 1)]
        elif node.op == "MatMul":
            # Rule: a constant B [..., K, N] is quantized per output column (last axis);
            # activation x activation MatMuls (attention) get per-tensor Q/DQ on both inputs.
            slots = [(0, None), (1, None)]
        sites = []
        for slot, axis in slots:
            if slot >= len(node.inputs):
                return []
            tensor = node.inputs[slot]
            constant = isinstance(tensor, gs.Constant)
            # dtype and shape of a constant are known without loading its values.
            if not is_float(tensor) or (constant and tensor.dtype != np.float32):
                return []  # only FP32 tensors are quantized (already-quantized inputs are not)
            if _is_dequantized(tensor):
                return []
            weight_axis = None
            if constant:
                rank = len(tensor.shape)
                if node.op == "MatMul":
                    weight_axis = rank - 1 if rank >= 2 else None
                elif axis is not None and axis >= 0 and rank > axis:
                    weight_axis = axis
                if not options.per_channel:
                    weight_axis = None
            sites.append(Site(node.name, slot, tensor.name, weight_axis, constant))
        return sites

    def _int4_site(self, node: gs.Node) -> tuple[Site | None, str | None]:
        """Rule: an INT4 weight is blocked along K, the reduction axis, so that every scale
        multiplies one partial dot product (ModelOpt's and TensorRT's WoQ layout): axis 0 of
        B [K, N], axis 1 of a Gemm's transposed B [N, K]. The block must split K into whole
        blocks as TensorRT reads them (``blockwise.fitting_block``), else the node stays
        float (rule ``int4-block``)."""
        options: Any = self.options
        weight = weight_of(node)
        assert weight is not None  # INT4_RULES refused the rest
        axis = 1 if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else 0
        length = int(weight.shape[axis])
        size = blockwise.fitting_block(length, options.block_size, MIN_INT4_BLOCK)
        if size is None:
            return None, (
                f"int4-block: K={length} is not a multiple of {options.block_size} and has "
                f"no divisor in [{MIN_INT4_BLOCK}, {options.block_size}] (TensorRT reads whole "
                "blocks only)"
            )
        return Site(node.name, 1, node.inputs[1].name, axis, True, size), None

    def _pooling_site(self, node: gs.Node, quantized: set[str]) -> Site | None:
        """Rule: quantize a pooling op's input when its output feeds a quantized op, so the
        INT8 region runs through it (TensorRT propagates Q/DQ across commuting ops like
        pooling; a float pooling between two INT8 regions would need a dequantize and a
        requantize)."""
        if not node.inputs or not is_float(node.inputs[0]) or _is_dequantized(node.inputs[0]):
            return None
        feeds_quantized = any(
            c.name in quantized for t in node.outputs for c in _through_reshapes(t)
        )
        if not feeds_quantized or isinstance(node.inputs[0], gs.Constant):
            return None
        return Site(node.name, 0, node.inputs[0].name)

    def _residual_site(self, graph: gs.Graph, node: gs.Node, quantized: set[str]) -> Site | None:
        """Rule: for a residual Add fed by a quantized Conv's output, quantize the other
        (skip) input. TensorRT then fuses the Add into the Conv as an INT8 residual and can
        append a following Relu; with a float skip input the Add runs as its own layer. When
        both inputs come from quantized Convs (a projection shortcut), the earlier one's
        output is quantized and the Add fuses into the later Conv."""
        if len(node.inputs) != 2 or not all(
            isinstance(t, gs.Variable) and is_float(t) for t in node.inputs
        ):
            return None
        producers = [t.inputs[0] if t.inputs else None for t in node.inputs]
        convs = [
            i
            for i, p in enumerate(producers)
            if p is not None and p.op in ("Conv", "ConvTranspose") and p.name in quantized
        ]
        if not convs:
            return None
        shapes = [t.shape for t in node.inputs]
        if shapes[0] is not None and shapes[1] is not None and list(shapes[0]) != list(shapes[1]):
            return None  # a broadcast (bias-like) Add is not a residual
        if len(convs) == 2:
            order = {n.name: i for i, n in enumerate(graph.nodes)}
            skip = min((0, 1), key=lambda i: order[producers[i].name])  # type: ignore[union-attr]
        else:
            skip = 1 - convs[0]
        if _is_dequantized(node.inputs[skip]):
            return None
        return Site(node.name, skip, node.inputs[skip].name)

    # -- rewriting ------------------------------------------------------------------------

    def apply(
        self, graph: gs.Graph, plan: Plan, ranges: dict[str, float], keep: set[str]
    ) -> gs.Graph:
        """Insert Q/DQ for every site of a node not in ``keep`` (on ``graph``, in place).

        Rule: activations get one per-tensor symmetric scale (amax / 127, FP8: amax / 448)
        with a zero point 0 of the quantized type, shared by all quantized consumers of the
        tensor (one Q and one DQ per tensor, TensorRT's recommended form: the Q fuses into the
        producer, the DQ into each consumer). Weights are stored in the quantized type behind a
        DequantizeLinear (no QuantizeLinear on constants, as TensorRT and ModelOpt store them),
        per channel along the output-channel axis. INT4 weights are blocked (``_int4_weight``).
        A plan for ONNX Runtime (``ort_placement``) also quantizes tensors for all their
        readers, its activations in UINT8 with one DQ per reader, and biases in INT32.
        """
        qtype = self.qtype
        nodes = {n.name: n for n in graph.nodes}
        tensors = graph.tensors()
        require_opset(graph, qtype.opset)
        dequantized: dict[str, gs.Variable] = {}
        for site in plan.sites:
            if site.node in keep or plan.producers.get(site.tensor) in keep:
                continue
            node, tensor = nodes[site.node], tensors[site.tensor]
            if qtype is INT4:
                self._int4_weight(graph, node, tensor, site, dequantized)
                continue
            if site.bias:
                bias = ort_placement.quantized_bias(graph, node, tensor)
                if bias is not None:
                    node.inputs[site.slot] = bias
                continue
            if site.constant:
                replacement = dequantized.get(site.tensor) or self._weight(graph, tensor, site)
            else:
                source = plan.alias.get(site.tensor, site.tensor)
                amax = ranges.get(source, 0.0)
                if not amax > 0.0 or not np.isfinite(amax):
                    continue  # an all-zero (or non-finite) tensor has no scale
                replacement = dequantized.get(site.tensor)
                if replacement is None and plan.runtime == "onnxruntime":
                    replacement = ort_placement.qdq(graph, tensor, amax, source in plan.unsigned)
                elif replacement is None:
                    replacement = _qdq(graph, tensor, amax, qtype)
            dequantized[site.tensor] = replacement
            if site.consumers:  # every reader but the QuantizeLinear behind the DQ
                quantize = replacement.inputs[0].inputs[0].inputs[0]
                for consumer in [c for c in tensor.outputs if c is not quantize]:
                    for slot, read in enumerate(consumer.inputs):
                        if read is tensor:
                            consumer.inputs[slot] = replacement
            else:
                node.inputs[site.slot] = replacement
        if plan.runtime == "onnxruntime":
            ort_placement.dedicate(graph)
        graph.cleanup().toposort()
        return graph

    def _int4_weight(
        self,
        graph: gs.Graph,
        node: gs.Node,
        tensor: gs.Tensor,
        site: Site,
        dequantized: dict[str, gs.Variable],
    ) -> None:
        """Rule: a weight becomes INT4 blocks behind a DequantizeLinear (``axis`` K,
        ``block_size``, no zero point: symmetric, as ModelOpt writes it), its scales and output
        in the weight's float type; no Q/DQ on the activation (weight-only). With AWQ, the
        weight's rows are multiplied by the channel scale before rounding and the activation
        is divided by it, one Mul shared by the products that read it."""
        activation, channel, clips = self._awq.get(site.node, ("", None, None))
        key = (site.tensor, site.node)
        if key not in self._quantized_weights:
            original = constant_value(tensor)
            assert original is not None  # INT4_RULES placed constant weights only
            values = np.asarray(original, np.float32)
            rows = values if site.weight_axis == 0 else values.T  # [K, N]
            if channel is not None:
                rows = rows * channel[:, None]
            quantized, scale = blockwise.quantize(
                rows, 0, site.block_size or 0, original.dtype, clips
            )
            if site.weight_axis == 1:
                quantized = np.ascontiguousarray(quantized.T).view(blockwise.Int4Array)
                scale = np.ascontiguousarray(scale.T)
            self._quantized_weights[key] = (quantized, scale)
        quantized, scale = self._quantized_weights[key]
        name = f"{tensor.name}_{site.node}" if channel is not None else tensor.name
        out = dequantized.get(name)
        if out is None:
            out = gs.Variable(f"{name}_dequantized", dtype=scale.dtype, shape=list(quantized.shape))
            graph.nodes.append(
                gs.Node(
                    "DequantizeLinear",
                    f"{name}_DequantizeLinear",
                    {"axis": site.weight_axis, "block_size": site.block_size},
                    inputs=[
                        gs.Constant(f"{name}_quantized", quantized),
                        gs.Constant(f"{name}_scale", scale),
                    ],
                    outputs=[out],
                )
            )
            dequantized[name] = out
        node.inputs[site.slot] = out
        if channel is not None:
            scaled = dequantized.get(f"{activation} (awq)")
            if scaled is None:
                source = node.inputs[0]
                scaled = gs.Variable(f"{activation}_awq", dtype=source.dtype, shape=source.shape)
                inverse = (1.0 / channel).astype(source.dtype or np.float32)
                graph.nodes.append(
                    gs.Node(
                        "Mul",
                        f"{activation}_awq_Mul",
                        inputs=[source, gs.Constant(f"{activation}_awq_scale", inverse)],
                        outputs=[scaled],
                    )
                )
                dequantized[f"{activation} (awq)"] = scaled
            node.inputs[0] = scaled

    def _weight(self, graph: gs.Graph, tensor: gs.Constant, site: Site) -> gs.Variable:
        # The automatic search applies the plan to a fresh copy of the graph for every
        # judgement: each weight is quantized once (per run of the pass) and shared.
        key = (tensor.name, site.weight_axis)
        if key not in self._quantized_weights:
            values = np.asarray(peek(tensor), np.float32)  # an on-disk weight is not kept
            self._quantized_weights[key] = quantize_weight(values, site.weight_axis, self.qtype)
        quantized, scale = self._quantized_weights[key]
        axis = site.weight_axis
        name = tensor.name
        q_const = gs.Constant(f"{name}_quantized", quantized)
        scale_c = gs.Constant(f"{name}_scale", scale)
        zero = gs.Constant(f"{name}_zero_point", np.zeros(scale.shape, dtype=self.qtype.numpy_type))
        out = gs.Variable(f"{name}_dequantized", dtype=np.float32, shape=list(quantized.shape))
        attrs = {"axis": axis} if axis is not None else {}
        graph.nodes.append(
            gs.Node(
                "DequantizeLinear",
                f"{name}_DequantizeLinear",
                attrs,
                inputs=[q_const, scale_c, zero],
                outputs=[out],
            )
        )
        return out


# -- coverage ---------------------------------------------------------------------------------


def layer_macs(graph: gs.Graph) -> dict[str, int | None]:
    """Multiply-accumulates of every quantizable layer (Conv, ConvTranspose, Gemm, MatMul
    outside shape computations) by node name, from the shapes inference gave (a dynamic dim
    counts as 1; None where a shape is unknown)."""
    shapes = shape_nodes(graph)
    return {
        node.name: _macs(node)
        for node in graph.nodes
        if node.op in QUANTIZED_OPS and node.name not in shapes
    }


def coverage(macs: dict[str, int | None], quantized: set[str]) -> dict[str, Any]:
    """How much of the quantizable compute runs quantized: layers and MACs."""
    known = {name: n for name, n in macs.items() if n is not None}
    return {
        "layers": {"quantized": len(quantized & set(macs)), "quantizable": len(macs)},
        "macs": {
            "quantized": sum(n for name, n in known.items() if name in quantized),
            "quantizable": sum(known.values()),
            "unknown_layers": len(macs) - len(known),
            "dynamic_dims_as": 1,
        },
    }


def _size(shape: Sequence[Any] | None) -> int | None:
    if shape is None:
        return None
    return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape], dtype=np.int64))


def _macs(node: gs.Node) -> int | None:
    """MACs of one Conv/ConvTranspose/Gemm/MatMul from its input and output shapes."""
    if len(node.inputs) < 2 or not node.outputs:
        return None
    a, b, out = node.inputs[0].shape, node.inputs[1].shape, node.outputs[0].shape
    if node.op == "Conv":  # out [N, M, ...] x weights [M, C/g, k...]
        per_output, outputs = _size(None if b is None else b[1:]), _size(out)
    elif node.op == "ConvTranspose":  # in [N, C, ...] x weights [C, M/g, k...]
        per_output, outputs = _size(None if b is None else b[1:]), _size(a)
    elif node.op == "Gemm":  # A [M, K] x B [K, N] (either transposed)
        if a is None or b is None or len(a) != 2 or len(b) != 2:
            return None
        m, k = (a[1], a[0]) if int(node.attrs.get("transA", 0)) else (a[0], a[1])
        n = b[0] if int(node.attrs.get("transB", 0)) else b[1]
        per_output, outputs = _size([k]), _size([m, n])
    else:  # MatMul [..., M, K] x [..., K, N]
        if out is None and a and b and len(b) >= 2:
            out = [*a[:-1], b[-1]]
        per_output, outputs = (None if not a else _size(a[-1:])), _size(out)
    if per_output is None or outputs is None:
        return None
    return per_output * outputs


def quantize_weight(
    values: np.ndarray, axis: int | None, qtype: QuantizedType = INT8
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantized weights and their scales, amax / ``qtype.max`` (one per slice along
    ``axis``, or one)."""
    if axis is None:
        amax = np.array(np.abs(values).max(), dtype=np.float32)
        shape_for = amax
    else:
        reduce = tuple(i for i in range(values.ndim) if i != axis)
        amax = np.abs(values).max(axis=reduce).astype(np.float32)
        shape_for = amax.reshape([-1 if i == axis else 1 for i in range(values.ndim)])
    # An all-zero channel gets scale 1: its values quantize to 0 either way, and a zero
    # scale is invalid.
    scale = np.where(amax > 0, amax / qtype.max, 1.0).astype(np.float32)
    scale_b = np.where(shape_for > 0, shape_for / qtype.max, 1.0).astype(np.float32)
    return qtype.cast(values / scale_b), scale


def _qdq(graph: gs.Graph, tensor: gs.Tensor, amax: float, qtype: QuantizedType) -> gs.Variable:
    return insert_qdq(graph, tensor, amax / qtype.max, np.array(0, dtype=qtype.numpy_type))


def _is_dequantized(tensor: gs.Tensor) -> bool:
    return bool(tensor.inputs) and tensor.inputs[0].op == "DequantizeLinear"


def _through_reshapes(tensor: gs.Tensor) -> list[gs.Node]:
    """Consumers of ``tensor``, looking through Flatten/Reshape/Squeeze (data movement that
    TensorRT propagates Q/DQ across)."""
    found = []
    for consumer in tensor.outputs:
        if consumer.op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            for out in consumer.outputs:
                found += _through_reshapes(out)
        else:
            found.append(consumer)
    return found
