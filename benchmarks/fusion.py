"""Fusion benchmark: trtopt's default chain against onnxslim and onnxsim on real exported models.

    pip install -e '.[bench]'
    python benchmarks/export_models.py            # (torch environment) -> benchmarks/models/
    nice python benchmarks/fusion.py benchmarks/models --threads 2 --runs 15

For every ``*.onnx`` in the folder it prints one table row: node counts (original, onnxslim,
onnxsim, trtopt), ONNX Runtime CPU latency of trtopt's output over onnxslim's at
ORT_ENABLE_BASIC and ORT_ENABLE_ALL (the median of per-round ratios of interleaved runs, same
thread count, both sessions alive at once), and the largest absolute output
difference of each optimized model from the original (``SHAPE`` when an output's shape
changed). Symbolic dims are fed as batch 1 (``--batch``) and sequence 128 (``--sequence``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import trtopt
from trtopt.passes import DEFAULT_PASSES

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
LEVELS["all"] = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
VOCABULARY = 1000  # token ids are drawn below every benchmark model's vocabulary size


@dataclass
class Row:
    model: str
    nodes: dict[str, int | None] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    ratio: dict[str, float] = field(default_factory=dict)
    max_abs_diff: dict[str, float | str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def feeds_for(model: onnx.ModelProto, batch: int, sequence: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    initializers = {t.name for t in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = []
        for i, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            else:
                dims.append(batch if i == 0 else sequence)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if "mask" in value.name:
            out[value.name] = np.ones(dims, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            out[value.name] = rng.integers(0, VOCABULARY, dims).astype(dtype)
        else:
            out[value.name] = rng.standard_normal(dims).astype(dtype)
    return out


def session(path: Path, level: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS.get(level, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float | str:
    worst = 0.0
    for a, b in zip(reference, outputs, strict=True):
        if a.shape != b.shape:
            return f"SHAPE {list(a.shape)}->{list(b.shape)}"
        worst = max(worst, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
    return worst


def interleaved(
    runs: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds of each callable per round, alternating their order every round, so that
    each round's times were taken under the same machine load."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def optimize_all(
    source: Path, scratch: Path, row: Row, passes: list, skip_onnxsim: bool = False
) -> dict[str, Path]:
    paths = {"original": source}
    model = onnx.load(str(source))
    row.nodes["original"] = len(model.graph.node)

    def slim() -> onnx.ModelProto:
        import onnxslim

        return onnxslim.slim(onnx.load(str(source)))

    def sim() -> onnx.ModelProto:
        import onnxsim

        simplified, ok = onnxsim.simplify(onnx.load(str(source)))
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        return simplified

    def ours() -> onnx.ModelProto:
        return trtopt.optimize(onnx.load(str(source)), passes)

    makers = {"onnxslim": slim, "onnxsim": sim, "trtopt": ours}
    if skip_onnxsim:
        del makers["onnxsim"]
    for name, make in makers.items():
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimized = make()
        except Exception as error:
            row.errors[name] = f"{type(error).__name__}: {str(error)[:200]}"
            row.nodes[name] = None
            continue
        row.seconds[name] = round(time.perf_counter() - start, 1)
        row.nodes[name] = len(optimized.graph.node)
        path = scratch / f"{name}.onnx"
        onnx.save(optimized, str(path))
        paths[name] = path
    return paths


def bench(source: Path, args: argparse.Namespace, passes: list) -> Row:
    row = Row(model=source.stem)
    with tempfile.TemporaryDirectory(prefix="trtopt-bench-") as scratch_name:
        paths = optimize_all(source, Path(scratch_name), row, passes, args.skip_onnxsim)
        feeds = feeds_for(
            onnx.load(str(source), load_external_data=False), args.batch, args.sequence
        )
        reference = session(source, "disabled", args.threads).run(None, feeds)
        for name, path in paths.items():
            if name != "original":
                try:
                    outputs = session(path, "disabled", args.threads).run(None, feeds)
                    row.max_abs_diff[name] = max_abs_diff(reference, outputs)
                except Exception as error:
                    row.max_abs_diff[name] = "FAILS TO RUN"
                    row.errors[f"{name} run"] = f"{type(error).__name__}: {str(error)[:200]}"
        if "onnxslim" not in paths or "trtopt" not in paths or args.runs == 0:
            return row
        for level in ("basic", "all"):
            sessions = {n: session(paths[n], level, args.threads) for n in ("onnxslim", "trtopt")}
            runs = {n: (lambda s=s: s.run(None, feeds)) for n, s in sessions.items()}
            times = interleaved(runs, args.runs, args.warmup)
            row.latency_ms[level] = {n: round(statistics.median(v), 2) for n, v in times.items()}
            # The median of per-round ratios: robust to load that drifts between rounds.
            pairs = [t / s for t, s in zip(times["trtopt"], times["onnxslim"])]
            row.ratio[level] = round(statistics.median(pairs), 3)
    return row


def fmt_diff(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.1e}"


def table(rows: list[Row]) -> str:
    head = (
        "| model | nodes original | onnxslim | onnxsim | trtopt | trtopt/onnxslim BASIC "
        "| trtopt/onnxslim ALL | max abs diff onnxslim | max abs diff trtopt |"
    )
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        n = row.nodes
        cells = [
            row.model,
            *(str(n[k]) if n.get(k) is not None else ("fail" if k in n else "-") for k in
              ("original", "onnxslim", "onnxsim", "trtopt")),
            *(
                f"{row.ratio[level]:.3f} ({row.latency_ms[level]['trtopt']:.1f} ms)"
                if level in row.ratio else "-"
                for level in ("basic", "all")
            ),
            fmt_diff(row.max_abs_diff.get("onnxslim")),
            fmt_diff(row.max_abs_diff.get("trtopt")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path(__file__).parent / "models")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (all runs)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per session (0: none)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--only", nargs="*", help="model file stems to run (default: all)")
    parser.add_argument(
        "--passes",
        default=None,
        help="trtopt chain as JSON (default: the default chain, " + ",".join(DEFAULT_PASSES) + ")",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--skip-onnxsim", action="store_true", help="leave onnxsim out")
    args = parser.parse_args()
    passes = json.loads(args.passes) if args.passes else list(DEFAULT_PASSES)
    models = sorted(args.folder.glob("*.onnx"))
    if args.only:
        models = [m for m in models if m.stem in args.only]
    if not models:
        print(f"no .onnx models in {args.folder}", file=sys.stderr)
        return 2
    print(
        f"# {date.today()} {platform.node()} {platform.processor() or platform.machine()}, "
        f"onnxruntime {ort.__version__}, {args.threads} thread(s), batch {args.batch}, "
        f"sequence {args.sequence}, {args.runs} runs; trtopt chain: {passes}",
        flush=True,
    )
    rows = []
    for path in models:
        start = time.perf_counter()
        row = bench(path, args, passes)
        rows.append(row)
        took = time.perf_counter() - start
        print(f"{row.model}: {row.nodes} {row.ratio} {row.max_abs_diff} ({took:.0f} s)", flush=True)
        for name, error in row.errors.items():
            print(f"  {name}: {error}", flush=True)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
