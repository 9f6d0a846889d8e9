"""Every pass's output is proven before the next pass sees it: it saves as valid ONNX, ONNX
Runtime loads and runs it, and a pass that promises not to change what the model computes
(``Pass.exact``) gives the outputs of the stage before it. A pass that fails any of these, or
raises, is rolled back: the chain goes on from the graph before it, and the rollback is
recorded with its reason."""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import _get_all_tensors, uses_external_data
from pydantic import ValidationError

from . import accuracy, graph_io
from ._version import __version__
from .cache import Entry, StageCache, snapshot, written
from .cache_keys import CacheKeys, WatchedContext
from .digests import digest
from .errors import EXIT_ACCURACY, ModelError, PassError, RecipeError, TrtoptError, did_you_mean
from .feeds import Feed
from .model import EXTERNAL_DATA_THRESHOLD, check_file, load_model, op_histogram, save_model
from .passes import Pass, PassContext, PassResult, get_pass
from .recipe import PassSpec, Recipe
from .usercode import ExitAttempt, no_exit

log = logging.getLogger("trtopt")

EXACT_RTOL = 1e-3
"""How far an exact pass may move a float output, relative to its value (fusions reorder
float arithmetic: conv-bn folding, matmul-add); the absolute part is EXACT_ATOL times the
output's largest magnitude (at least 1)."""
EXACT_ATOL = 1e-4

Outputs = list[dict[str, np.ndarray]]
PassItem = str | dict[str, Any] | PassSpec
"""A pass as a caller names it: its name, ``{name: options}``, or a recipe's PassSpec."""


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
        self._baseline: Callable[[], Outputs | None] | None = None
        self.say: Callable[[str], None] = log.debug
        """Hears each step of a judgement as it starts (a progress line's text)."""

    def start(self, outputs: Outputs | None) -> None:
        """The original model's outputs on ``feeds`` (None: not runnable here)."""
        self.outputs, self._baseline = outputs, None

    def start_later(self, baseline: Callable[[], Outputs | None]) -> None:
        """As :meth:`start`, with the original's outputs still to come (``optimize`` runs the
        original beside the passes): the first judgement, or :meth:`settle`, calls
        ``baseline`` for them, once."""
        self.outputs, self._baseline = None, baseline

    def settle(self) -> None:
        """Have the original's outputs from :meth:`start_later`'s ``baseline`` (if not yet)."""
        if self._baseline is not None:
            baseline, self._baseline = self._baseline, None
            self.outputs = baseline()

    def judge(self, graph: gs.Graph, exact: bool) -> tuple[str | None, Path, Outputs | None]:
        """Why ``graph`` is not an acceptable stage (None when it is), where it was saved,
        and its outputs on the feeds. An accepted stage becomes the next one's baseline."""
        self.count += 1
        path = self.scratch / f"stage-{self.count}" / "model.onnx"
        try:
            self.say("save and check the result")
            save_checked(graph, path, self.like, self.version)
            self.settle()
            outputs = None
            if self.outputs is not None:
                self.say("run the result on ONNX Runtime")
                outputs = run(path, self.feeds)
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


def save_checked(
    graph: gs.Graph, path: Path, like: onnx.ModelProto | None = None, version: str = ""
) -> None:
    """Save ``graph`` to ``path`` and run the ONNX checker on what was written (a ModelError
    says what is wrong). A one-file model is checked from the bytes just written, which are
    the file's content: reading the file back and parsing it again took four times as long
    (0.11 s for ResNet-50's 94 MB, against 0.025 s). A model whose weights go to an external
    data file (over 1 GiB) is checked from its files."""
    if graph_io.weight_bytes(graph) > EXTERNAL_DATA_THRESHOLD:
        graph_io.save_graph(graph, path, like, version)
        check_file(path)
        return
    model = graph_io.export_model(graph, like, version)
    if any(map(uses_external_data, _get_all_tensors(model))):  # as onnx.save_model would
        save_model(model, path, external_data=False)
        check_file(path)
        return
    data = model.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    check_bytes(data, path)


