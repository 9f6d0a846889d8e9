"""Fusion benchmark: trtopt's default chain against onnxslim and onnxsim on real exported models.

    pip install -e '.[bench]'
    python benchmarks/export_models.py            # (torch environment) -> benchmarks/models/
    nice python benchmarks/fusion.py benchmarks/models --threads 2 --runs 15 \
        --extra det.onnx rec.onnx:x=1,3,48,320

For every ``*.onnx`` in the folder (and every ``--extra`` model) it prints one table row: node
counts (original, onnxslim, onnxsim, trtopt), the time ``trtopt.optimize_file`` takes over the
time onnxslim takes on the same file (with ``verify`` on, the default, and off), ONNX Runtime CPU
latency of trtopt's output over onnxslim's at ORT_ENABLE_BASIC and ORT_ENABLE_ALL, and the
largest absolute output difference of each optimized model from the original (``SHAPE`` when an
output's shape changed). Every ratio is the median of per-round ratios of interleaved runs (the
order alternating every round), which cancels the load other work puts on a shared machine.
Symbolic dims are fed as batch 1 (``--batch``) and sequence 128 (``--sequence``; for an image
model with dynamic height and width, both are 128), unless ``--extra`` gives an input's shape.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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
    optimize_ratio: dict[str, float] = field(default_factory=dict)
    rolled_back: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Model:
    """A model to benchmark, with input shapes that override the symbolic-dim defaults."""

    path: Path
    shapes: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Model:
        """``MODEL.onnx`` or ``MODEL.onnx:INPUT=D,D,D[;INPUT=...]``."""
        path, _, shapes = text.partition(":")
        parsed = {}
        for item in filter(None, shapes.split(";")):
            name, _, dims = item.partition("=")
            parsed[name] = [int(d) for d in dims.split(",")]
        return cls(Path(path), parsed)


def feeds_for(
    model: onnx.ModelProto, batch: int, sequence: int, shapes: dict[str, list[int]] | None = None
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    initializers = {t.name for t in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = []
        for i, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            else:
                dims.append(batch if i == 0 else sequence)
        dims = (shapes or {}).get(value.name, dims)
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


def quietly(fn: Callable[..., object], *args: object) -> object:
    """Call fn without its warnings and prints (onnxslim prints a summary table on save)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn(*args)


def optimize_all(
    source: Path, scratch: Path, row: Row, passes: list, args: argparse.Namespace
) -> dict[str, Path]:
    """Optimize ``source`` with every tool, file to file; time trtopt against onnxslim.

    onnxslim (``onnxslim.slim(in, out)``, as its CLI) and ``trtopt.optimize_file`` with
    ``verify`` on and off run ``args.opt_repeats`` rounds, interleaved, the order alternating
    every round; each ratio is the median of the per-round ratios, ``row.seconds`` the median
    times. The first round's outputs are the ones compared. onnxsim runs once, untimed
    against the others."""
    import onnxslim

    paths = {"original": source}
    model = onnx.load(str(source), load_external_data=False)
    row.nodes["original"] = len(model.graph.node)
    del model

    def slim(out: Path) -> None:
        onnxslim.slim(str(source), str(out))

    def ours(out: Path, verify: bool) -> None:
        def record(rollback: trtopt.Rollback) -> None:
            entry = f"{rollback.pass_name}: {rollback.reason[:160]}"
            if entry not in row.rolled_back:
                row.rolled_back.append(entry)

        trtopt.optimize_file(source, out, passes, verify=verify, on_rollback=record)

    timed = {
        "onnxslim": slim,
        "trtopt": lambda out: ours(out, True),
        "trtopt-noverify": lambda out: ours(out, False),
    }
    if not args.time_noverify:
        del timed["trtopt-noverify"]
    times: dict[str, list[float]] = {name: [] for name in timed}
    names = list(timed)
    for r in range(max(1, args.opt_repeats)):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in row.errors:
                continue
            out = scratch / (f"{name}.onnx" if r == 0 else f"{name}-{r}.onnx")
            start = time.perf_counter()
            try:
                quietly(timed[name], out)
            except Exception as error:
                row.errors[name] = f"{type(error).__name__}: {str(error)[:200]}"
                continue
            times[name].append(time.perf_counter() - start)
            if r == 0:
                paths[name] = out
            else:
                out.unlink(missing_ok=True)
    for name, values in times.items():
        if values and len(values) == len(times["onnxslim"]):
            row.seconds[name] = round(statistics.median(values), 2)
            if name != "onnxslim":
                pairs = [t / s for t, s in zip(values, times["onnxslim"], strict=True)]
                row.optimize_ratio[name] = round(statistics.median(pairs), 2)

    if not args.skip_onnxsim:

        def sim() -> None:
            import onnxsim

            simplified, ok = onnxsim.simplify(onnx.load(str(source)))
            if not ok:
                raise RuntimeError("onnxsim's own check failed")
            onnx.save(simplified, str(scratch / "onnxsim.onnx"))

        start = time.perf_counter()
        try:
            quietly(sim)
            row.seconds["onnxsim"] = round(time.perf_counter() - start, 2)
            paths["onnxsim"] = scratch / "onnxsim.onnx"
        except Exception as error:
            row.errors["onnxsim"] = f"{type(error).__name__}: {str(error)[:200]}"

    for name in ("onnxslim", "onnxsim", "trtopt", "trtopt-noverify"):
        if name in paths:
            nodes = len(onnx.load(str(paths[name]), load_external_data=False).graph.node)
            row.nodes[name] = nodes
        elif name in row.errors:
            row.nodes[name] = None
    return paths


