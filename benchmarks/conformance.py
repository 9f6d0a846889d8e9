"""Conformance benchmark: trtopt, onnxslim and onnxsim on ONNX's own backend node tests.

    pip install -e '.[bench]'                       # onnxslim 0.1.98, onnxsim 0.4.36
    nice python benchmarks/conformance.py [results.json] --jobs 2 --timeout 120

Every case of ``onnx.backend.test.case.node.collect_testcases()`` is first run as it is on
ONNX Runtime CPU with the case's own inputs, twice, in two sessions: a case ONNX Runtime does
not run, or whose two runs disagree (random ops), is skipped. Then each tool optimizes the
model, and its result is run on the same inputs and compared with the original's outputs:
floats within ``allclose(rtol=1e-3, atol=1e-4, equal_nan=True)``, integers, booleans and strings
exactly, shapes and dtypes equal, sequences element by element. Each case ends

- **ok**: the result gives the original's outputs;
- **crash**: the tool raised (or its process died or hung past ``--timeout``);
- **broken**: the result does not load or run on ONNX Runtime, or computes other outputs.

Every (case, tool) runs in a process of its own, at most ``--jobs`` at a time, so a hang or a
crash in native code costs one case, not the run. Both sessions use ONNX Runtime with its own
graph optimizations off, one thread. Prints a markdown table and writes every case's result,
with the first line of each error, as JSON (default ``benchmarks/results/conformance.json``;
that folder ignores itself in git).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from multiprocessing import Pipe, get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import trtopt
from trtopt.passes import DEFAULT_PASSES

RTOL = 1e-3
ATOL = 1e-4
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "conformance.json"
ERROR_CHARS = 300  # the first line of an error, cut to this length

UPGRADE_CHAIN = [
    {"fuse": {"upgrade_opset": True}} if name == "fuse" else name for name in DEFAULT_PASSES
]


def _trtopt_unverified(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    return trtopt.optimize(model, verify=False)


def _trtopt_verified(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    return trtopt.optimize(
        model, on_rollback=lambda r: notes.append(f"{r.pass_name}: {_first_line(r.reason)}")
    )


def _trtopt_upgrade(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    return trtopt.optimize(model, UPGRADE_CHAIN, verify=False)


def _onnxslim(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def _onnxsim(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    import onnxsim

    result, check_ok = onnxsim.simplify(model)
    if not check_ok:
        notes.append("onnxsim's own check failed")
    return result


@dataclass(frozen=True)
class Tool:
    key: str
    label: str
    optimize: Callable[[onnx.ModelProto, list[str]], onnx.ModelProto]


TOOLS = [
    Tool("trtopt", "trtopt default chain, `verify=False`", _trtopt_unverified),
    Tool(
        "trtopt-verify", "trtopt default chain, `verify=True` (as users get it)", _trtopt_verified
    ),
    Tool("trtopt-opset20", "trtopt `fuse: {upgrade_opset: true}`, `verify=False`", _trtopt_upgrade),
    Tool("onnxslim", "onnxslim 0.1.98 `slim(model)`", _onnxslim),
    Tool("onnxsim", "onnxsim 0.4.36 `simplify(model)`", _onnxsim),
]


@dataclass
class Outcome:
    """One (case, tool): ``status`` is ok, crash or broken; ``error`` the first line of why."""

    status: str
    error: str = ""
    seconds: float = 0.0  # the tool's own optimize call
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- comparing


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[0] if lines else "")[:ERROR_CHARS]


def _error(error: BaseException) -> str:
    return _first_line(f"{type(error).__name__}: {error}")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _run(model: onnx.ModelProto, data_sets: list[dict[str, Any]]) -> list[list[Any]]:
    session = _session(model)
    names = [o.name for o in model.graph.output]
    accepted = {i.name for i in session.get_inputs()}
    results = []
    for feed in data_sets:
        results.append(session.run(names, {k: v for k, v in feed.items() if k in accepted}))
    return results


def _difference(expected: Any, got: Any) -> str | None:
    """Why ``got`` is not ``expected`` (None when it is)."""
    if isinstance(expected, list) or isinstance(got, list):
        if not (isinstance(expected, list) and isinstance(got, list)):
            return f"{type(got).__name__}, expected {type(expected).__name__}"
        if len(expected) != len(got):
            return f"sequence of {len(got)}, expected {len(expected)}"
        for index, (old, new) in enumerate(zip(expected, got)):
            why = _difference(old, new)
            if why:
                return f"[{index}] {why}"
        return None
    if expected is None or got is None:
        return None if expected is got else f"{got!r}, expected {expected!r}"
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.dtype != got.dtype:
        return f"dtype {got.dtype}, expected {expected.dtype}"
    if expected.shape != got.shape:
        return f"shape {list(got.shape)}, expected {list(expected.shape)}"
    if expected.dtype.kind in "fc":
        if np.allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True):
            return None
        diff = np.abs(got.astype(np.complex128) - expected.astype(np.complex128))
        return f"values differ (max abs {np.nanmax(diff, initial=0.0):.3g})"
    return None if np.array_equal(got, expected) else "values differ"


def _compare(names: list[str], expected: list[list[Any]], got: list[list[Any]]) -> str | None:
    for index, (old, new) in enumerate(zip(expected, got)):
        for name, a, b in zip(names, old, new):
            why = _difference(a, b)
            if why:
                return f"output '{name}' (data set {index}): {why}"
    return None


# ----------------------------------------------------------------------------- the cases


def _node_tests() -> Any:
    """tests/conformance.py, the harness this benchmark shares with the test suite (loaded by
    path: this file's own name is ``conformance`` too)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "conformance.py"
    spec = importlib.util.spec_from_file_location("trtopt_node_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


NODE_TESTS = _node_tests()


def _feeds(case: Any) -> list[dict[str, Any]]:
    names = [value.name for value in case.model.graph.input]
    return [
        {name: NODE_TESTS.value(value) for name, value in zip(names, inputs)}
        for inputs, _ in case.data_sets
    ]


def _reference(case: Any) -> tuple[str, Any]:
    """("ok", outputs) or ("skip", why)."""
    feeds = _feeds(case)
    try:
        first = _run(case.model, feeds)
    except Exception as error:
        return "skip", f"ORT does not run it: {_error(error)}"
    try:
        second = _run(case.model, feeds)
    except Exception as error:
        return "skip", f"ORT does not run it twice: {_error(error)}"
    names = [o.name for o in case.model.graph.output]
    if _compare(names, first, second):
        return "skip", "ORT's outputs differ from run to run (random ops)"
    return "ok", first


def _optimize_and_check(
    case: Any, tool: Tool, expected: list[list[Any]], send: Connection
) -> Outcome:
    notes: list[str] = []
    start = time.perf_counter()
    try:
        result = tool.optimize(onnx.ModelProto.FromString(case.model.SerializeToString()), notes)
    except BaseException as error:  # anything the tool raises is its crash
        seconds = time.perf_counter() - start
        return Outcome("crash", _error(error), seconds, notes)
    seconds = time.perf_counter() - start
    send.send(("optimized", seconds, notes))  # a death from here on is the result's, not the tool's
    if not isinstance(result, onnx.ModelProto):
        return Outcome("crash", f"returned {type(result).__name__}", seconds, notes)
    try:
        got = _run(result, _feeds(case))
    except Exception as error:
        return Outcome("broken", _error(error), seconds, notes)
    names = [o.name for o in case.model.graph.output]
    missing = [n for n in names if n not in {o.name for o in result.graph.output}]
    if missing:
        return Outcome("broken", f"outputs {missing} are gone", seconds, notes)
    why = _compare(names, expected, got)
    return Outcome("broken", why, seconds, notes) if why else Outcome("ok", "", seconds, notes)


# ----------------------------------------------------------------------------- the pool


def _quiet_child() -> None:
    """Optimizers print (onnxslim's tables, graphsurgeon's warnings): keep the parent's log."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    ort.set_default_logger_severity(4)


def _child(send: Connection, job: Callable[[Connection], Any]) -> None:
    _quiet_child()
    try:
        with np.errstate(all="ignore"):
            send.send(("done", job(send)))
    except BaseException:  # reported, then the process ends
        with contextlib.suppress(Exception):
            send.send(("error", traceback.format_exc()))
    finally:
        send.close()


class Pool:
    """At most ``jobs`` forked processes, one per task, each killed past ``timeout`` seconds.
    A task is a function of the pipe to the parent; its process inherits (fork) the cases and
    the reference outputs."""

    def __init__(self, jobs: int, timeout: float) -> None:
        self.jobs, self.timeout = jobs, timeout
        self.context = get_context("fork")

    def map(
        self, tasks: list[tuple[Any, Callable[[Connection], Any]]], progress: Callable[[int], None]
    ) -> dict[Any, tuple[str, Any, list[Any]]]:
        """{key: (how it ended: done | error | died | timeout, the last message, messages)}."""
        pending = list(reversed(tasks))
        running: dict[Connection, tuple[Any, Any, float, list[Any]]] = {}
        results: dict[Any, tuple[str, Any, list[Any]]] = {}
        while pending or running:
            while pending and len(running) < self.jobs:
                key, job = pending.pop()
                receive, send = Pipe(duplex=False)
                process = self.context.Process(target=_child, args=(send, job), daemon=True)
                process.start()
                send.close()
                running[receive] = (key, process, time.monotonic(), [])
            now = time.monotonic()
            deadline = min(started + self.timeout for _, _, started, _ in running.values())
            ready = wait(list(running), timeout=max(0.0, deadline - now))
            for receive in ready:
                key, process, started, messages = running[receive]
                try:
                    message = receive.recv()
                except EOFError:  # the process ended: its last message says how
                    process.join()
                    if messages and messages[-1][0] in ("done", "error"):
                        results[key] = (messages[-1][0], messages[-1][1], messages)
                    else:
                        why = f"process died (exit code {process.exitcode})"
                        results[key] = ("died", why, messages)
                    del running[receive]
                    receive.close()
                    progress(len(results))
                    continue
                messages.append(message)
            now = time.monotonic()
            for receive, (key, process, started, messages) in list(running.items()):
                if now - started > self.timeout and process.is_alive():
                    process.kill()
                    process.join()
                    results[key] = ("timeout", f"no result after {self.timeout:g} s", messages)
                    del running[receive]
                    receive.close()
                    progress(len(results))
        return results


def _progress(what: str, total: int) -> Callable[[int], None]:
    tty = sys.stderr.isatty()

    def report(done: int) -> None:
        if tty and (done % 10 == 0 or done == total):
            print(f"\r{what}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr)

    return report


# ----------------------------------------------------------------------------- the run


@dataclass
class ToolSummary:
    key: str
    label: str
    ok: int = 0
    crash: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    rolled_back: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    tool_seconds: float = 0.0  # the optimize calls alone, summed over the cases
    wall_seconds: float = 0.0  # the whole pool run for this tool (optimize, ORT, compare)
    unavailable: str = ""


def _outcome(ended: str, last: Any, messages: list[Any]) -> Outcome:
    optimized = [m for m in messages if m[0] == "optimized"]
    seconds, notes = (optimized[-1][1], optimized[-1][2]) if optimized else (0.0, [])
    if ended == "done":
        return last
    if ended == "error":  # the harness itself raised: count it against the tool, visibly
        return Outcome("crash", "harness: " + _first_line(last.splitlines()[-1]), seconds, notes)
    if ended == "timeout":
        return Outcome("broken" if optimized else "crash", last, seconds, notes)
    reason = str(last)
    if optimized:  # the tool returned; ONNX Runtime died on its result
        return Outcome("broken", f"ONNX Runtime {reason}", seconds, notes)
    return Outcome("crash", reason, seconds, notes)


def _available(tool: Tool) -> str:
    module = {"onnxslim": "onnxslim", "onnxsim": "onnxsim"}.get(tool.key)
    if module is None:
        return ""
    try:
        __import__(module)
    except Exception as error:
        return f"not installed here ({_error(error)})"
    return ""


def _versions() -> dict[str, str]:
    versions = {
        "trtopt": trtopt.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    for name in ("onnxslim", "onnxsim"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = "not installed"
    return versions


def _warm_up(tools: list[Tool], case: Any) -> None:
    """Run every tool once here, before forking: the lazy imports and first-call set-up
    (seconds for trtopt) are paid once, not in every case's process."""
    with (
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        contextlib.redirect_stderr(devnull),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        _run(case.model, _feeds(case))
        for tool in tools:
            with contextlib.suppress(Exception):
                tool.optimize(onnx.ModelProto.FromString(case.model.SerializeToString()), [])


def run(
    tools: list[Tool], jobs: int, timeout: float, limit: int | None, match: str | None
) -> dict[str, Any]:
    cases = NODE_TESTS.cases()
    total_cases = len(cases)
    _warm_up([t for t in tools if not _available(t)], cases[0])
    if match:
        cases = [c for c in cases if match in c.name]
    cases = cases[:limit] if limit else cases
    pool = Pool(jobs, timeout)
    by_name = {case.name: case for case in cases}

    start = time.monotonic()
    tasks = [(c.name, (lambda send, c=c: _reference(c))) for c in cases]
    references = pool.map(tasks, _progress("reference", len(tasks)))
    reference_seconds = time.monotonic() - start
    expected: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, (ended, last, _) in references.items():
        if ended == "done" and last[0] == "ok":
            expected[name] = last[1]
        elif ended == "done":
            skipped[name] = last[1]
        else:
            skipped[name] = f"ORT does not run it: {ended}: {_first_line(str(last))}"
    runnable = [c.name for c in cases if c.name in expected]

    summaries = []
    for tool in tools:
        summary = ToolSummary(tool.key, tool.label, unavailable=_available(tool))
        summaries.append(summary)
        if summary.unavailable:
            continue
        start = time.monotonic()
        tasks = [
            (
                name,
                (
                    lambda send, t=tool, n=name: _optimize_and_check(
                        by_name[n], t, expected[n], send
                    )
                ),
            )
            for name in runnable
        ]
        for name, (ended, last, messages) in pool.map(
            tasks, _progress(tool.key, len(tasks))
        ).items():
            outcome = _outcome(ended, last, messages)
            summary.tool_seconds += outcome.seconds
            if outcome.status == "ok":
                summary.ok += 1
            else:
                getattr(summary, outcome.status)[name] = outcome.error
            if tool.key == "trtopt-verify" and outcome.notes:
                summary.rolled_back[name] = outcome.notes
            elif outcome.notes:
                summary.notes[name] = outcome.notes
        summary.wall_seconds = time.monotonic() - start
        summary.crash = dict(sorted(summary.crash.items()))
        summary.broken = dict(sorted(summary.broken.items()))
        summary.rolled_back = dict(sorted(summary.rolled_back.items()))
    return {
        "date": date.today().isoformat(),
        "versions": _versions(),
        "tolerance": {"rtol": RTOL, "atol": ATOL},
        "timeout_s": timeout,
        "jobs": jobs,
        "cases": total_cases,
        "selected": len(cases),
        "runnable": len(runnable),
        "reference_seconds": reference_seconds,
        "skipped": dict(sorted(skipped.items())),
        "ir_versions": {name: by_name[name].model.ir_version for name in runnable},
        "tools": [asdict(s) for s in summaries],
    }


def table(report: dict[str, Any]) -> str:
    runnable = report["runnable"]
    lines = [
        f"{report['selected']} node test cases, {runnable} run by ONNX Runtime "
        f"({report['selected'] - runnable} skipped).",
        "",
        "| tool | ok | crash | broken | ok % | rolled back | tool s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tool in report["tools"]:
        if tool["unavailable"]:
            lines.append(f"| {tool['label']} | - | - | - | - | - | - | {tool['unavailable']} |")
            continue
        rolled = str(len(tool["rolled_back"])) if tool["key"] == "trtopt-verify" else "-"
        share = 100.0 * tool["ok"] / runnable if runnable else 0.0
        lines.append(
            f"| {tool['label']} | {tool['ok']} | {len(tool['crash'])} | {len(tool['broken'])} "
            f"| {share:.1f} | {rolled} | {tool['tool_seconds']:.0f} | {tool['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def _ignored_folder(path: Path) -> None:
    """Results stay out of git: a folder of its own that ignores everything in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.resolve() == DEFAULT_OUTPUT.parent.resolve():
        ignore = path.parent / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output",
        nargs="?",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"the JSON results (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time (default 2)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per case and tool (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--tools",
        default=",".join(t.key for t in TOOLS),
        help="comma-separated tools (default: all)",
    )
    parser.add_argument("--limit", type=int, help="the first N cases only")
    parser.add_argument("--match", help="only cases whose name contains this")
    args = parser.parse_args(argv)
    keys = args.tools.split(",")
    unknown = [k for k in keys if k not in {t.key for t in TOOLS}]
    if unknown:
        parser.error(f"unknown tools {unknown}; choose from {[t.key for t in TOOLS]}")
    report = run(
        [t for t in TOOLS if t.key in keys], args.jobs, args.timeout, args.limit, args.match
    )
    _ignored_folder(args.output)
    args.output.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(table(report))
    for tool in report["tools"]:
        for status in ("crash", "broken"):
            if tool[status]:
                print(f"\n{tool['key']} {status} ({len(tool[status])}):")
                for name, error in tool[status].items():
                    print(f"  {name}: {error}")
    print(f"\nresults: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
