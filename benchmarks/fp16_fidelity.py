"""FP16 judged on ONNX Runtime's CPU: plainly (three optimization levels) against the emulation
every judgement now uses (``trtopt.emulation``), and the automatic search judged either way.

    python benchmarks/fp16_fidelity.py MODELS_DIR --size 640 --feeds 4 [--node-by-node]
    python benchmarks/fp16_fidelity.py MODELS_DIR --search --size 640 --feeds 8 --min-cosine 0.999

MODELS_DIR holds PaddleOCR's PP-OCRv4 detector and recognizer and the text direction
classifier as the rapidocr-onnxruntime wheel ships them. Each model goes through the
``precision`` pass (FP16, as shipped: the constant guard, no calibration data) and its FP16
graph is scored against the FP32 model on rendered text (pages for the detector, lines for
the others): worst cosine, and for the detector the probability-map pixels flipped at 0.3.
``--node-by-node`` adds the reference: every node of the FP16 graph run alone on ONNX Runtime
in FP32 on the reference's values, its FP16 outputs rounded by numpy (slow: a session per node).

``--search``: the detector's ``precision.auto`` (range guard off, local ranking), judged as
before (the FP16 graph on ONNX Runtime at its default level; each layer's local error on a
plain session) and as now; the held-out pages of either result are scored with the emulation.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from search import text_pages  # the page renderer, as benchmarks/search.py loads it

from trtopt import emulation
from trtopt import feeds as trtopt_feeds
from trtopt.calibration import DataSet, DataSource
from trtopt.passes import PassContext, local_error, sensitivity
from trtopt.passes.precision import Precision

MODELS = {
    "detector": ("ch_PP-OCRv4_det_infer.onnx", None),
    "recognizer": ("ch_PP-OCRv4_rec_infer.onnx", (48, 320)),
    "classifier": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (48, 192)),
}
LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL")


PAGES = text_pages()


def text_line(height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """A rendered line of words, normalized as PaddleOCR's recognizer and classifier take it."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 250, 3)))
    ink = tuple(int(v) for v in rng.integers(0, 80, 3))
    words = " ".join(rng.choice(PAGES.WORDS, 3))
    ImageDraw.Draw(image).text((4, 6), words, fill=ink, font=ImageFont.load_default(size=30))
    pixels = (np.asarray(image, np.float32) / 255 - 0.5) / 0.5
    return {"x": pixels.transpose(2, 0, 1)[None].astype(np.float32)}


def fixed(path: Path, shape: list[int]) -> onnx.ModelProto:
    model = onnx.load(str(path))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.ClearField("dim_param")
        dim.dim_value = value
    return model


def lowered(model: onnx.ModelProto, options: dict, ctx: PassContext) -> onnx.ModelProto:
    result = Precision(Precision.Options.model_validate(options)).run(gs.import_onnx(model), ctx)
    return gs.export_onnx(result.graph)


def plain(model: onnx.ModelProto, level: str = "ORT_ENABLE_ALL") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])


def outputs(session: ort.InferenceSession, feeds: list[dict]) -> list[np.ndarray]:
    return [session.run(None, feed)[0] for feed in feeds]


