"""Start-up benchmark: how long the command line takes before and around real work.

    python benchmarks/startup.py --rounds 7

Times, as commands in fresh processes (what a release pipeline pays per call):

- ``python -c pass``: the interpreter alone, the floor every command stands on;
- ``trtopt --help`` and ``trtopt validate recipes/quickstart.yaml``;
- a cold ``trtopt compile recipes/quickstart.yaml`` (empty cache) and a warm one (the same
  recipe again: every artifact from the cache).

Rounds interleave the commands, so the load other work puts on a shared machine falls on all
of them alike; the table gives each command's median wall time and the warm compile as a
fraction of the cold one (the median of per-round ratios).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"


def timed(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one command, which must succeed."""
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trtopt = [sys.executable, "-m", "trtopt"]
    times: dict[str, list[float]] = {}
    warm_over_cold = []
    with tempfile.TemporaryDirectory(prefix="trtopt-startup-") as scratch:
        for round_ in range(args.rounds):
            cache = Path(scratch) / f"cache-{round_}"
            env = {**os.environ, "TRTOPT_CACHE_DIR": str(cache), "TRTOPT_PROGRESS_SECONDS": "1e9"}
            out = Path(scratch) / f"out-{round_}"
            compile_ = [*trtopt, "compile", str(RECIPE), "-o", str(out)]
            row = {
                "python -c pass": timed([sys.executable, "-c", "pass"], env),
                "trtopt --help": timed([*trtopt, "--help"], env),
                "trtopt validate": timed([*trtopt, "validate", str(RECIPE)], env),
                "compile (cold)": timed(compile_, env),
                "compile (warm)": timed(compile_, env),
            }
            for name, seconds in row.items():
                times.setdefault(name, []).append(seconds)
            warm_over_cold.append(row["compile (warm)"] / row["compile (cold)"])
            shutil.rmtree(cache, ignore_errors=True)
    print(f"{'command':<18} {'median s':>9}")
    for name, values in times.items():
        print(f"{name:<18} {statistics.median(values):>9.3f}")
    print(f"warm / cold compile: {statistics.median(warm_over_cold):.3f}x")


if __name__ == "__main__":
    main()
