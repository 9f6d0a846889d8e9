"""Many recipes at once: a local process pool, one result per recipe, the worst verdict."""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from .errors import EXIT_INTERNAL, EXIT_USER, TrtoptError
from .front import compile
from .recipe import Recipe, load_recipe


@dataclass
class BatchResult:
    """What one recipe of a batch ended in."""

    recipe: str
    exit_code: int
    verdict: str
    """pass, fail (accuracy), incomplete (backend unavailable), error (user or build)."""
    output_dir: str | None
    seconds: float
    message: str = ""
    cached: bool = False


@dataclass
class Job:
    """One recipe of a batch: where it is, where it goes, how it is compiled."""

    recipe: str
    output_dir: str | None
    overrides: list[str]
    cache_dir: str | None
    use_cache: bool
    force: bool = False
    """Replace a non-empty output folder that trtopt did not write (see pipeline.compile)."""


def worst_exit_code(results: Sequence[BatchResult]) -> int:
    """The batch's exit code: the worst of its recipes' (3 > 2 > 1 > 0)."""
    return max((r.exit_code for r in results), default=0)


def prepare(
    recipes: Sequence[str | Path], output_dir: str | Path | None, overrides: list[str]
) -> list[tuple[Recipe, str] | BatchResult]:
    """Each recipe loaded, with its output folder (``output_dir/<name>`` when given), or the
    result of one that fails before compiling: unloadable, or writing the same folder as an
    earlier one."""
    prepared: list[tuple[Recipe, str] | BatchResult] = []
    seen: dict[Path, str] = {}
    for path in recipes:
        try:
            recipe = load_recipe(path, overrides)
        except TrtoptError as error:
            prepared.append(BatchResult(str(path), error.exit_code, "error", None, 0.0, str(error)))
            continue
        out = Path(output_dir) / recipe.name if output_dir is not None else recipe.output_dir()
        out = out.resolve()
        if out in seen:
            message = f"writes the same output folder as {seen[out]} ({out})"
            prepared.append(BatchResult(str(path), EXIT_USER, "error", str(out), 0.0, message))
            continue
        seen[out] = str(path)
        prepared.append((recipe, str(out)))
    return prepared


def run(job: Job, recipe: Recipe | None = None) -> BatchResult:
    """Compile one recipe of a batch into a result; never raises for the recipe's own failure.
    ``recipe``: the recipe already loaded (``job.recipe`` then only names it)."""
    start = time.perf_counter()
    try:
        result = compile(
            recipe if recipe is not None else job.recipe,
            output_dir=job.output_dir,
            overrides=None if recipe is not None else job.overrides,
            cache_dir=job.cache_dir,
            use_cache=job.use_cache,
            force=job.force,
        )
    except TrtoptError as error:
        verdict = "incomplete" if type(error).__name__ == "BackendUnavailableError" else "error"
        seconds = time.perf_counter() - start
        return BatchResult(
            job.recipe, error.exit_code, verdict, job.output_dir, seconds, str(error)
        )
    except Exception as error:  # one recipe's bug must not take the batch down
        message = f"internal error: {type(error).__name__}: {error}"
        seconds = time.perf_counter() - start
        return BatchResult(job.recipe, EXIT_INTERNAL, "error", job.output_dir, seconds, message)
    cache = result.report.get("cache") or {}
    failures = result.report["accuracy"].get("failures") or []
    return BatchResult(
        job.recipe,
        result.exit_code,
        result.report["verdict"],
        str(result.output_dir),
        time.perf_counter() - start,
        failures[0] if failures and not result.passed else "",
        cache.get("compile") == "hit",
    )


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _worker_init() -> None:
    # The parent owns Ctrl-C and stops the pool with SIGTERM, which ends a worker's compile
    # through its normal cleanup (staging removed, previous output untouched).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)


def compile_many(
    recipes: Sequence[str | Path],
    jobs: int = 1,
    output_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Callable[[BatchResult], None] | None = None,
    force: bool = False,
) -> list[BatchResult]:
    """Compile several recipes, ``jobs`` at a time in separate processes; results in the
    order of ``recipes``. One recipe's failure (any exit code) never stops the others.

    ``output_dir`` puts each recipe's output in ``output_dir/<recipe name>``; otherwise each
    goes where its recipe says. ``progress`` is called as each recipe finishes. ``force``:
    as for :func:`trtopt.compile`.
    """
    overrides = list(overrides or [])
    results: dict[int, BatchResult] = {}
    pending: list[tuple[int, Job]] = []
    cache = str(cache_dir) if cache_dir is not None else None
    for index, (path, item) in enumerate(zip(recipes, prepare(recipes, output_dir, overrides))):
        if isinstance(item, BatchResult):
            results[index] = item
        else:
            pending.append((index, Job(str(path), item[1], overrides, cache, use_cache, force)))
    report = progress or (lambda result: None)
    for result in results.values():
        report(result)
    if jobs <= 1 or len(pending) <= 1:
        for index, job in pending:
            results[index] = run(job)
            report(results[index])
    else:
        _pool(pending, min(jobs, len(pending)), results, report)
    return [results[i] for i in range(len(recipes))]


def _pool(
    pending: list[tuple[int, Job]],
    workers: int,
    results: dict[int, BatchResult],
    report: Callable[[BatchResult], None],
) -> None:
    # spawn: a fresh interpreter per worker, never a fork of a process that may hold ONNX
    # Runtime's threads. concurrent.futures rather than multiprocessing.Pool: a worker that
    # dies (a crash, the OOM killer) breaks the pool with an error instead of hanging it.
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init)
    try:
        futures = {executor.submit(run, job): index for index, job in pending}
        for future in as_completed(futures):
            index = futures[future]
            try:
                results[index] = future.result()
            except BrokenProcessPool as error:
                job = pending[[i for i, _ in pending].index(index)][1]
                message = f"internal error: a worker process died ({error})"
                results[index] = BatchResult(
                    job.recipe, EXIT_INTERNAL, "error", job.output_dir, 0.0, message
                )
            report(results[index])
    except BaseException:
        # Interrupted: stop the running compiles through their own cleanup (SIGTERM), so
        # each leaves its previous output as it was. (terminate_workers() is Python 3.14+.)
        for process in list(getattr(executor, "_processes", {}).values()):
            process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def summary_table(results: Sequence[BatchResult]) -> str:
    """One plain-text table: recipe, verdict, exit code, seconds, output or message."""
    rows = [("recipe", "verdict", "exit", "seconds", "output / message")]
    for r in results:
        verdict = f"{r.verdict} (cached)" if r.cached else r.verdict
        detail = r.message.splitlines()[0] if r.message else (r.output_dir or "")
        rows.append((r.recipe, verdict, str(r.exit_code), f"{r.seconds:.1f}", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    worst = worst_exit_code(results)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    tally = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    lines.append(f"{len(results)} recipes: {tally}; exit code {worst}")
    return "\n".join(lines)


__all__ = ["BatchResult", "compile_many", "summary_table", "worst_exit_code"]
