"""ONNX's own backend node tests through trtopt's passes: the harness tests/test_conformance.py
and benchmarks share. Each case's model runs on ONNX Runtime on the case's own inputs before
and after the passes; a case ONNX Runtime cannot run is not counted."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}
SKIPPED = ("lint", "fuse", "smooth")
"""Built-in passes not run alone (``chains``); smooth needs calibration data, as quantize
does (tests/test_smooth.py runs it on transformer blocks and under an If)."""


@dataclass(frozen=True)
class Outcome:
    case: str
    chain: str
    verdict: str  # ok | crash | broken | unchanged
    detail: str = ""


def cases() -> list[Any]:
    """Every node test case the onnx package ships (each: name, model, data_sets)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # the generators' own overflow warnings
        return list(collect_testcases())


def value(given: Any) -> Any:
    """A case's input as ONNX Runtime takes it: some are stored as TensorProto (float16,
    double, 8-bit floats) or NumPy scalars."""
    if isinstance(given, onnx.TensorProto):
        return onnx.numpy_helper.to_array(given)
    if isinstance(given, np.generic):
        return np.asarray(given)
    if isinstance(given, list):
        return [value(item) for item in given]
    return given


def run(model: onnx.ModelProto, inputs: Sequence[Any]) -> list[Any]:
    """``model`` on ONNX Runtime, on inputs given in the order the graph declares them."""
    names = [i.name for i in model.graph.input]
    return run_feed(model, {name: value(v) for name, v in zip(names, inputs)})


def run_feed(model: onnx.ModelProto, feed: dict[str, Any]) -> list[Any]:
    """``model`` on ONNX Runtime (CPU, quiet), on inputs by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in wanted})


def same(expected: Any, got: Any) -> bool:
    """Equal values: floats within TOLERANCE (NaN where NaN), everything else exactly;
    sequences element by element, optionals both absent or equal."""
    if isinstance(expected, list) or isinstance(got, list):
        return (
            isinstance(expected, list)
            and isinstance(got, list)
            and len(expected) == len(got)
            and all(same(a, b) for a, b in zip(expected, got))
        )
    if expected is None or got is None:
        return expected is None and got is None
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape or expected.dtype != got.dtype:
        return False
    if expected.dtype.kind in "fc":
        return bool(np.allclose(got, expected, equal_nan=True, **TOLERANCE))
    return bool(np.array_equal(got, expected))


def reference(case: Any) -> list[Any] | None:
    """The original model's outputs on the case's inputs; None when ONNX Runtime cannot."""
    try:
        return run(case.model, case.data_sets[0][0] if case.data_sets else [])
    except Exception:
        return None


def through(case: Any, expected: list[Any], chain: str, passes: list[Any]) -> Outcome:
    """One case through one chain of passes, run raw (``verify=False``): the passes' own
    correctness, with nothing rolled back."""
    import trtopt

    inputs = case.data_sets[0][0] if case.data_sets else []
    try:
        optimized = trtopt.optimize(case.model, passes=passes, verify=False)
    except Exception as error:
        return Outcome(case.name, chain, "crash", f"{type(error).__name__}: {error}"[:300])
    if optimized.graph == case.model.graph:
        return Outcome(case.name, chain, "unchanged")
    try:
        got = run(optimized, inputs)
    except Exception as error:
        return Outcome(case.name, chain, "broken", " ".join(str(error).split())[:300])
    if len(got) != len(expected) or not all(same(a, b) for a, b in zip(expected, got)):
        return Outcome(case.name, chain, "broken", "computes other outputs")
    return Outcome(case.name, chain, "ok")


def chains() -> dict[str, list[Any]]:
    """The default chain, fuse with opsets raised, and every built-in pass alone (precision
    and quantize change numbers on purpose: the accuracy tests judge them; lint changes
    nothing and fails on what TensorRT cannot run, by design; smooth needs calibration data).
    ``fuse`` itself is not run alone: it applies the fusions run alone here, in the default
    chain and raised to opset 20 (a seventh of the cases' time, for what those three
    cover)."""
    import trtopt

    found: dict[str, list[Any]] = {
        "default": None,
        "fuse-opset-20": [{"fuse": {"upgrade_opset": True}}],
    }
    for name, cls in trtopt.available_passes().items():
        if cls.__module__.startswith("trtopt.passes") and cls.exact and name not in SKIPPED:
            found[name] = [name]
    return found


def cannot_apply(chain: str, model: onnx.ModelProto) -> bool:
    """A fusion alone whose pattern's root op is nowhere in the main graph cannot change it
    (it only matches there): it is counted unchanged without being run. So is fuse with opsets
    raised to 20 on a model already there: it is the plain fuse chain, run anyway."""
    import trtopt
    from trtopt.passes.fusion.base import Fusion
    from trtopt.passes.fusion.pattern import root_ops

    if chain == "fuse-opset-20":
        versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
        return bool(versions) and versions[0] >= 20
    cls = trtopt.available_passes().get(chain)
    if cls is None or not issubclass(cls, Fusion):
        return False
    return not set(root_ops(cls.pattern)) & {n.op_type for n in model.graph.node}


def check_case(case: Any) -> list[Outcome]:
    """A case through every chain (nothing counted when ONNX Runtime cannot run it)."""
    logging.disable(logging.CRITICAL)  # what a failing pass logs is in its Outcome
    try:
        expected = reference(case)
        if expected is None:
            return []
        return [
            Outcome(case.name, chain, "unchanged")
            if cannot_apply(chain, case.model)
            else through(case, expected, chain, passes)
            for chain, passes in chains().items()
        ]
    finally:
        logging.disable(logging.NOTSET)
