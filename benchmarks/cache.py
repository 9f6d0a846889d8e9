"""Stage cache benchmark: recompiling unchanged recipes, cold cache against warm.

    nice python benchmarks/cache.py recipes/quickstart.yaml recipes/bert-int8.yaml --rounds 3

For every recipe: the median wall time of a compile into an empty cache (cold), of the same
compile again (warm: the whole compile is a hit), and of a compile whose check settings
changed (latency runs) but whose passes and data did not (passes warm), each in this process
(imports excluded), with the ratios to cold. Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import trtopt


def _timed(recipe: Path, out: Path, cache: Path, overrides: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    result = trtopt.compile(recipe, output_dir=out, overrides=overrides, cache_dir=cache)
    return time.perf_counter() - start, result.report


def measure(recipe: Path, rounds: int) -> dict[str, float]:
    cold, warm, passes_warm = [], [], []
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="trtopt-bench-") as scratch:
            cache, out = Path(scratch) / "cache", Path(scratch) / "out"
            seconds, report = _timed(recipe, out, cache, [])
            assert report["cache"]["compile"] == "miss"
            cold.append(seconds)
            seconds, report = _timed(recipe, out, cache, [])
            assert report["cache"]["compile"] == "hit"
            warm.append(seconds)
            seconds, report = _timed(recipe, out, cache, [f"check.latency_runs={round_ + 1}"])
            passes_warm.append(seconds)
            # Every pass for most models; for one over 1 GiB, those that read data.
            cached = f"{report['cache']['passes_from_cache']}/{len(report['passes'])}"
    return {
        "cold": statistics.median(cold),
        "warm": statistics.median(warm),
        "passes_warm": statistics.median(passes_warm),
        "cached": cached,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"trtopt {trtopt.__version__}, Python {platform.python_version()}, {platform.machine()}")
    print()
    print(
        "| recipe | cold s | warm s | warm / cold | check changed: passes from cache | s | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for recipe in args.recipes:
        t = measure(recipe, args.rounds)
        print(
            f"| {recipe.stem} | {t['cold']:.2f} | {t['warm']:.3f} | {t['warm'] / t['cold']:.3f} "
            f"| {t['cached']} | {t['passes_warm']:.2f} | {t['passes_warm'] / t['cold']:.2f} |"
        )


if __name__ == "__main__":
    main()
