"""The real TensorRT ONNX parser as a linter: every error it reports, mapped to its ONNX node and
a plain-language cause with a fix.

Polygraphy's ``NetworkFromOnnxPath`` only raises "Could not parse ONNX correctly" (the node
names go to its log), so the model is parsed again here with a bare ``OnnxParser``, whose
``ParserError`` objects carry the node index, name and operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOISE = "catchCudaError"
"""A CUDA-runtime line TensorRT adds to messages on a machine without a GPU driver."""


@dataclass(frozen=True)
class ParserIssue:
    """One node the parser rejected."""

    node: str
    op: str
    index: int
    code: str
    message: str
    cause: str
    fix: str


# (pattern over the parser message, cause, fix); the first match wins. {op} is the operator.
EXPLANATIONS: tuple[tuple[str, str, str], ...] = (
    (
        r"Plugin not found",
        "'{op}' is neither a TensorRT operator nor a registered TensorRT plugin",
        "replace it with standard ONNX operators (or fold it away with fold-constants), or "
        "load a TensorRT plugin that implements it",
    ),
    (
        r"zero[_ ]point",
        "TensorRT quantization is symmetric: zero points must be 0",
        "re-quantize with symmetric scales (zero point 0)",
    ),
    (
        r"DequantizeLinear|must have type FP8, FP4, Int4, Int8",
        "TensorRT dequantizes only INT8, FP8, INT4 and FP4 tensors; this input has another type "
        "(typically an INT32 bias)",
        "keep that tensor in floating point: remove its QuantizeLinear/DequantizeLinear pair",
    ),
    (
        r"(?i)unsupported.*(data ?type|dtype)|DOUBLE|FLOAT64|COMPLEX|STRING",
        "a tensor has a data type TensorRT does not support here",
        "cast it to FP32/FP16 (or INT32) before this node",
    ),
    (
        r"(?i)must be an initializer|must be a build-time constant|constant",
        "an input TensorRT needs at build time is computed at run time",
        "run fold-constants (and infer-shapes) so that it becomes an initializer",
    ),
    (
        r"(?i)dynamic",
        "TensorRT needs a static value or shape here",
        "fix the shape in the recipe's inputs or fold the computation that produces it",
    ),
)


def explain(op: str, message: str) -> tuple[str, str]:
    """(cause, fix) for a parser message about an ``op`` node."""
    for text in (message, op):  # the message decides; the operator only when it says nothing
        for pattern, cause, fix in EXPLANATIONS:
            if re.search(pattern, text):
                return cause.format(op=op), fix.format(op=op)
    first = message.splitlines()[0] if message else "rejected by the parser"
    return first, f"see the {op} restrictions in TensorRT's ONNX operator support matrix"


def _clean(text: str) -> str:
    return "\n".join(line for line in str(text).splitlines() if NOISE not in line).strip()


def parse_errors(trt: Any, model_path: Path) -> list[ParserIssue]:
    """Parse ``model_path`` with ``trt``'s ONNX parser; one ParserIssue per error it reports.

    ``trt`` is the imported ``tensorrt`` or ``tensorrt_rtx`` module. Parsing needs no GPU.
    """

    class Silent(trt.ILogger):  # the parser's errors are read back below, not printed
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            pass

    logger = Silent()
    builder = trt.Builder(logger)
    flags = 0
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if creation is not None and hasattr(creation, "STRONGLY_TYPED"):
        flags = 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parser.parse_from_file(str(model_path))
    issues = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        op = error.node_operator() or "?"
        text = _clean(error.desc())
        cause, fix = explain(op, text)
        issues.append(
            ParserIssue(
                node=error.node_name() or f"#{error.node()}",
                op=op,
                index=int(error.node()),
                code=getattr(error.code(), "name", str(error.code())),
                message=text,
                cause=cause,
                fix=fix,
            )
        )
    return issues
