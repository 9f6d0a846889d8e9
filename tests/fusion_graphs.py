"""Small ONNX graphs for the fusion tests: a builder, hypothesis strategies, an ORT check."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import strategies as st
from onnx import TensorProto, helper

import trtopt

FLOAT = TensorProto.FLOAT


class Graph:
    """A tiny graph builder: ``x = g.input(...); y = g.op("Relu", x); g.output(y)``."""

    def __init__(self, opset: int = 18, seed: int = 0) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.count = 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def input(self, shape: list[int | str], name: str | None = None, dtype=np.float32) -> str:
        name = name or self._name("in")
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        concrete = [d if isinstance(d, int) else 2 for d in shape]  # a symbolic dim is fed as 2
        self.feeds[name] = self.rng.standard_normal(concrete).astype(dtype)
        return name

    def const(self, values: np.ndarray | list | float, dtype=None) -> str:
        array = np.array(values, dtype=dtype)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self._name("c")
        self.initializers.append(onnx.numpy_helper.from_array(array, name))
        return name

    def rand(self, *shape: int, low: float = -1.0, high: float = 1.0) -> str:
        return self.const(self.rng.uniform(low, high, shape).astype(np.float32))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: object) -> str:
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), names, self._name(op_type), **attrs)
        )
        return names[0]

    def output(self, name: str, shape: list | None = None, dtype=FLOAT) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g", self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        # Fill in the outputs' shapes (those given explicitly are kept, right or wrong).
        inferred = onnx.shape_inference.infer_shapes(model)
        for output, found in zip(model.graph.output, inferred.graph.output, strict=True):
            if not output.type.tensor_type.HasField("shape"):
                output.type.CopyFrom(found.type)
        return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs as the graph computes them (ORT's own optimizations off)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def optimize_checked(
    graph: Graph, passes: list, rtol: float = 1e-4, atol: float = 1e-5
) -> onnx.ModelProto:
    """Run ``passes`` over the graph's model; assert same outputs and shapes; return the result."""
    model = graph.model()
    optimized = trtopt.optimize(model, passes)
    onnx.checker.check_model(optimized, full_check=False)
    before, after = run(model, graph.feeds), run(optimized, graph.feeds)
    for a, b in zip(before, after, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
    return optimized


# Near-miss variants every fusion test draws from alongside the real pattern.
FUSE, EXTRA_CONSUMER, NON_CONSTANT = "fuse", "extra-consumer", "non-constant"
variants = st.sampled_from([FUSE, EXTRA_CONSUMER, NON_CONSTANT])
channels = st.integers(min_value=1, max_value=6)
spatial = st.integers(min_value=3, max_value=7)
