"""Lint rules: what a TensorRT target rejects or handles badly, checked on the ONNX graph alone.

Each rule is a function over a :class:`GraphView` that yields findings, registered with the
document it is built from (see support.py for the sources).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from . import support
from .support import Target

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    """One problem: which rule, how bad, where (node name and operator), why, and the fix."""

    rule: str
    level: str
    message: str
    fix: str = ""
    node: str | None = None
    op: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        where = f"node '{self.node}' ({self.op}): " if self.node else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.level:7s} {self.rule}: {where}{self.message}.{fix}"


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str
    source: str
    check: Callable[[GraphView], Iterator[Finding]]


RULES: dict[str, Rule] = {}


def rule(name: str, summary: str, source: str) -> Callable:
    def register(check: Callable[[GraphView], Iterator[Finding]]) -> Callable:
        RULES[name] = Rule(name, summary, source, check)
        return check

    return register


TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "STRING",
    onnx.TensorProto.COMPLEX64: "COMPLEX64",
    onnx.TensorProto.COMPLEX128: "COMPLEX128",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8",
    onnx.TensorProto.INT4: "INT4",
    onnx.TensorProto.UINT4: "UINT4",
}
if hasattr(onnx.TensorProto, "FLOAT4E2M1"):
    TYPE_NAMES[onnx.TensorProto.FLOAT4E2M1] = "FP4"


@dataclass
class GraphView:
    """The main graph of a shape-inferred model, indexed for the rules."""

    model: onnx.ModelProto
    target: Target
    profiles: set[str] | None
    """Inputs the build gives optimization profiles (None: unknown, e.g. a bare model)."""
    compute_capabilities: tuple[tuple[int, int], ...] | None = None
    """The GPUs the engine is built for, as (major, minor) (None: unknown, e.g. a bare model)."""
    types: dict[str, str] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=lambda: defaultdict(list))
    outputs: set[str] = field(default_factory=set)

    @classmethod
    def of(
        cls,
        model: onnx.ModelProto,
        target: Target,
        profiles: set[str] | None,
        compute_capabilities: Sequence[str] | None = None,
    ) -> GraphView:
        """``compute_capabilities``: as a recipe names them ("8.9", "12.0") or "sm89"."""
        with contextlib.suppress(Exception):  # best effort: rules skip what has no type
            model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        capabilities = (
            None
            if compute_capabilities is None
            else tuple(compute_capability(c) for c in compute_capabilities)
        )
        view = cls(model, target, profiles, capabilities)
        graph = model.graph
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor = value.type.tensor_type
            if tensor.elem_type:
                view.types[value.name] = TYPE_NAMES.get(tensor.elem_type, str(tensor.elem_type))
            if tensor.HasField("shape"):
                view.ranks[value.name] = len(tensor.shape.dim)
        for init in graph.initializer:
            view.types[init.name] = TYPE_NAMES.get(init.data_type, str(init.data_type))
            view.ranks[init.name] = len(init.dims)
            if np.prod(init.dims, dtype=np.int64) <= 1 << 16:  # small ones: scalars, axes, K
                view.constants[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            for name in node.output:
                view.producer[name] = node
            for name in node.input:
                if name:
                    view.consumers[name].append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value":
                        array = numpy_helper.to_array(attr.t)
                        view.constants[node.output[0]] = array
                        view.types[node.output[0]] = TYPE_NAMES.get(attr.t.data_type, "?")
        view.outputs = {o.name for o in graph.output}
        return view

    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    def attr(self, node: onnx.NodeProto, name: str, default: object = None) -> object:
        for attribute in node.attribute:
            if attribute.name == name:
                return onnx.helper.get_attribute_value(attribute)
        return default

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)


def compute_capability(text: str) -> tuple[int, int]:
    """(major, minor) of a compute capability written "8.9", "12.0" or "sm89", "SM120"."""
    value = str(text).strip().lower()
    if value.startswith("sm") and value[2:].isdigit() and len(value) in (4, 5):
        return int(value[2:-1]), int(value[-1])
    major, _, minor = value.partition(".")
    if not (major.isdigit() and minor.isdigit() and len(minor) == 1):
        raise ValueError(f"'{text}' is not a compute capability such as 8.9 or 12.0")
    return int(major), int(minor)


def _finding(
    rule_name: str, level: str, node: onnx.NodeProto | None, message: str, fix: str = ""
) -> Finding:
    return Finding(
        rule_name,
        level,
        message,
        fix,
        node.name or None if node else None,
        node.op_type if node else None,
    )


def _is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


@rule(
    "opset", "the model's ONNX opset is outside the target's documented range", support.OPSET_GUIDE
)
def check_opset(view: GraphView) -> Iterator[Finding]:
    target = view.target
    for entry in view.model.opset_import:
        if entry.domain not in ("", "ai.onnx"):
            continue
        if not target.min_opset <= entry.version <= target.max_opset:
            yield Finding(
                "opset",
                ERROR,
                f"opset {entry.version} is outside {target.title}'s range "
                f"{target.min_opset}-{target.max_opset}",
                "re-export at a supported opset or convert with onnx.version_converter",
            )
        elif target.opset_note and entry.version > 20:
            yield Finding("opset", WARNING, f"opset {entry.version}: {target.opset_note}")


@rule(
    "unsupported-op",
    "operators the support matrix marks unsupported, or custom-domain operators (plugins)",
    support.OPERATORS_DOC,
)
def check_operators(view: GraphView) -> Iterator[Finding]:
    for node in view.nodes():
        if not _is_default_domain(node):
            yield _finding(
                "unsupported-op",
                ERROR,
                node,
                f"operator {node.domain}::{node.op_type} is not an ONNX operator; TensorRT needs a "
                "plugin for it",
                "replace it with standard ONNX operators or load a TensorRT plugin that "
                "implements it",
            )
        elif node.op_type in support.UNSUPPORTED:
            yield _finding(
                "unsupported-op",
                ERROR,
                node,
                f"{node.op_type} is not supported by {view.target.title}",
                "rewrite it with supported operators (or fold it away with fold-constants)",
            )
        elif node.op_type not in support.SUPPORTED_TYPES:
            yield _finding(
                "unsupported-op",
                WARNING,
                node,
                f"{node.op_type} is not in TensorRT's ONNX support matrix",
                "check that the target's parser accepts it (trtopt lint --target tensorrt-rtx "
                "parses for real)",
            )


def _pool_checks(view: GraphView, node: onnx.NodeProto) -> Iterator[str]:
    dilations = view.attr(node, "dilations")
    if dilations and any(d != 1 for d in dilations):
        yield f"dilations {list(dilations)} are not supported (must be empty or all ones)"
    rank = view.ranks.get(node.input[0])
    if node.op_type in ("AveragePool", "MaxPool") and rank is not None and rank not in (4, 5):
        yield f"only 2D or 3D pooling is supported; the input has rank {rank}"
    if node.op_type == "MaxPool" and len(node.output) > 1 and view.consumers.get(node.output[1]):
        yield "the Indices output is not supported"


def _restrictions(view: GraphView, node: onnx.NodeProto) -> Iterator[str]:
    op, attr = node.op_type, view.attr
    if op in ("AveragePool", "MaxPool", "LpPool"):
        yield from _pool_checks(view, node)
    elif op == "LayerNormalization":
        used = [o for o in node.output[1:] if o and (view.consumers.get(o) or o in view.outputs)]
        if used:
            yield "only the first output (Y) is supported"
    elif op == "TopK":
        if attr(node, "sorted", 1) == 0:
            yield "sorted=0 is not supported"
        k = view.constant(node.input[1]) if len(node.input) > 1 else None
        if k is not None and k.size and int(k.reshape(-1)[0]) >= support.TOPK_MAX_K:
            yield f"K={int(k.reshape(-1)[0])} must be less than {support.TOPK_MAX_K}"
    elif op == "ScatterND" and attr(node, "reduction", b"none") not in (b"none", "none"):
        yield "reductions other than 'none' are not supported"
    elif op == "Resize":
        yield from _resize_checks(view, node)
    elif op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
        zero = view.constant(node.input[2])
        if zero is not None and np.any(zero.astype(np.float64) != 0):
            yield "the zero point must be 0 (TensorRT quantization is symmetric)"
    elif op == "Dropout" and len(node.input) > 2 and node.input[2]:
        training = view.constant(node.input[2])
        if training is None or bool(np.any(training)):
            yield "is_training must be an initializer that is False"
    elif op == "LSTM" and (attr(node, "input_forget", 0) != 0 or attr(node, "layout", 0) != 0):
        yield "input_forget and layout must be 0"
    elif op == "Constant" and {a.name for a in node.attribute} & {
        "sparse_value",
        "value_string",
        "value_strings",
    }:
        yield "sparse_value, value_string and value_strings are not supported"
    elif op in ("CumSum", "OneHot") and len(node.input) > 1:
        if not _is_constant(view, node.input[1]):
            what = "axis" if op == "CumSum" else "depth"
            yield f"`{what}` must be a build-time constant"
    elif op.startswith("Reduce") and len(node.input) > 1 and node.input[1]:
        if not _is_constant(view, node.input[1]):
            yield "`axes` must be an initializer"
    elif op == "GridSample":
        rank = view.ranks.get(node.input[0])
        if rank is not None and rank != 4:
            yield f"the input must be 4D (it has rank {rank})"


def _resize_checks(view: GraphView, node: onnx.NodeProto) -> Iterator[str]:
    def text(name: str, default: str) -> str:
        value = view.attr(node, name, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    mode = text("mode", "nearest")
    if mode not in support.RESIZE_MODES:
        yield f"mode '{mode}' is not supported (nearest or linear)"
    coordinates = text("coordinate_transformation_mode", "half_pixel")
    if coordinates not in support.RESIZE_COORDINATE_MODES:
        yield f"coordinate_transformation_mode '{coordinates}' is not supported"
    nearest = text("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in support.RESIZE_NEAREST_MODES:
        yield f"nearest_mode '{nearest}' is not supported"
    if view.attr(node, "antialias", 0):
        yield "antialiasing is not supported"
    if text("keep_aspect_ratio_policy", "stretch") != "stretch":
        yield "only keep_aspect_ratio_policy 'stretch' is supported"


@rule(
    "op-restriction",
    "attributes and inputs the support matrix's Restrictions column rules out",
    support.OPERATORS_DOC,
)
def check_restrictions(view: GraphView) -> Iterator[Finding]:
    for node in view.nodes():
        if not _is_default_domain(node):
            continue
        for problem in _restrictions(view, node):
            yield _finding(
                "op-restriction",
                ERROR,
                node,
                problem,
                f"see the {node.op_type} row of the ONNX operator support matrix",
            )


@rule(
    "dtype",
    "data types TensorRT lacks (DOUBLE is cast down, complex/string are rejected, UINT8 only at "
    "the network's edges, INT64 only where an operator lists it) and operator inputs whose type "
    "the matrix does not list",
    support.OPERATORS_DOC,
)
def check_types(view: GraphView) -> Iterator[Finding]:
    graph = view.model.graph
    edges = {v.name for v in (*graph.input, *graph.output)}
    reported: set[str] = set()
    for value in [*graph.input, *graph.initializer]:
        kind = view.types.get(value.name)
        if kind in ("COMPLEX64", "COMPLEX128", "STRING") and value.name not in reported:
            reported.add(value.name)
            yield Finding(
                "dtype", ERROR, f"tensor '{value.name}' is {kind}, which TensorRT does not support"
            )
    for node in view.nodes():
        if not _is_default_domain(node):
            continue
        for name in node.output:
            kind = view.types.get(name)
            if kind == "DOUBLE" and name not in reported:
                reported.add(name)
                yield _finding(
                    "dtype",
                    WARNING,
                    node,
                    f"output '{name}' is DOUBLE: TensorRT casts it down to FP32, clamping to "
                    "+-FLT_MAX",
                    "compute in FP32 (cast once, early)",
                )
            elif kind in ("COMPLEX64", "COMPLEX128", "STRING"):
                yield _finding("dtype", ERROR, node, f"output '{name}' is {kind}")
            elif kind == "UINT8" and name not in edges and node.op_type != "QuantizeLinear":
                yield _finding(
                    "dtype",
                    ERROR,
                    node,
                    f"output '{name}' is UINT8, which TensorRT supports only as a network input "
                    "or output",
                    "use INT32 (or FP16/FP32) inside the network",
                )
        allowed = support.SUPPORTED_TYPES.get(node.op_type)
        kind = view.types.get(node.input[0]) if node.input and node.input[0] else None
        if allowed is None or kind is None or kind == "DOUBLE" or kind in allowed:
            continue
        if kind == "UINT8" and node.input[0] in edges and node.op_type in ("Cast", "CastLike"):
            continue
        narrowing = " (INT64 is not narrowed for it)" if kind == "INT64" else ""
        yield _finding(
            "dtype",
            ERROR,
            node,
            f"input '{node.input[0]}' is {kind}; {node.op_type} supports "
            f"{', '.join(sorted(allowed))}{narrowing}",
            "cast the input to a supported type"
            if kind not in support.QUANTIZED_TYPES
            else "quantized types exist only between QuantizeLinear and DequantizeLinear",
        )


@rule(
    "dynamic-shape",
    "dynamic input dimensions without an optimization profile",
    "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-dynamic-shapes.html",
)
def check_dynamic(view: GraphView) -> Iterator[Finding]:
    initializers = {i.name for i in view.model.graph.initializer}
    for value in view.model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        dynamic = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
        if not dynamic or (view.profiles is not None and value.name in view.profiles):
            continue
        yield Finding(
            "dynamic-shape",
            WARNING,
            f"input '{value.name}' has dynamic dims {dynamic} and no optimization profile: the "
            "engine is fixed at one shape",
            f"give inputs.{value.name}.profile {{min, opt, max}} in the recipe",
        )


def _is_constant(view: GraphView, name: str) -> bool:
    if name in {i.name for i in view.model.graph.initializer}:
        return True
    producer = view.producer.get(name)
    return producer is not None and producer.op_type == "Constant"


@rule(
    "qdq-fusion",
    "Q/DQ placements TensorRT cannot fuse into quantized kernels",
    support.QUANTIZATION_DOC,
)
def check_qdq(view: GraphView) -> Iterator[Finding]:
    for node in view.nodes():
        if node.op_type == "QuantizeLinear":
            consumers = view.consumers.get(node.output[0], [])
            strays = [c for c in consumers if c.op_type != "DequantizeLinear"]
            for consumer in strays:
                yield _finding(
                    "qdq-fusion",
                    ERROR,
                    node,
                    f"its quantized output feeds '{consumer.name}' ({consumer.op_type}) directly; "
                    "a quantized tensor must go to a DequantizeLinear",
                    "put a DequantizeLinear between them",
                )
            scale = view.constant(node.input[1]) if len(node.input) > 1 else None
            if scale is not None and scale.size > 1 and not _is_constant(view, node.input[0]):
                yield _finding(
                    "qdq-fusion",
                    WARNING,
                    node,
                    "per-channel quantization of an activation; TensorRT quantizes activations "
                    "per tensor and weights per channel",
                    "use one scale for activations",
                )
        elif node.op_type == "DequantizeLinear" and not _is_constant(view, node.input[0]):
            for consumer in view.consumers.get(node.output[0], []):
                if consumer.op_type not in support.QDQ_FUSIBLE:
                    yield _finding(
                        "qdq-fusion",
                        WARNING,
                        node,
                        f"it feeds '{consumer.name}' ({consumer.op_type}), which TensorRT runs in "
                        "floating point: the pair will not fuse and only adds rounding",
                        f"move the Q/DQ pair to the input of the next quantizable operator or "
                        f"drop it ({consumer.op_type} is not one)",
                    )


@rule(
    "precision",
    "precision requests a strongly typed build does not honour",
    support.QUANTIZATION_DOC,
)
def check_precision(view: GraphView) -> Iterator[Finding]:
    for node in view.nodes():
        if node.op_type != "Cast":
            continue
        to = TYPE_NAMES.get(view.attr(node, "to"))
        source = view.types.get(node.input[0])
        consumers = view.consumers.get(node.output[0], [])
        if (
            to in ("FP16", "BF16")
            and consumers
            and all(
                c.op_type == "Cast" and TYPE_NAMES.get(view.attr(c, "to")) == source
                for c in consumers
            )
            and node.output[0] not in view.outputs
        ):
            yield _finding(
                "precision",
                WARNING,
                node,
                f"it casts to {to} and straight back to {source}: no layer computes in {to}, "
                "the round trip only loses precision (a strongly typed build runs the graph's "
                "types, nothing else)",
                "cast around the operators meant to run in reduced precision (the precision "
                "pass does), or drop both casts",
            )
    hints = [p.key for p in view.model.metadata_props if p.key.lower() in PRECISION_HINT_KEYS]
    for key in hints:
        yield Finding(
            "precision",
            WARNING,
            f"model metadata '{key}' asks for a precision; strongly typed TensorRT ignores "
            "builder precision requests and runs the graph's own types",
            "express precision in the graph (Cast to FP16/BF16, Q/DQ for INT8/FP8)",
        )


PRECISION_HINT_KEYS = {"precision", "fp16", "int8", "bf16", "fp8", "trt_precision"}


FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
"""FP8 (E4M3) kernels exist from Ada (8.9) on: Ada, Hopper (9.0), Blackwell (10.0, 12.0)."""
INT4_MIN_COMPUTE_CAPABILITY = (8, 0)
"""INT4 weight-only GEMMs exist from Ampere (8.0) on."""
RTX_QUANTIZED_DOC = (
    "https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/"
    "work-quantized-types.html"
)


def _typed_qdq(view: GraphView, type_name: str) -> list[onnx.NodeProto]:
    """The Q/DQ nodes that read or write ``type_name`` tensors."""
    return [
        node
        for node in view.nodes()
        if node.op_type in ("QuantizeLinear", "DequantizeLinear")
        and any(view.types.get(name) == type_name for name in (*node.input, *node.output) if name)
    ]


def _capability_findings(
    view: GraphView,
    rule_name: str,
    nodes: list[onnx.NodeProto],
    least: tuple[int, int],
    what: str,
    gpus: str,
    instead: str,
) -> Iterator[Finding]:
    """An error when the build names a GPU older than ``least`` for ``nodes`` (of type
    ``what``), a warning when it names none."""
    if not nodes:
        return
    oldest = ".".join(str(v) for v in least)
    said = f"{len(nodes)} Q/DQ node(s) compute in {what}"
    named = view.compute_capabilities
    if named is None:
        where = (
            f"name them in build.tensorrt_rtx.compute_capabilities (e.g. [{oldest}, 12.0])"
            if view.target.name == "tensorrt-rtx"
            else "build and deploy on those GPUs"
        )
        yield _finding(
            rule_name,
            WARNING,
            nodes[0],
            f"{said} (this is the first), which only GPUs of compute capability {oldest} or "
            f"later run ({gpus})",
            f"{where}, or {instead} for older ones",
        )
        return
    older = [f"{a}.{b}" for a, b in named if (a, b) < least]
    if older:
        yield _finding(
            rule_name,
            ERROR,
            nodes[0],
            f"{said} (this is the first), but the build targets compute capability "
            f"{', '.join(older)}, below {oldest}: TensorRT refuses {what} there",
            f"drop {', '.join(older)} from the build's compute capabilities, or {instead}",
        )


@rule(
    "fp8-compute-capability",
    "FP8 Q/DQ need compute capability 8.9 or later (Ada, Hopper, Blackwell): an error when the "
    "build names an older GPU, a warning when it names none",
    RTX_QUANTIZED_DOC,
)
def check_fp8_capability(view: GraphView) -> Iterator[Finding]:
    # "FP8 is only supported for matrix multiplications (GEMM) on Ada and later architectures
    # (compute capability 8.9 or later)"; TensorRT for RTX refuses to build such a graph for
    # SM86 or SM75: "the model contains HW-specific datatypes: fp8_e4m3".
    yield from _capability_findings(
        view,
        "fp8-compute-capability",
        _typed_qdq(view, "FP8"),
        FP8_MIN_COMPUTE_CAPABILITY,
        "FP8",
        "Ada, Hopper, Blackwell",
        "quantize with dtype int8",
    )


@rule(
    "int4-compute-capability",
    "INT4 weights need compute capability 8.0 or later (Ampere on): an error when the build "
    "names an older GPU (Turing), a warning when it names none",
    RTX_QUANTIZED_DOC,
)
def check_int4_capability(view: GraphView) -> Iterator[Finding]:
    # TensorRT for RTX 1.7 builds block-wise INT4 DequantizeLinear for SM80, SM86, SM89 and
    # SM120 and refuses SM75: "the model contains HW-specific datatypes: int4".
    yield from _capability_findings(
        view,
        "int4-compute-capability",
        _typed_qdq(view, "INT4"),
        INT4_MIN_COMPUTE_CAPABILITY,
        "INT4",
        "Ampere, Ada, Hopper, Blackwell",
        "quantize with dtype int8",
    )
