"""What each TensorRT target accepts, transcribed from NVIDIA's published documentation.

Sources (read for this table; re-check them when a target's version moves):

- OPERATORS_DOC: ONNX-TensorRT ``docs/operators.md`` as published for TensorRT 10.15
  ("supports operators in the inclusive range of opset 9 to opset 24"): the Supported, Supported
  Types and Restrictions columns below. TensorRT's own ONNX opset guide names that file as the
  operator support list for TensorRT 11 too.
- OPSET_GUIDE: TensorRT 11.x ONNX opset guide: maximum opset 25, minimum 9.
- TensorRT 10.0's operators.md: opset 9 to 20 (earlier 10.x releases accept fewer opsets).
- QUANTIZATION_DOC: "Explicit Quantization" (TensorRT inference library guide): "Use explicit
  quantization with Strong Typing. Precision-control build flags are not required and should
  not be specified."; quantized types (INT8, FP8, INT4, FP4) exist only through Q/DQ.
- RTX_DOC: TensorRT for RTX uses the same ONNX parser; trtopt parses with it for real.
"""

from __future__ import annotations

from dataclasses import dataclass

OPERATORS_DOC = "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md (TensorRT 10.15)"
OPSET_GUIDE = "https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/onnx-opset-guide.html"
QUANTIZATION_DOC = (
    "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/"
    "quantized-types-explicit-quantization.html"
)
RTX_DOC = "https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/index.html"


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    min_opset: int
    max_opset: int
    opset_source: str
    opset_note: str = ""


TARGETS: dict[str, Target] = {
    "tensorrt-10": Target(
        "tensorrt-10",
        "TensorRT 10.x",
        9,
        24,
        OPERATORS_DOC,
        "TensorRT 10.0 documents opsets 9-20 only; later 10.x releases raise the limit",
    ),
    "tensorrt-11": Target("tensorrt-11", "TensorRT 11.x", 9, 25, OPSET_GUIDE),
    "tensorrt-rtx": Target("tensorrt-rtx", "TensorRT for RTX", 9, 24, OPERATORS_DOC),
}

_F = "FP32 FP16 BF16"
_FI = f"{_F} INT32 INT64"
_FIB = f"{_FI} BOOL"
_GROUPS: dict[str, str] = {
    _F: """Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv
        ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool
        GlobalLpPool GlobalMaxPool GroupNormalization GRU HardSigmoid HardSwish Hardmax
        ImageScaler InstanceNormalization IsInf LayerNormalization LeakyRelu Log LogSoftmax LRN
        LSTM LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization ParametricSoftplus
        PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
        Reciprocal Resize RMSNormalization RNN RotaryEmbedding Round ScaledTanh Scan Selu Sigmoid
        Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample""",
    _FI: """Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less
        LessOrEqual Max Min Mod Mul Neg Pow Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
        ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Scatter
        ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK""",
    _FIB: """Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity If Loop OneHot
        Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze
        Where""",
    "BOOL": "And Not Or Xor",
    "FP32 FP16": """BlackmanWindow DeformConv GridSample HammingWindow HannWindow Mish
        NonMaxSuppression NonZero RoiAlign""",
    "FP32": "STFT",
    f"{_F} INT8 FP8": "Attention",
    f"{_FI} UINT8 BOOL": "Cast CastLike",
    f"{_F} FP8 FP4 INT4 INT32 INT64 BOOL": "Constant ConstantOfShape",
    "INT8 FP8 FP4 INT4": "DequantizeLinear",
    f"{_F} INT8 INT32 INT64": "Gelu",
    f"{_F} FP8 INT32 INT64": "Mean",
    f"{_F} INT32": "TensorScatter",
}
SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    op: frozenset(types.split()) for types, ops in _GROUPS.items() for op in ops.split()
}
"""Operator (default ONNX domain) -> the data types its Supported Types column lists."""

UNSUPPORTED: frozenset[str] = frozenset(
    [
        "AffineGrid",
        "Bernoulli",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "Col2Im",
        "CenterCropPad",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "ImageDecoder",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    ]
)
"""Operators the matrix marks N."""

RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
TOPK_MAX_K = 3840
"""TopK: "`K` input must be less than 3840"."""

QUANTIZED_TYPES = frozenset({"INT8", "FP8", "FP4", "INT4"})

QDQ_FUSIBLE: frozenset[str] = frozenset(
    [
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "Add",
        "Mul",
        "Sub",
        "AveragePool",
        "MaxPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Concat",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Split",
        "Pad",
        "Resize",
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "Clip",
        "Einsum",
        "Attention",
        "Gather",
        "BatchNormalization",
    ]
)
"""Operators TensorRT can run on dequantized inputs in the quantized type (weighted ops, their
residual adds, pooling, and the data-movement ops Q/DQ propagates through: the explicit
quantization guide's placement recommendations). A DequantizeLinear feeding anything else runs
as a separate dequantize plus a floating-point op."""