def bench(model: Model, args: argparse.Namespace, passes: list) -> Row:
    source = model.path
    row = Row(model=source.stem)
    with tempfile.TemporaryDirectory(prefix="trtopt-bench-") as scratch_name:
        paths = optimize_all(source, Path(scratch_name), row, passes, args)
        feeds = feeds_for(
            onnx.load(str(source), load_external_data=False),
            args.batch,
            args.sequence,
            model.shapes,
        )
        reference = session(source, "disabled", args.threads).run(None, feeds)
        for name, path in paths.items():
            if name not in ("original", "trtopt-noverify"):
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


def fmt_ratio(row: Row, name: str) -> str:
    if name not in row.optimize_ratio:
        return "-"
    return f"{row.optimize_ratio[name]:.2f} ({row.seconds[name]:.1f} s)"


def table(rows: list[Row]) -> str:
    head = (
        "| model | nodes original | onnxslim | onnxsim | trtopt "
        "| onnxslim optimize s | trtopt/onnxslim optimize time | same, verify off "
        "| trtopt/onnxslim BASIC | trtopt/onnxslim ALL "
        "| max abs diff onnxslim | max abs diff onnxsim | max abs diff trtopt |"
    )
    lines = [head, "|---|" + "---:|" * 12]
    for row in rows:
        n = row.nodes
        cells = [
            row.model,
            *(str(n[k]) if n.get(k) is not None else ("fail" if k in n else "-") for k in
              ("original", "onnxslim", "onnxsim", "trtopt")),
            f"{row.seconds['onnxslim']:.1f}" if "onnxslim" in row.seconds else "-",
            fmt_ratio(row, "trtopt"),
            fmt_ratio(row, "trtopt-noverify"),
            *(
                f"{row.ratio[level]:.3f} ({row.latency_ms[level]['trtopt']:.1f} ms)"
                if level in row.ratio else "-"
                for level in ("basic", "all")
            ),
            fmt_diff(row.max_abs_diff.get("onnxslim")),
            fmt_diff(row.max_abs_diff.get("onnxsim")),
            fmt_diff(row.max_abs_diff.get("trtopt")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("trtopt", "onnx", "onnxruntime", "onnxslim", "onnxsim"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


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
    parser.add_argument(
        "--extra",
        nargs="+",
        default=[],
        metavar="MODEL.onnx[:INPUT=D,D,..]",
        help="more models to run (after the folder's), optionally with an input's shape "
        "(';' between inputs), e.g. rec.onnx:x=1,3,48,320",
    )
    parser.add_argument(
        "--opt-repeats",
        type=int,
        default=3,
        help="interleaved rounds of optimize timing (onnxslim, trtopt verify on/off)",
    )
    parser.add_argument(
        "--no-time-noverify",
        dest="time_noverify",
        action="store_false",
        help="do not time trtopt with verify off",
    )
    args = parser.parse_args()
    passes = json.loads(args.passes) if args.passes else list(DEFAULT_PASSES)
    models = [Model(p) for p in sorted(args.folder.glob("*.onnx"))] if args.folder.is_dir() else []
    models += [Model.parse(text) for text in args.extra]
    if args.only:
        models = [m for m in models if m.path.stem in args.only]
    if not models:
        print(f"no .onnx models in {args.folder}", file=sys.stderr)
        return 2
    print(
        f"# {date.today()} {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {load()}; {versions()}; "
        f"{args.threads} thread(s), batch {args.batch}, sequence {args.sequence}, "
        f"{args.runs} runs, {args.opt_repeats} optimize rounds; trtopt chain: {passes}",
        flush=True,
    )
    rows = []
    for model in models:
        start = time.perf_counter()
        row = bench(model, args, passes)
        rows.append(row)
        took = time.perf_counter() - start
        print(
            f"{row.model}: nodes {row.nodes} optimize s {row.seconds} "
            f"ratio {row.optimize_ratio} latency {row.ratio} diff {row.max_abs_diff} "
            f"({took:.0f} s, {load()})",
            flush=True,
        )
        for entry in row.rolled_back:
            print(f"  rolled back: {entry}", flush=True)
        for name, error in row.errors.items():
            print(f"  {name}: {error}", flush=True)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(f"# finished, {load()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
