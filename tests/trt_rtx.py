"""Parse and build ONNX graphs with TensorRT for RTX on a CPU (ahead of time, SM89 + SM120).

TensorRT for RTX is strongly typed like TensorRT 11: a graph that builds here has precision
TensorRT accepts (Q/DQ forms, Cast chains, FP16/BF16 types). The builder needs no GPU for an
ahead-of-time build for named compute capabilities. Tests skip when ``tensorrt_rtx`` is not
importable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import pytest

SYMBOLIC_RANGE = (1, 2, 4)
"""min/opt/max of every symbolic dim in the optimization profile."""


def trt():
    return pytest.importorskip("tensorrt_rtx")


def build(model: onnx.ModelProto | Path, dims: dict[str, tuple[int, int, int]] | None = None):
    """Parse and build ``model`` for SM89 and SM120; returns the serialized engine's size in
    bytes. Fails the test with the parser's (or builder's) own errors."""
    engine = build_for(model, ("SM89", "SM120"), dims)
    if engine is None:
        pytest.fail("TensorRT could not build an engine from the graph")
    return engine.nbytes


def build_for(
    model: onnx.ModelProto | Path,
    capabilities: Sequence[str],
    dims: dict[str, tuple[int, int, int]] | None = None,
):
    """Parse ``model`` (failing the test with the parser's errors) and build it for the named
    compute capabilities (``rt.ComputeCapability`` names, e.g. SM86); the serialized engine, or
    None when TensorRT refuses to build one."""
    rt = trt()
    logger = rt.Logger(rt.Logger.ERROR)  # the builder says why it refuses, on stderr
    builder = rt.Builder(logger)
    network = builder.create_network(0)
    parser = rt.OnnxParser(network, logger)
    proto = onnx.load(str(model)) if isinstance(model, Path) else model
    if not parser.parse(proto.SerializeToString()):
        errors = [
            line
            for i in range(parser.num_errors)
            for line in str(parser.get_error(i)).splitlines()
            if "catchCudaError" not in line  # noise of a machine without a GPU driver
        ]
        pytest.fail("TensorRT cannot parse the graph:\n" + "\n".join(errors))
    config = builder.create_builder_config()
    config.num_compute_capabilities = len(capabilities)
    for index, name in enumerate(capabilities):
        config.set_compute_capability(getattr(rt.ComputeCapability, name), index)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        named = {}
        for axis, value in enumerate(shape):
            if value < 0:
                dim = proto.graph.input[i].type.tensor_type.shape.dim[axis].dim_param
                named[axis] = (dims or {}).get(dim, SYMBOLIC_RANGE)
        shapes = [[named[a][k] if a in named else v for a, v in enumerate(shape)] for k in range(3)]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    return builder.build_serialized_network(network, config)