def cosine(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    worst = 1.0
    for r, c in zip(reference, candidate):
        r, c = r.ravel().astype(np.float64), c.ravel().astype(np.float64)
        worst = min(worst, float(r @ c / (np.linalg.norm(r) * np.linalg.norm(c) + 1e-300)))
    return worst


def node_by_node(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    """The first output of ``model`` (FP16), each node run alone in FP32 on ONNX Runtime and
    its FP16 outputs rounded by numpy: no Cast for ONNX Runtime to drop."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.output, *inferred.value_info)}
    values = {i.name: _fp32(numpy_helper.to_array(i)) for i in model.graph.initializer}
    values.update(feed)
    for original in model.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.FLOAT
            if attribute.type == onnx.AttributeProto.TENSOR:
                array = _fp32(numpy_helper.to_array(attribute.t))
                attribute.t.CopyFrom(numpy_helper.from_array(array, attribute.t.name))
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            continue
        inputs = list(dict.fromkeys(name for name in node.input if name))
        made = [
            onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(values[name].dtype), None
            )
            for name in inputs
        ]
        results = [name for name in node.output if name]
        typed = [
            onnx.helper.make_tensor_value_info(name, _fp32_type(types.get(name)), None)
            for name in results
        ]
        graph = onnx.helper.make_graph([node], "node", made, typed)
        single = onnx.helper.make_model(graph, opset_imports=model.opset_import)
        single.ir_version = model.ir_version
        got = plain(single, "ORT_DISABLE_ALL").run(None, {n: values[n] for n in inputs})
        for name, array in zip(results, got):
            if types.get(name) == TensorProto.FLOAT16:
                with np.errstate(over="ignore"):
                    array = array.astype(np.float16).astype(np.float32)
            values[name] = array
    return values[model.graph.output[0].name]


def _fp32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype == np.float16 else array


def _fp32_type(elem: int | None) -> int:
    return TensorProto.FLOAT if elem in (None, 0, TensorProto.FLOAT16) else elem


def timed(session: ort.InferenceSession, feeds: list[dict]) -> tuple[list[np.ndarray], float]:
    """Outputs on ``feeds`` and the seconds the runs took (the session already made)."""
    start = time.perf_counter()
    return outputs(session, feeds), time.perf_counter() - start


def score(models_dir: Path, size: int, count: int, reference: bool) -> None:
    for label, (file, shape) in MODELS.items():
        if shape is None:
            model = fixed(models_dir / file, [1, 3, size, size])
            feeds = [PAGES.text_page(size, 100 + seed) for seed in range(count)]
        else:
            model = fixed(models_dir / file, [1, 3, *shape])
            feeds = [text_line(*shape, seed) for seed in range(count)]
        with tempfile.TemporaryDirectory() as scratch:
            ctx = PassContext(scratch_dir=Path(scratch))
            fp16 = lowered(model, {"dtype": "fp16"}, ctx)
        kept = len(ctx.details["kept_fp32"])
        expected = outputs(plain(model), feeds)
        rows = {f"plain {level}": timed(plain(fp16, level), feeds) for level in LEVELS}
        rows["emulated (as now)"] = timed(emulation.session(fp16), feeds)
        if reference:
            start = time.perf_counter()
            truth = [node_by_node(fp16, feed) for feed in feeds]
            rows["node by node"] = (truth, time.perf_counter() - start)
        print(f"{label} {list(feeds[0]['x'].shape)}, {count} feeds, {kept} nodes kept FP32:")
        for name, (got, seconds) in rows.items():
            flips = f", flipped {PAGES.flipped(expected, got):.4%}" if shape is None else ""
            against = f", vs node by node {1 - cosine(truth, got):.2e}" if reference else ""
            error = 1 - cosine(expected, got)
            worst = max(float(np.max(np.abs(e - g))) for e, g in zip(expected, got))
            print(f"  {name:22s} 1-cos {error:.3e}, max_abs {worst:.3g}{flips}{against}, ", end="")
            print(f"{seconds:.2f} s")


@contextlib.contextmanager
def judged_as_before() -> Iterator[None]:
    """The judgements as they were: the FP16 graph on ONNX Runtime at its default level."""

    def before(model: sensitivity.Candidate) -> ort.InferenceSession:
        proto, weights = (model, {}) if isinstance(model, onnx.ModelProto) else model
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if weights:
            values = [ort.OrtValue.ortvalue_from_numpy(array) for array in weights.values()]
            options.add_external_initializers(list(weights), values)
        return ort.InferenceSession(proto.SerializeToString(), options, ["CPUExecutionProvider"])

    def alone(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])

    saved = sensitivity.session, local_error.emulation
    sensitivity.session = before
    local_error.emulation = SimpleNamespace(session=alone)  # type: ignore[assignment]
    try:
        yield
    finally:
        sensitivity.session, local_error.emulation = saved


def search(models_dir: Path, size: int, count: int, min_cosine: float) -> None:
    model = fixed(models_dir / MODELS["detector"][0], [1, 3, size, size])
    judged = [PAGES.text_page(size, seed) for seed in range(count)]
    held = [PAGES.text_page(size, 1000 + seed) for seed in range(4)]
    expected = outputs(plain(model), held)
    auto = {"metric": "cosine", "min": min_cosine, "samples": count, "rank": True}
    options = {"dtype": "fp16", "guard": {"enabled": False}, "auto": auto}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            np.savez(Path(folder) / f"{index:03d}.npz", **PAGES.text_page(size, 500 + index))
        inputs = trtopt_feeds.model_inputs(model)
        calibration = DataSet(DataSource(npz=str(Path(folder) / "*.npz")), inputs)
        for label, judging in (("before", judged_as_before()), ("now", contextlib.nullcontext())):
            ctx = PassContext(Path(folder), validation=judged, calibration=calibration)
            start = time.perf_counter()
            with judging:
                fp16 = lowered(model, options, ctx)
            seconds = time.perf_counter() - start
            found = ctx.details["auto"]
            got = outputs(emulation.session(fp16), held)
            print(
                f"{label}: {found['evaluations']} judgements, {seconds:.1f} s (search "
                f"{found['seconds']:.1f} s), judged cosine {found['value']:.6f}, kept "
                f"{[k['node'] for k in found['kept']]}; held out, emulated: cosine "
                f"{cosine(expected, got):.6f}, flipped {PAGES.flipped(expected, got):.4%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, help="folder of the PaddleOCR models")
    parser.add_argument("--size", type=int, default=640, help="detector input side")
    parser.add_argument("--feeds", type=int, default=4)
    parser.add_argument("--node-by-node", action="store_true", help="also the reference")
    parser.add_argument("--search", action="store_true", help="the search, before and now")
    parser.add_argument("--min-cosine", type=float, default=0.999)
    args = parser.parse_args()
    if args.search:
        search(args.models, args.size, args.feeds, args.min_cosine)
    else:
        score(args.models, args.size, args.feeds, args.node_by_node)


if __name__ == "__main__":
    main()
