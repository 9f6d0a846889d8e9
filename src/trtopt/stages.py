"""Every pass's output is proven before the next pass sees it: it saves as valid ONNX, ONNX
Runtime loads and runs it, and a pass that promises not to change what the model computes
(``Pass.exact``) gives the outputs of the stage before it. A pass that fails any of these, or
raises, is rolled back: the chain goes on from the graph before it, and the rollback is
recorded with its reason."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import graph_io
from .errors import EXIT_ACCURACY, PassError, TrtoptError
from .feeds import Feed
from .model import load_model
from .passes import Pass, PassContext
from .usercode import ExitAttempt, no_exit

log = logging.getLogger("trtopt")

EXACT_RTOL = 1e-3
"""How far an exact pass may move a float output, relative to its value (fusions reorder
float arithmetic: conv-bn folding, matmul-add); the absolute part is EXACT_ATOL times the
output's largest magnitude (at least 1)."""
EXACT_ATOL = 1e-4

Outputs = list[dict[str, np.ndarray]]


class RolledBack(TrtoptError):
    """Passes were rolled back where the caller asked for none to be (``strict``): exit 1."""

    exit_code = EXIT_ACCURACY

    def __init__(self, rollbacks: Sequence[Rollback]) -> None:
        lines = "; ".join(f"pass '{r.pass_name}' rolled back: {r.reason}" for r in rollbacks)
        super().__init__(f"{lines} (strict)")
        self.rollbacks = list(rollbacks)


@dataclass
class Rollback:
    """A pass whose result was thrown away, and why."""

    pass_name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"pass": self.pass_name, "reason": self.reason}


def differs(before: Outputs, after: Outputs) -> str | None:
    """Why ``after`` is not the same computation as ``before`` (None when it is): names,
    dtypes and shapes exactly, integers and booleans exactly, floats within EXACT_RTOL."""
    for index, (old, new) in enumerate(zip(before, after)):
        for name, expected in old.items():
            if name not in new:
                return f"output '{name}' is missing"
            got = new[name]
            if not isinstance(expected, np.ndarray) or not isinstance(got, np.ndarray):
                continue  # sequences and optionals: ONNX Runtime ran it, which is the check
            if got.dtype != expected.dtype or got.shape != expected.shape:
                return (
                    f"output '{name}' is {got.dtype}{list(got.shape)}, "
                    f"was {expected.dtype}{list(expected.shape)} (sample {index})"
                )
            if expected.dtype.kind in "fc":
                scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
                close = np.isclose(
                    got, expected, rtol=EXACT_RTOL, atol=EXACT_ATOL * scale, equal_nan=True
                )
                if not close.all():
                    at = np.unravel_index(np.argmin(close), close.shape)
                    error = abs(float(got[at]) - float(expected[at]))
                    allowed = EXACT_ATOL * scale + EXACT_RTOL * abs(float(expected[at]))
                    return (
                        f"output '{name}' changed by {error:.3g} at {list(map(int, at))} where "
                        f"{allowed:.3g} is allowed (sample {index})"
                    )
            elif not np.array_equal(got, expected):
                return f"output '{name}' changed (sample {index})"
    return None


class StageJudge:
    """Proves stages one after another against the last stage it accepted.

    ``feeds`` are what the stages run on (empty: only validity is proven, e.g. when the
    original model cannot run on ONNX Runtime here)."""

    def __init__(
        self, like: onnx.ModelProto, scratch: Path, feeds: Sequence[Feed], version: str = ""
    ) -> None:
        self.like, self.scratch, self.feeds, self.version = like, scratch, list(feeds), version
        self.outputs: Outputs | None = None  # the last accepted stage's, on ``feeds``
        self.count = 0

    def start(self, outputs: Outputs | None) -> None:
        """The original model's outputs on ``feeds`` (None: not runnable here)."""
        self.outputs = outputs

    def judge(self, graph: gs.Graph, exact: bool) -> tuple[str | None, Path, Outputs | None]:
        """Why ``graph`` is not an acceptable stage (None when it is), where it was saved,
        and its outputs on the feeds. An accepted stage becomes the next one's baseline."""
        self.count += 1
        path = self.scratch / f"stage-{self.count}" / "model.onnx"
        try:
            graph_io.save_graph(graph, path, self.like, self.version)
            load_model(path, external_data=False)  # the ONNX checker, on the file
            outputs = run(path, self.feeds) if self.outputs is not None else None
        except TrtoptError as error:
            return error.message, path, None
        except Exception as error:  # what ONNX Runtime or the exporter says of a broken graph
            return _first_line(error), path, None
        if exact and outputs is not None and self.outputs is not None:
            reason = differs(self.outputs, outputs)
            if reason is not None:
                return reason, path, outputs
        if outputs is not None:
            self.outputs = outputs
        return None, path, outputs


