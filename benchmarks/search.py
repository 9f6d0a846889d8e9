"""The automatic sensitivity search, measuring every layer alone against group testing.

    python benchmarks/search.py DETECTOR.onnx --size 160 --feeds 2 --min-cosine 0.9

Runs the `precision` pass (FP16, range guard off, so the search alone decides) with
``auto: {metric: cosine, min: ...}`` twice on the same model and feeds: once measuring every
candidate layer alone (``EACH_LIMIT`` above the candidate count: the search as it was), once
as shipped (group testing above ``EACH_LIMIT`` candidates). Prints judgements, seconds, the
metric reached and the layers kept for each, and the time ratio. The PaddleOCR detector from
the rapidocr-onnxruntime wheel (``ch_PP-OCRv4_det_infer.onnx``) is the case that took 50
minutes at 640x640 with 8 feeds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtopt.passes import PassContext, sensitivity
from trtopt.passes.precision import Precision


def run(model: onnx.ModelProto, feeds: list, limit: int, min_cosine: float) -> dict:
    sensitivity.EACH_LIMIT = limit
    options = {
        "dtype": "fp16",
        "guard": {"enabled": False},
        "auto": {"metric": "cosine", "min": min_cosine, "samples": len(feeds)},
    }
    with tempfile.TemporaryDirectory() as scratch:
        ctx = PassContext(scratch_dir=Path(scratch), feeds=feeds, validation=feeds)
        start = time.perf_counter()
        Precision(Precision.Options.model_validate(options)).run(gs.import_onnx(model), ctx)
        seconds = time.perf_counter() - start
    auto = ctx.details["auto"]
    return {"seconds": seconds, **auto, "kept": [k["node"] for k in auto["kept"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--feeds", type=int, default=2)
    parser.add_argument("--min-cosine", type=float, default=0.9)
    args = parser.parse_args()
    model = onnx.load(args.model)
    name = model.graph.input[0].name
    rng = np.random.default_rng(0)
    shape = (1, 3, args.size, args.size)
    feeds = [{name: rng.random(shape, dtype=np.float32)} for _ in range(args.feeds)]
    shipped = sensitivity.EACH_LIMIT
    results = {
        "every layer alone": run(model, feeds, 1 << 30, args.min_cosine),
        "group testing": run(model, feeds, shipped, args.min_cosine),
    }
    for label, found in results.items():
        print(
            f"{label}: {found['evaluations']} judgements, {found['seconds']:.1f} s, "
            f"cosine {found['value']:.6f} (all lowered {found['value_all_lowered']:.4f}), "
            f"kept {found['kept']}"
        )
    alone, grouped = results["every layer alone"], results["group testing"]
    print(f"group testing / every layer alone: {grouped['seconds'] / alone['seconds']:.3f}x time")


if __name__ == "__main__":
    main()
