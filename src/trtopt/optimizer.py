"""``trtopt optimize``: passes over a model with no recipe, each stage proven on ONNX Runtime
(and rolled back when it fails) before the next pass sees it."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from . import feeds, graph_io, progress
from ._version import __version__
from .calibration import DataSet, DataSource
from .model import load_model
from .passes import DEFAULT_PASSES, PassContext, load_plugin
from .quiet import quiet_polygraphy
from .stages import (
    Outputs,
    PassItem,
    Rollback,
    RolledBack,
    StageJudge,
    instantiate,
    is_large,
    run_pass,
    run_proven,
)
from .stages import run as run_stage
from .staging import scratch as scratch_folder

log = logging.getLogger("trtopt")


@contextmanager
def _optimized(
    model: str | Path | onnx.ModelProto,
    passes: Sequence[PassItem] | None,
    verify: bool,
    data: str | Path | None,
    strict: bool,
    on_rollback: Callable[[Rollback], None] | None,
    plugins: Sequence[str | Path],
) -> Iterator[tuple[gs.Graph, onnx.ModelProto, Path | None]]:
    """The optimized graph, the source model, and (while the block runs) the file the graph
    was proven as, if it was saved as one (None: not proven, or nothing changed)."""
    for plugin in plugins:
        load_plugin(Path(plugin))
    base_dir = None
    if isinstance(model, (str, Path)):
        source = load_model(model, external_data=False)
        base_dir = Path(model).parent
    else:
        source = model
    graph = graph_io.import_graph(source, base_dir)
    pipeline = instantiate(list(passes) if passes is not None else list(DEFAULT_PASSES))
    with (
        scratch_folder("optimize") as scratch,
        quiet_polygraphy(),
        progress.bar("optimize", None, "step") as shown,
    ):
        ctx = PassContext(scratch_dir=Path(scratch))

        def say(step: str) -> None:  # what runs now, on the bar (and in logs every few s)
            shown.set_description_str(f"optimize: {step}", refresh=False)
            shown.update(1)

        if verify and is_large(graph):
            # As in a compile: saving and running every stage of it costs more than the passes.
            log.info("stages of a model over 1 GiB are not proven one by one")
            verify = False
        if not verify:
            for pass_ in pipeline:
                say(f"pass {pass_.name}")
                graph = run_pass(pass_, graph, ctx, detect=False).graph
            yield graph, source, None
            return
        judge = StageJudge(source, Path(scratch), [], __version__)
        judge.say = say
        # The original runs on ONNX Runtime on a thread of its own while the passes run (its
        # session and run release the GIL): the first judgement waits for it.
        original = Path(model) if base_dir is not None else source.SerializeToString()
        reference = _Reference(source, original, data)
        judge.feeds = reference.feeds

        def baseline() -> Outputs | None:
            if not reference.done():
                say("wait for the original model's run on ONNX Runtime")
            outputs, unverified = reference.outputs()
            if unverified:
                judge.feeds = []
                log.warning(
                    "outputs not compared (%s): each pass's result is only checked to be "
                    "valid ONNX",
                    unverified,
                )
            return outputs

        judge.start_later(baseline)
        try:
            graph, rollbacks, proven = run_proven(
                graph, pipeline, ctx, judge, lambda: graph_io.import_graph(source, base_dir), say
            )
            judge.settle()  # where no stage was judged too, for its warning
        finally:
            # Also after an error or Ctrl-C: a process that ends while ONNX Runtime runs on
            # another thread aborts ("terminate called without an active exception").
            reference.join()
        for rollback in rollbacks:
            (on_rollback or _log_rollback)(rollback)
        if strict and rollbacks:
            raise RolledBack(rollbacks)
        yield graph, source, proven


def _log_rollback(rollback: Rollback) -> None:
    log.warning("pass '%s' rolled back: %s", rollback.pass_name, rollback.reason)


class _Reference:
    """The original model's outputs on the feeds an optimize proves its stages on, computed on
    a thread beside the passes: ONNX Runtime releases the GIL while it creates the session
    and runs it, so on two cores the original's run costs the passes almost nothing (0.16 s
    of ResNet-50's proof). The feeds are made here, on the caller's thread (a bad ``data``
    file is the caller's error at once); ``original``: the model's file, or its bytes."""

    def __init__(
        self, source: onnx.ModelProto, original: Path | bytes, data: str | Path | None
    ) -> None:
        self.feeds, unverified = _optimize_feeds(source, data)
        self._result: tuple[Outputs | None, str | None] = (None, unverified)
        self._thread: threading.Thread | None = None
        if unverified is None:  # reads ``original`` only: no file of the scratch folder
            self._thread = threading.Thread(
                target=self._run, args=(original,), name="trtopt-reference"
            )
            self._thread.start()

    def _run(self, original: Path | bytes) -> None:
        try:
            self._result = (run_stage(original, self.feeds, _reference_threads()), None)
        except Exception as error:
            why = f"the original model does not run on ONNX Runtime here: {error}"
            self._result = (None, why)

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def outputs(self) -> tuple[Outputs | None, str | None]:
        """The original's outputs (None: not run), and why they cannot be compared."""
        self.join()
        return self._result


def _reference_threads() -> int:
    """ONNX Runtime's threads for the original's run beside the passes: half the CPUs this
    process may use (ONNX Runtime's own default is the physical cores, about half of them
    with hyperthreading), leaving the passes theirs; one on two CPUs. (On two loaded cores,
    ResNet-50's optimize took 1.57 s so, 2.00 s with ONNX Runtime's default threads, spinning,
    for both runs; onnxslim 1.02 s.)"""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity (macOS, Windows)
        available = os.cpu_count() or 2
    return max(1, available // 2)


def _optimize_feeds(
    source: onnx.ModelProto, data: str | Path | None
) -> tuple[list[feeds.Feed], str | None]:
    """The feeds an optimize proves its stages on (``data``: an .npz of arrays by input name;
    else synthetic, at the declared shapes, symbolic dims 1); or why outputs cannot be
    compared here."""
    try:
        infos = feeds.model_inputs(source)
    except Exception as error:  # an input that is no tensor (a sequence, an optional)
        return [], f"inputs that are not tensors ({type(error).__name__}: {error})"
    if data is not None:
        data_feeds = list(DataSet(DataSource(npz=str(data)), infos, {}, {}).feeds())
    else:
        try:
            ones = {d: 1 for i in infos for d in i.shape if isinstance(d, str)}
            data_feeds = feeds.synthetic_feeds(infos, 1, 0, ones, {})
        except Exception as error:  # an input type synthetic data cannot make
            return [], f"no synthetic data for these inputs: {error}"
        if any(not isinstance(d, int) for i in infos for d in i.shape):
            shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in data_feeds[0].items())
            log.warning(
                "passes proven on synthetic inputs at %s (the model's dynamic dims filled in); "
                "--data FILE.npz proves them at real sizes",
                shapes,
            )
    return data_feeds, None


def optimize(
    model: str | Path | onnx.ModelProto,
    passes: Sequence[PassItem] | None = None,
    *,
    verify: bool = True,
    data: str | Path | None = None,
    strict: bool = False,
    on_rollback: Callable[[Rollback], None] | None = None,
    plugins: Sequence[str | Path] = (),
) -> onnx.ModelProto:
    """Run passes (default: DEFAULT_PASSES) over a model and return the optimized model.

    ``verify`` proves every pass's result (valid ONNX, runs on ONNX Runtime, same outputs as
    before it on ``data`` or synthetic inputs) and rolls back a pass that fails, calling
    ``on_rollback`` (default: a logged warning); ``strict`` raises RolledBack instead.
    ``plugins``: files whose passes ``passes`` may name."""
    with _optimized(model, passes, verify, data, strict, on_rollback, plugins) as optimized:
        graph, source, _ = optimized
        return graph_io.export_model(graph, source, __version__)


def optimize_file(
    model: str | Path,
    output: str | Path,
    passes: Sequence[PassItem] | None = None,
    external_data: bool | None = None,
    *,
    verify: bool = True,
    data: str | Path | None = None,
    strict: bool = False,
    on_rollback: Callable[[Rollback], None] | None = None,
    plugins: Sequence[str | Path] = (),
) -> list[Path]:
    """Optimize a model file into ``output`` (returns the files written). The weights stay on
    disk throughout, so a model of any size needs little more memory than the passes create.
    ``external_data`` None saves weights to ``<output>.data`` above 1 GiB; the rest as
    :func:`optimize`."""
    output = Path(output)
    with _optimized(model, passes, verify, data, strict, on_rollback, plugins) as optimized:
        graph, source, proven = optimized
        # The file the graph was proven as is already what saving it would write (one file,
        # this trtopt's producer stamp): moved into place rather than written again.
        if proven is not None and not external_data and len(list(proven.parent.iterdir())) == 1:
            output.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(proven, output)
            return [output]
        return graph_io.save_graph(graph, output, source, __version__, external_data)