def run(path: Path, feeds: Sequence[Feed]) -> Outputs:
    """The model at ``path`` on ONNX Runtime CPU, feed by feed: outputs by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a broken stage's error is raised and reported once
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    results = []
    for feed in feeds:
        values = session.run(names, {k: v for k, v in feed.items() if k in wanted})
        results.append(dict(zip(names, values)))
    return results


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())[:500]


def run_pass(pass_: Pass, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Run one pass. A user error it raises (bad data, a bad option) goes on as it is; any
    other failure becomes a PassError that names the pass, so the caller can roll it back.
    A pass (a plugin's) that calls ``sys.exit`` or ``os._exit`` cannot end trtopt: that is a
    PassError too, which no caller rolls back."""
    try:
        with no_exit():
            result = pass_.run(graph, ctx)
    except TrtoptError:
        raise
    except (Exception, SystemExit, ExitAttempt) as error:
        source = getattr(type(pass_), "__module__", "?")
        detail = f"{type(error).__name__}: {_first_line(error)}"
        if isinstance(error, SystemExit):
            detail = f"called sys.exit({error.code!r}) (in {source})"
        elif isinstance(error, ExitAttempt):
            detail = f"called os._exit({error.code!r}) (in {source})"
        raise PassError(f"pass '{pass_.name}' failed: {detail}") from error
    if not isinstance(result, gs.Graph):
        raise PassError(f"pass '{pass_.name}' returned {type(result).__name__}, not a gs.Graph")
    return result


def failure(pass_: Pass, error: PassError) -> str:
    """What went wrong in a pass, without the "pass 'x' failed:" a rollback line repeats."""
    return error.message.removeprefix(f"pass '{pass_.name}' failed: ")


def run_chain(
    graph: gs.Graph,
    passes: Sequence[Pass],
    ctx: PassContext,
    judge: StageJudge,
    restore: Callable[[], gs.Graph],
) -> tuple[gs.Graph, list[Rollback]]:
    """Run ``passes`` in order, judging each stage; a failing pass is rolled back by
    ``restore`` (the graph before it) until a later stage is accepted."""
    rollbacks = []
    for pass_ in passes:
        signature = graph_signature(graph)
        try:
            graph = run_pass(pass_, graph, ctx)
        except PassError as error:
            if isinstance(error.__cause__, (SystemExit, ExitAttempt)):
                raise
            rollbacks.append(Rollback(pass_.name, failure(pass_, error)))
            graph = restore()
            continue
        if graph_signature(graph) == signature:
            continue
        reason, path, _ = judge.judge(graph, pass_.exact)
        if reason is not None:
            rollbacks.append(Rollback(pass_.name, reason))
            graph = restore()
            continue
        restore = _loader(path)
    return graph, rollbacks


def _loader(path: Path) -> Callable[[], gs.Graph]:
    def load() -> gs.Graph:
        return graph_io.import_graph(load_model(path, external_data=False), path.parent)

    return load


def graph_signature(graph: gs.Graph) -> str:
    """A structural fingerprint (nodes, wiring, attributes, constants' shape and leading bytes
    or on-disk place) that tells whether a pass changed the graph without reading every weight."""
    digest = hashlib.sha256()
    for node in graph.nodes:
        digest.update(repr((node.op, node.name, sorted(node.attrs.items(), key=str))).encode())
        digest.update(
            repr(([t.name for t in node.inputs], [t.name for t in node.outputs])).encode()
        )
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            digest.update(repr((tensor.name, tensor.shape, str(tensor.dtype))).encode())
            digest.update(repr(graph_io.signature(tensor)).encode())
        else:
            digest.update(repr((tensor.name, tensor.shape, str(tensor.dtype))).encode())
    io = [t.name for t in (*graph.inputs, *graph.outputs)]
    digest.update(repr(io).encode())
    return digest.hexdigest()
