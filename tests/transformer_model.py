"""A pre-norm transformer encoder of any size, built with onnx.helper, weights written to one
external data file a tensor at a time (so making a 2+ GiB model needs little memory).

The graph is what the legacy torch exporter emits for such a model: LayerNorm and GELU spelled
out as primitive ops, MatMul + Add for each linear layer, attention through Reshape/Transpose.
Weights are random with trained-like scales, so outputs vary with the input.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Writer:
    """Initializers whose bytes go straight to the data file."""

    def __init__(self, handle, location: str, rng: np.random.Generator) -> None:
        self.handle = handle
        self.location = location
        self.rng = rng
        self.tensors: list[TensorProto] = []

    def add(self, name: str, values: np.ndarray) -> str:
        values = np.ascontiguousarray(values)
        if values.nbytes < 1024:
            self.tensors.append(numpy_helper.from_array(values, name))
            return name
        offset = self.handle.tell()
        self.handle.write(values.data)
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=values.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.location),
            ("offset", str(offset)),
            ("length", str(values.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.tensors.append(tensor)
        return name

    def random(self, name: str, shape: tuple[int, ...], scale: float) -> str:
        """Uniform values with standard deviation ``scale``: what matters here is the scale,
        and uniform draws take a third of the time of normal ones (2 GiB of weights)."""
        values = self.rng.random(shape, dtype=np.float32)
        values -= 0.5
        values *= 2 * math.sqrt(3) * scale  # the std of U(-a, a) is a / sqrt(3)
        return self.add(name, values)


def make_transformer(path: Path, layers: int, hidden: int, heads: int = 8, seed: int = 0) -> Path:
    """Write ``path`` and ``path.data``: input ``x`` [batch, sequence, hidden] -> ``y``."""
    data_path = path.with_name(path.name + ".data")
    with open(data_path, "wb") as handle:
        writer = _Writer(handle, data_path.name, np.random.default_rng(seed))
        model = _build(writer, layers, hidden, heads)
    onnx.save(model, str(path))
    return path


def _build(writer: _Writer, layers: int, hidden: int, heads: int) -> onnx.ModelProto:
    rng = writer.rng
    nodes: list[onnx.NodeProto] = []
    head_dim = hidden // heads

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(name: str, value) -> str:
        return writer.add(name, np.asarray(value))

    def layer_norm(x: str, p: str) -> str:
        mean = node("ReduceMean", [x], f"{p}.mean", axes=[-1])
        centred = node("Sub", [x, mean], f"{p}.sub")
        square = node("Pow", [centred, const(f"{p}.two", np.float32(2))], f"{p}.pow")
        var = node("ReduceMean", [square], f"{p}.var", axes=[-1])
        std = node(
            "Sqrt",
            [node("Add", [var, const(f"{p}.eps", np.float32(1e-5))], f"{p}.addeps")],
            f"{p}.sqrt",
        )
        normed = node("Div", [centred, std], f"{p}.div")
        gamma = writer.add(
            f"{p}.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        )
        beta = writer.add(f"{p}.bias", (0.1 * rng.standard_normal(hidden)).astype(np.float32))
        return node("Add", [node("Mul", [normed, gamma], f"{p}.mul"), beta], f"{p}.out")

    def linear(x: str, p: str, n_in: int, n_out: int) -> str:
        weight = writer.random(f"{p}.weight", (n_in, n_out), 1 / math.sqrt(n_in))
        bias = writer.add(f"{p}.bias", (0.02 * rng.standard_normal(n_out)).astype(np.float32))
        return node("Add", [node("MatMul", [x, weight], f"{p}.matmul"), bias], f"{p}.out")

    split = const("heads_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge = const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = const("scale", np.float32(1 / math.sqrt(head_dim)))
    x = "x"
    for i in range(layers):
        p = f"layer{i}"
        h = layer_norm(x, f"{p}.ln1")
        q, k, v = (
            node(
                "Transpose",
                [node("Reshape", [linear(h, f"{p}.{n}", hidden, hidden), split], f"{p}.{n}.split")],
                f"{p}.{n}.heads",
                perm=[0, 2, 1, 3] if n != "k" else [0, 2, 3, 1],
            )
            for n in ("q", "k", "v")
        )
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        context = node(
            "Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t", perm=[0, 2, 1, 3]
        )
        merged = node("Reshape", [context, merge], f"{p}.merged")
        x = node("Add", [x, linear(merged, f"{p}.o", hidden, hidden)], f"{p}.res1")
        h = linear(layer_norm(x, f"{p}.ln2"), f"{p}.fc1", hidden, 4 * hidden)
        erf = node(
            "Erf",
            [node("Div", [h, const(f"{p}.sqrt2", np.float32(math.sqrt(2)))], f"{p}.gdiv")],
            f"{p}.erf",
        )
        one_plus = node("Add", [erf, const(f"{p}.one", np.float32(1))], f"{p}.gadd")
        gelu = node(
            "Mul",
            [node("Mul", [h, one_plus], f"{p}.gmul"), const(f"{p}.half", np.float32(0.5))],
            f"{p}.gelu",
        )
        x = node("Add", [x, linear(gelu, f"{p}.fc2", 4 * hidden, hidden)], f"{p}.res2")
    nodes.append(helper.make_node("Identity", [layer_norm(x, "final_ln")], ["y"], name="output"))
    graph = helper.make_graph(
        nodes,
        "transformer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        writer.tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


FP16_RECIPE = """\
name: transformer-fp16
model: {model}
inputs:
  x: {{shape: [batch, sequence, {hidden}]}}
passes:
  - cleanup
  - fold-constants
  - fuse
  - infer-shapes
  - cleanup
  - precision: {{dtype: fp16}}
build: {{backend: onnxruntime}}
check:
  samples: {samples}
  dims: {{batch: 1, sequence: {sequence}}}
  thresholds: {{min_cosine: 0.999, max_abs: 0.1}}
  latency_runs: {latency_runs}
"""


def fp16_recipe(
    model: Path, hidden: int, samples: int = 1, sequence: int = 8, latency_runs: int = 0
) -> str:
    """A recipe that compiles ``model`` to FP16 on ONNX Runtime (the default chain, then the
    precision pass) and checks it against the original."""
    return FP16_RECIPE.format(
        model=model, hidden=hidden, samples=samples, sequence=sequence, latency_runs=latency_runs
    )


def size_on_disk(path: Path) -> int:
    """The model file and its data file together."""
    return path.stat().st_size + path.with_name(path.name + ".data").stat().st_size
