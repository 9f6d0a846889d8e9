"""Latency of Polygraphy runners on one feed: median, p90, p99 and throughput over a stated
number of runs."""

from __future__ import annotations

import time

import numpy as np
from polygraphy.backend.base import BaseRunner

from . import progress

WARMUP_RUNS = 3


def interleaved(
    runners: dict[str, BaseRunner], feed: dict[str, np.ndarray], runs: int
) -> dict[str, dict[str, float]]:
    """Milliseconds per ``infer`` for activated runners, measured in alternating rounds so that
    machine noise hits each alike. Throughput counts the feed's leading (batch) dim per run."""
    first = next(iter(feed.values()), None)
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        for _ in range(WARMUP_RUNS):
            runner.infer(feed)
    with progress.bar(f"latency ({', '.join(runners)})", runs, "round") as shown:
        for _ in range(runs):
            for name, runner in runners.items():
                start = time.perf_counter()
                runner.infer(feed)
                samples[name].append((time.perf_counter() - start) * 1e3)
            shown.update(1)
    return {
        name: {
            "runs": runs,
            "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)),
            "p99_ms": float(np.percentile(times, 99)),
            "throughput_per_s": batch * 1e3 / float(np.median(times)),
            # Every run, for the latency distribution in report.html.
            "samples_ms": [round(t, 4) for t in times],
        }
        for name, times in samples.items()
    }


def one_at_a_time(
    runners: dict[str, BaseRunner], feed: dict[str, np.ndarray], runs: int
) -> dict[str, dict[str, float]]:
    """As ``interleaved``, but each runner is activated, measured and released in turn: for
    models too large to hold two sessions at once (machine noise then is not shared alike)."""
    result = {}
    for name, runner in runners.items():
        with runner:
            result.update(interleaved({name: runner}, feed, runs))
    return result
