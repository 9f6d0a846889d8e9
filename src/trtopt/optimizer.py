"""``trtopt optimize``: passes over a model with no recipe, each stage proven on ONNX Runtime
(and rolled back when it fails) before the next pass sees it."""

from __future__ import annotations

import logging
import shutil
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
                graph = run_pass(pass_, graph, ctx).graph
            yield graph, source, None
            return
        judge = StageJudge(source, Path(scratch), [], __version__)
        original = model if base_dir is not None else Path(scratch) / "original.onnx"
        if base_dir is None:
            onnx.save_model(source, str(original))
        say("run the original model")
        judge.feeds, judge.outputs, unverified = _optimize_reference(source, Path(original), data)
        if unverified:
            log.warning(
                "outputs not compared (%s): each pass's result is only checked to be valid ONNX",
                unverified,
            )
        graph, rollbacks, proven = run_proven(
            graph, pipeline, ctx, judge, lambda: graph_io.import_graph(source, base_dir), say
        )
        for rollback in rollbacks:
            (on_rollback or _log_rollback)(rollback)
        if strict and rollbacks:
            raise RolledBack(rollbacks)
        yield graph, source, proven


def _log_rollback(rollback: Rollback) -> None:
    log.warning("pass '%s' rolled back: %s", rollback.pass_name, rollback.reason)


def _optimize_reference(
    source: onnx.ModelProto, path: Path, data: str | Path | None
) -> tuple[list[feeds.Feed], list | None, str | None]:
    """The feeds an optimize proves its stages on (``data``: an .npz of arrays by input name;
    else synthetic, at the declared shapes, symbolic dims 1) and the original's outputs on
    them; or why outputs cannot be compared here."""
    try:
        infos = feeds.model_inputs(source)
    except Exception as error:  # an input that is no tensor (a sequence, an optional)
        return [], None, f"inputs that are not tensors ({type(error).__name__}: {error})"
    if data is not None:
        data_feeds = list(DataSet(DataSource(npz=str(data)), infos, {}, {}).feeds())
    else:
        try:
            ones = {d: 1 for i in infos for d in i.shape if isinstance(d, str)}
            data_feeds = feeds.synthetic_feeds(infos, 1, 0, ones, {})
        except Exception as error:  # an input type synthetic data cannot make
            return [], None, f"no synthetic data for these inputs: {error}"
        if any(not isinstance(d, int) for i in infos for d in i.shape):
            shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in data_feeds[0].items())
            log.warning(
                "passes proven on synthetic inputs at %s (the model's dynamic dims filled in); "
                "--data FILE.npz proves them at real sizes",
                shapes,
            )
    try:
        return data_feeds, run_stage(path, data_feeds), None
    except Exception as error:
        return [], None, f"the original model does not run on ONNX Runtime here: {error}"


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
