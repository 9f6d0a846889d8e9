"""The automatic sensitivity search: suspects ranked by local error against group testing in
graph order (and, on request, every layer measured alone), side by side in one run.

    python benchmarks/search.py DETECTOR.onnx --size 640 --feeds 8 --min-cosine 0.999
    python benchmarks/search.py DETECTOR.onnx --dtype int8 --size 320 --feeds 4 --min-cosine 0.99

Runs the `precision` pass (FP16, range guard off, so the search alone decides), or the
`quantize` pass (INT8), with ``auto: {metric: cosine, min: ...}`` on the same model, judged
feeds and calibration data:

- *local ranking* (``auto.rank: true``, as shipped): one streaming pass measures every
  candidate alone in the lowered precision on its captured FP32 inputs (``local_error``), and
  the search judges the worst first;
- *group testing* (``auto.rank: false``, the search before the ranking): groups of
  consecutive layers in graph order, halved where they break the metric;
- *every layer alone* (``--every-layer``; the search before group testing: 50 minutes at
  640x640 with 8 feeds in FP16).

The feeds are rendered text pages (tests/text_pages.py): judged, calibration (for the ranking)
and held-out ones, all different. Prints judgements, the pass's seconds (the search's and the
local measure's), the metric reached, the layers kept and the pixels flipped at 0.3 on the
held-out pages for each, and the ratios of local ranking to group testing. The PaddleOCR
detector from the rapidocr-onnxruntime wheel (``ch_PP-OCRv4_det_infer.onnx``) is the case.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from trtopt import feeds as trtopt_feeds
from trtopt.calibration import DataSet, DataSource
from trtopt.passes import PassContext, sensitivity
from trtopt.passes.precision import Precision
from trtopt.passes.quantize import Quantize


def text_pages() -> Any:
    """tests/text_pages.py, the page renderer this benchmark shares with the tests."""
    path = Path(__file__).resolve().parents[1] / "tests" / "text_pages.py"
    spec = importlib.util.spec_from_file_location("trtopt_text_pages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outputs(model: onnx.ModelProto, feeds: list[dict]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0] for feed in feeds]


def run(
    model: onnx.ModelProto,
    dtype: str,
    judged: list[dict],
    calibration: DataSet,
    held_out: tuple[list[dict], list[np.ndarray]],
    auto: dict,
) -> dict:
    pages = text_pages()
    auto = {**auto, "samples": len(judged)}
    if dtype == "fp16":
        lowering: Any = Precision(
            Precision.Options.model_validate(
                {"dtype": "fp16", "guard": {"enabled": False}, "auto": auto}
            )
        )
    else:
        lowering = Quantize(Quantize.Options.model_validate({"dtype": dtype, "auto": auto}))
    with tempfile.TemporaryDirectory() as scratch:
        ctx = PassContext(
            scratch_dir=Path(scratch), feeds=judged, validation=judged, calibration=calibration
        )
        start = time.perf_counter()
        graph = lowering.run(gs.import_onnx(model), ctx)
        seconds = time.perf_counter() - start
    feeds, expected = held_out
    flips = pages.flipped(expected, outputs(gs.export_onnx(graph.graph), feeds))
    found = ctx.details["auto"]
    return {
        **found,
        "seconds": seconds,
        "search_seconds": found["seconds"],
        "flips": flips,
        "kept": [k["node"] for k in found["kept"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--dtype", choices=["fp16", "int8"], default="fp16")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--feeds", type=int, default=8, help="judged (and calibration) feeds")
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--min-cosine", type=float, default=0.999)
    parser.add_argument("--every-layer", action="store_true", help="also every layer alone")
    args = parser.parse_args()
    pages = text_pages()
    model = onnx.load(args.model)
    judged = [pages.text_page(args.size, seed) for seed in range(args.feeds)]
    held = [pages.text_page(args.size, 1000 + seed) for seed in range(args.held_out)]
    held_out = (held, outputs(model, held))
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.feeds):
            feed = pages.text_page(args.size, 500 + index)
            np.savez(Path(folder) / f"{index:03d}.npz", **feed)
        calibration = DataSet(
            DataSource(npz=str(Path(folder) / "*.npz")), trtopt_feeds.model_inputs(model)
        )
        auto = {"metric": "cosine", "min": args.min_cosine}
        common = (model, args.dtype, judged, calibration, held_out)
        results = {
            "local ranking": run(*common, {**auto, "rank": True}),
            "group testing": run(*common, {**auto, "rank": False}),
        }
        if args.every_layer:
            sensitivity.EACH_LIMIT = 1 << 30
            results["every layer alone"] = run(*common, auto)
    for label, found in results.items():
        print(
            f"{label}: {found['evaluations']} judgements, {found['seconds']:.1f} s "
            f"(search {found['search_seconds']:.1f} s), cosine {found['value']:.6f} "
            f"(all lowered {found['value_all_lowered']:.4f}), held-out flips at 0.3 "
            f"{found['flips']:.4%}, kept {found['kept']}"
        )
    ranked, grouped = results["local ranking"], results["group testing"]
    print(
        f"{args.dtype}, {args.size}x{args.size}, {args.feeds} judged feeds: local ranking / "
        "group testing: "
        f"{ranked['evaluations'] / grouped['evaluations']:.3f}x judgements, "
        f"{ranked['seconds'] / grouped['seconds']:.3f}x time"
    )


if __name__ == "__main__":
    main()
