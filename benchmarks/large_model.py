"""Large models: trtopt against onnxslim on a generated transformer of over 2 GiB.

    pip install -e '.[bench]'
    nice python benchmarks/large_model.py --rounds 2

Generates (once) ``benchmarks/models/transformer-2gib.onnx`` and its ``.data`` file with
``tests/transformer_model.py`` (11 pre-norm layers, hidden 2048: 2.07 GiB of FP32 weights), then
runs each tool in a process of its own, one after another, and reads that process's wall time
and peak RSS (``wait4``): ``onnxslim`` and ``trtopt optimize`` (the default chain) on the same
model, then ``trtopt optimize`` with the FP16 precision pass, and ``trtopt compile`` of an FP16
recipe end to end (reference outputs, passes, ONNX Runtime build, accuracy check). The outputs
of onnxslim and of trtopt's default chain are then compared with the original's on ONNX Runtime.
Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from transformer_model import fp16_recipe, make_transformer, size_on_disk  # noqa: E402


def run(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one command in a process of its own."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss * 1024


def max_abs_diff(original: Path, optimized: Path, hidden: int) -> float:
    feed = {"x": np.random.default_rng(0).standard_normal((1, 32, hidden), dtype=np.float32)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outputs = []
    for path in (original, optimized):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, feed)[0])
        del session
    return float(np.max(np.abs(outputs[0] - outputs[1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--models", type=Path, default=ROOT / "benchmarks" / "models")
    args = parser.parse_args()
    model = args.models / f"transformer-{args.layers}x{args.hidden}.onnx"
    if not model.exists():
        args.models.mkdir(parents=True, exist_ok=True)
        make_transformer(model, args.layers, args.hidden, heads=16)
    size = size_on_disk(model)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="trtopt-large-", dir=args.models) as scratch:
        out = Path(scratch)
        recipe = out / "recipe.yaml"
        recipe.write_text(fp16_recipe(model, args.hidden, samples=2, sequence=32, latency_runs=5))
        fp16 = "cleanup,fold-constants,fuse,infer-shapes,cleanup,precision"
        trtopt = [str(bin_dir / "trtopt")]
        commands = {
            "onnxslim": [str(bin_dir / "onnxslim"), str(model), str(out / "slim.onnx")],
            "trtopt optimize": [*trtopt, "optimize", str(model), str(out / "trtopt.onnx")],
            "trtopt optimize + fp16": [
                *trtopt, "optimize", str(model), str(out / "fp16.onnx"), "--passes", fp16
            ],
            "trtopt compile fp16, no cache": [
                *trtopt, "compile", str(recipe), "-o", str(out / "build"), "--no-cache"
            ],
            "trtopt compile fp16, cold cache": [
                *trtopt, "compile", str(recipe), "-o", str(out / "build"),
                "--cache-dir", str(out / "cache"),
            ],
        }  # fmt: skip
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                if "cold cache" in name:
                    subprocess.run(["rm", "-rf", str(out / "cache")], check=True)
                results[name].append(run(command))
        nodes = {
            name: len(onnx.load(str(file), load_external_data=False).graph.node)
            for name, file in (
                ("original", model),
                ("onnxslim", out / "slim.onnx"),
                ("trtopt", out / "trtopt.onnx"),
            )
        }
        diffs = {
            "onnxslim": max_abs_diff(model, out / "slim.onnx", args.hidden),
            "trtopt optimize": max_abs_diff(model, out / "trtopt.onnx", args.hidden),
        }

    print(
        f"trtopt {version('trtopt')}, onnxslim {version('onnxslim')}, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"model {model.name}: "
        f"{size / 2**30:.2f} GiB on disk, {nodes['original']} nodes "
        f"(onnxslim -> {nodes['onnxslim']}, trtopt -> {nodes['trtopt']}); "
        f"median of {args.rounds} round(s)"
    )
    print()
    slim_s = statistics.median(s for s, _ in results["onnxslim"])
    slim_rss = statistics.median(r for _, r in results["onnxslim"])
    print("| run | wall s | / onnxslim | peak RSS GiB | / onnxslim | / model size | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, samples in results.items():
        seconds = statistics.median(s for s, _ in samples)
        rss = statistics.median(r for _, r in samples)
        diff = diffs.get(name)
        print(
            f"| {name} | {seconds:.1f} | {seconds / slim_s:.2f} | {rss / 2**30:.2f} | "
            f"{rss / slim_rss:.2f} | {rss / size:.2f} | "
            f"{'' if diff is None else f'{diff:.1e}'} |"
        )


if __name__ == "__main__":
    main()