def check_bytes(data: bytes, path: Path) -> None:
    """:func:`model.check_file` on a one-file model's bytes (``path``: the file they were
    written to, named in the error), with the same ModelError."""
    try:
        onnx.checker.check_model(data)
    except (
        onnx.checker.ValidationError,
        onnx.onnx_cpp2py_export.checker.ValidationError,
        UnicodeDecodeError,
    ) as error:
        text = " ".join(str(error).split())
        text = text if len(text) <= 600 else text[:600] + "..."
        raise ModelError(f"invalid ONNX model: {text}", str(path)) from None


def run(path: Path | bytes, feeds: Sequence[Feed], threads: int | None = None) -> Outputs:
    """The model at ``path`` (or its bytes) on ONNX Runtime CPU, feed by feed: outputs by
    name. ``threads``: ONNX Runtime's intra-op threads (None: its default, a thread per
    physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a broken stage's error is raised and reported once
    # The graph as written, not as ONNX Runtime would rewrite it: what a stage computes is the
    # question, and a session without its graph optimizations starts 2-3x sooner.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Threads that wait for work by sleeping, not spinning: a session run once gains nothing
    # from spinning, and spinning threads take the cores the passes (optimize runs the
    # original beside them) or other processes need. On two loaded cores ResNet-50's session
    # and run took 0.60 s spinning, 0.40 s not.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Weights as the model stores them, not packed for MLAS's kernels when the session starts:
    # packing pays off over many runs, not one. The session and its run took 0.58x as long on
    # BERT-base (0.63 s -> 0.38 s), 0.80x on ViT-B, 0.78x on T5-small, 1.04x on ResNet-50.
    options.add_session_config_entry("session.disable_prepacking", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
    source = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
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


def run_pass(pass_: Pass, graph: gs.Graph, ctx: PassContext, detect: bool = True) -> PassResult:
    """Run one pass; what it returned, as a PassResult whose ``modified`` is known (compared
    by :func:`graph_signature` where the pass did not say; ``detect`` False leaves it None
    then, for a caller that compares once over several passes or needs no answer). A user
    error it raises (bad data, a bad option) goes on as it is; any other failure becomes a
    PassError that names the pass, so the caller can roll it back. A pass (a plugin's) that
    calls ``sys.exit`` or ``os._exit`` cannot end trtopt: that is a PassError too, which no
    caller rolls back."""
    alive: list[object] = []
    before = graph_signature(graph, alive) if detect else None
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
    if isinstance(result, gs.Graph):
        result = PassResult(result)
    if not isinstance(result, PassResult) or not isinstance(result.graph, gs.Graph):
        what = type(result.graph if isinstance(result, PassResult) else result).__name__
        raise PassError(f"pass '{pass_.name}' returned {what}, not a gs.Graph or PassResult")
    if result.modified is None and detect:
        result.modified = graph_signature(result.graph, alive) != before
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
    say: Callable[[str], None] = log.debug,
) -> tuple[gs.Graph, list[Rollback], Path | None]:
    """Run ``passes`` in order, judging each stage; a failing pass is rolled back by
    ``restore`` (the graph before it) until a later stage is accepted. ``say`` hears what
    runs. Returns the final graph, the rollbacks, and the file the final graph was proven as
    (None when no pass changed the graph)."""
    rollbacks, proven = [], None
    for pass_ in passes:
        say(f"pass {pass_.name}")
        try:
            result = run_pass(pass_, graph, ctx)
        except PassError as error:
            if isinstance(error.__cause__, (SystemExit, ExitAttempt)):
                raise
            rollbacks.append(Rollback(pass_.name, failure(pass_, error)))
            graph = restore()
            continue
        graph = result.graph
        if not result.modified:
            continue
        reason, path, _ = judge.judge(graph, pass_.exact)
        if reason is not None:
            rollbacks.append(Rollback(pass_.name, reason))
            graph = restore()
            continue
        restore, proven = _loader(path), path
    return graph, rollbacks, proven


def run_proven(
    graph: gs.Graph,
    passes: Sequence[Pass],
    ctx: PassContext,
    judge: StageJudge,
    restore: Callable[[], gs.Graph],
    say: Callable[[str], None] = log.debug,
) -> tuple[gs.Graph, list[Rollback], Path | None]:
    """What :func:`run_chain` gives, for a fraction of its cost when nothing fails: a chain
    of exact passes is run through and only its final graph is proven (one save and run, not
    one per stage). When a pass fails or the final graph is refused, the chain runs again from
    ``restore()`` stage by stage, which finds and rolls back the passes at fault (passes are
    deterministic: the second run meets what the first did). Whether the chain changed the
    graph is what its passes say, else the structure before the first and after the last
    compared (:func:`graph_signature`: two fingerprints, not two a pass)."""
    if all(pass_.exact for pass_ in passes):
        alive: list[object] = []
        before, changed, unknown = graph_signature(graph, alive), False, False
        try:
            for pass_ in passes:
                say(f"pass {pass_.name}")
                result = run_pass(pass_, graph, ctx, detect=False)
                graph, changed = result.graph, changed or bool(result.modified)
                unknown = unknown or result.modified is None
        except PassError as error:
            if isinstance(error.__cause__, (SystemExit, ExitAttempt)):
                raise
        else:
            if not changed and unknown:
                changed = graph_signature(graph, alive) != before
            if not changed:
                return graph, [], None
            say("prove the optimized graph")
            reason, path, _ = judge.judge(graph, exact=True)
            if reason is None:
                return graph, [], path
            log.info("the optimized graph is refused: proving its passes one by one")
        graph = restore()
    return run_chain(graph, passes, ctx, judge, restore, say)


def _loader(path: Path) -> Callable[[], gs.Graph]:
    def load() -> gs.Graph:
        return graph_io.import_graph(load_model(path, external_data=False), path.parent)

    return load


def graph_signature(graph: gs.Graph, alive: list[object] | None = None) -> str:
    """A structural fingerprint (nodes, wiring, attributes, constants' shape and leading bytes
    or on-disk place) that tells whether a pass changed the graph without reading every weight.

    ``alive``: a list the caller holds until it has compared this fingerprint with a later
    one (given the same list). A constant still unread from the model (graphsurgeon's
    LazyValues) is then fingerprinted by the identity of its values, which ``alive`` keeps
    from being freed and their id taken, instead of being read: reading made every weight a
    numpy copy the export then converted back (T5-small's 62 MB embedding, which no default
    pass reads: 0.15 s). A pass that replaces the values replaces that object; one that
    reads them turns it into an array, which tells as a change (and costs only a proof)."""
    digest = hashlib.sha256()
    for node in graph.nodes:
        digest.update(repr((node.op, node.name, sorted(node.attrs.items(), key=str))).encode())
        digest.update(
            repr(([t.name for t in node.inputs], [t.name for t in node.outputs])).encode()
        )
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            digest.update(repr((tensor.name, tensor.shape, str(tensor.dtype))).encode())
            values = tensor._values
            if alive is not None and type(values) is gs.ir.tensor.LazyValues:
                alive.append(values)
                digest.update(f"unread {id(values)}".encode())
            else:
                digest.update(repr(graph_io.signature(tensor)).encode())
        else:
            digest.update(repr((tensor.name, tensor.shape, str(tensor.dtype))).encode())
    io = [t.name for t in (*graph.inputs, *graph.outputs)]
    digest.update(repr(io).encode())
    return digest.hexdigest()


def instantiate(items: Sequence[PassItem]) -> list[Pass]:
    """Pass objects from names, `{name: options}` dicts or PassSpecs, options validated."""
    passes = []
    for item in items:
        if isinstance(item, str):
            spec = PassSpec(name=item)
        elif isinstance(item, dict) and len(item) == 1:
            ((name, options),) = item.items()
            spec = PassSpec(name=name, options=options or {})
        elif isinstance(item, PassSpec):
            spec = item
        else:
            raise RecipeError(f"a pass is a name or {{name: options}}, not {item!r}")
        cls = get_pass(spec.name)
        try:
            passes.append(cls(cls.Options.model_validate(spec.options)))
        except ValidationError as error:
            detail = error.errors()[0]
            key = ".".join(str(k) for k in detail["loc"])
            hint = did_you_mean(key, cls.Options.model_fields)
            raise RecipeError(f"pass '{spec.name}': {key}: {detail['msg']}{hint}") from None
    return passes


@dataclass
class PassRecord:
    """One pass of a compile, as the report tells it (Olive's ``FootprintNode``)."""

    name: str
    options: dict[str, Any]
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool
    rolled_back: str | None = None
    """Why the pass was rolled back (None: it was kept)."""
    op_delta: dict[str, int] = field(default_factory=dict)
    verification: dict[str, Any] | None = None
    """The stage's accuracy against the reference (``check.verify_passes``)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the pass reports about itself (its ``ctx.details``)."""
    kept: list[dict[str, Any]] = field(default_factory=list)
    """Nodes the pass kept in higher precision and why (PassResult.kept)."""
    coverage: dict[str, Any] | None = None
    """What the pass quantized (PassResult.coverage)."""
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PassRecord:
        """A record as ``to_json`` wrote it; keys an older cache entry lacks take defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def kept_in_higher_precision(records: Sequence[PassRecord]) -> list[dict[str, Any]]:
    """Every node the passes kept in higher precision and why, by ONNX node name, ready to
    pin into the recipe (`keep_fp32.nodes`, `exclude.nodes`)."""
    return [{"pass": r.name, **item} for r in records if not r.rolled_back for item in r.kept]


def quantized_coverage(records: Sequence[PassRecord]) -> dict[str, Any] | None:
    """The last quantizing pass's coverage (layers and MACs), None without one."""
    found = None
    for record in records:
        if record.coverage is not None and not record.rolled_back:
            found = {"pass": record.name, **record.coverage}
    return found


def run_passes(
    recipe: Recipe,
    pipeline: list[Pass],
    source: onnx.ModelProto,
    base_dir: Path,
    ctx: WatchedContext,
    keys: CacheKeys | None,
    staging: Path,
    judge: StageJudge | None,
    verify: Callable[[Outputs], accuracy.AccuracyResult] | None,
    say: Callable[[str], None],
) -> tuple[gs.Graph, list[PassRecord], str | None]:
    """Run the passes (or take their outputs from the cache): the final graph, a record per
    pass for the report, and the first pass whose outputs diverged (when ``verify`` is set).

    ``judge`` proves each changed stage (stages.py); a pass it refuses, or one that raises,
    is rolled back: its record says why, and nothing of it is cached or kept."""
    graph: gs.Graph | None = graph_io.import_graph(source, base_dir)

    def restore() -> gs.Graph:
        return graph_io.import_graph(source, base_dir)

    histogram = op_histogram(source)
    records, first_diverging = [], None
    pending: Entry | None = None  # a cached stage not loaded yet (maybe never)
    for index, pass_ in enumerate(pipeline):
        say(f"pass {pass_.name}")
        entry = None
        if keys is not None:
            base_key, key = keys.pass_key(pass_)
            entry = keys.cache.get(key)
        if entry is not None:
            record = _cached_stage(entry, ctx, staging)
            histogram, graph, pending = entry.meta["histogram"], None, entry
            keys.advance(key)
            restore = partial(_load_stage, entry)
            if verify is not None or not pass_.exact:
                graph, pending = _load_stage(entry), None
                if judge is not None:  # the next exact pass is compared with this stage
                    judge.judge(graph, exact=False)
        else:
            if graph is None:
                graph, pending = _load_stage(pending), None
            artifacts_before, warnings_before = snapshot(staging), len(ctx.warnings)
            ctx.data_read, ctx.details = False, {}
            before_hist, start = histogram, time.perf_counter()
            rolled_back, result = None, PassResult(graph, modified=False)
            try:
                result = run_pass(pass_, graph, ctx)
            except PassError as error:
                if isinstance(error.__cause__, (SystemExit, ExitAttempt)):
                    raise PassError(error.message, recipe.place("passes", index)) from error
                rolled_back = failure(pass_, error)
            graph, changed = result.graph, bool(result.modified)
            proven = None  # the stage's file, once proven
            if changed and judge is not None:
                rolled_back, path, _ = judge.judge(graph, pass_.exact)
                if rolled_back is None:
                    restore = partial(_load_path, path)
                    # One file (no external data): the cache copies it as it is.
                    proven = path if len(list(path.parent.iterdir())) == 1 else None
            if rolled_back is not None:
                graph, changed = restore(), False
                for name in written(artifacts_before, staging):
                    (staging / name).unlink(missing_ok=True)
                del ctx.warnings[warnings_before:]
                ctx.details = {}
                ctx.warnings.append(f"pass '{pass_.name}' rolled back: {rolled_back}")
                say(f"pass {pass_.name} rolled back: {rolled_back}")
            seconds = time.perf_counter() - start
            histogram = dict(sorted(Counter(node.op for node in graph.nodes).items()))
            record = PassRecord(
                name=pass_.name,
                options=pass_.options.model_dump(mode="json"),
                seconds=round(seconds, 6),
                nodes_before=sum(before_hist.values()),
                nodes_after=len(graph.nodes),
                changed=changed,
                rolled_back=rolled_back,
                op_delta=_op_delta(before_hist, histogram),
                details=ctx.details,
                kept=[] if rolled_back else result.kept,
                coverage=None if rolled_back else result.coverage,
            )
            # A rolled-back pass leaves the graph as it was: nothing to cache, the key stays.
            if keys is not None and rolled_back is None:
                if ctx.data_read and key == base_key:
                    key = digest(base_key, "data", keys.data())
                    keys.cache.mark_reads_data(base_key)
                new_files = written(artifacts_before, staging)
                new_warnings = ctx.warnings[warnings_before:]
                # Writing a large model's stage costs more than recomputing it, unless its
                # pass read data (calibration, range guards): only those stages are kept.
                if ctx.data_read or not is_large(graph):
                    _store_stage(
                        keys.cache,
                        key,
                        graph,
                        source,
                        record,
                        histogram,
                        new_files,
                        new_warnings,
                        staging,
                        proven,
                    )
                keys.advance(key)
        if verify is not None and judge is not None and judge.outputs is not None:
            stage = verify(judge.outputs)
            record.verification = stage.to_json()
            if not stage.passed and first_diverging is None:
                first_diverging = pass_.name
        records.append(record)

    if graph is None:
        graph = _load_stage(pending)
    return graph, records, first_diverging


def _cached_stage(entry: Entry, ctx: PassContext, staging: Path) -> PassRecord:
    """A pass's record, artifacts and warnings from its cache entry."""
    entry.restore(entry.meta["artifacts"], staging)
    ctx.warnings.extend(entry.meta["warnings"])
    return PassRecord.from_json({**entry.meta["record"], "cached": True})


def _store_stage(
    store: StageCache,
    key: str,
    graph: gs.Graph,
    like: onnx.ModelProto,
    record: PassRecord,
    histogram: dict[str, int],
    artifacts: list[str],
    warnings: list[str],
    staging: Path,
    saved: Path | None,
) -> None:
    """Cache a pass's stage; ``saved``: the same graph already saved as one file (when its
    stage was proven), copied rather than exported again."""
    with store.writer(key, "pass") as entry:
        if saved is not None:
            shutil.copyfile(saved, entry.folder / "model.onnx")
        else:
            graph_io.save_graph(graph, entry.folder / "model.onnx", like, __version__)
        for name in artifacts:
            shutil.copyfile(staging / name, entry.folder / name)
        entry.meta = {
            "record": record.to_json(),
            "histogram": histogram,
            "artifacts": artifacts,
            "warnings": list(warnings),
        }


def _load_stage(entry: Entry | None) -> gs.Graph:
    assert entry is not None
    path = entry.file("model.onnx")
    return graph_io.import_graph(load_model(path, external_data=False), path.parent)


def _load_path(path: Path) -> gs.Graph:
    return graph_io.import_graph(load_model(path, external_data=False), path.parent)


def is_large(graph: gs.Graph) -> bool:
    """Weights past the size at which models are saved with external data (1 GiB)."""
    return graph_io.weight_bytes(graph) > EXTERNAL_DATA_THRESHOLD


def _op_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = Counter(after)
    delta.subtract(before)
    return {op: n for op, n in sorted(delta.items()) if n}
