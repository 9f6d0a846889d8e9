"""optimize proves each pass's result and rolls back the ones that break the model."""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import trtopt
from helpers import MODELS, assert_same_outputs, model_feeds, ort_run, run_cli
from trtopt import PassError
from trtopt.stages import RolledBack, differs

BROKEN_PASSES = '''
import numpy as np
import onnx_graphsurgeon as gs
from trtopt import Pass, register_pass


@register_pass("scale-weight")
class ScaleWeight(Pass):
    """Scale the first large weight: changes the outputs while claiming not to."""

    def run(self, graph, ctx):
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and tensor.values.size > 100:
                tensor.values = (tensor.values * 1.5).astype(tensor.values.dtype)
                tensor.name += "_scaled"
                break
        return graph


@register_pass("dangle")
class Dangle(Pass):
    """Remove the last node's producer but keep its reader: a model ONNX cannot load."""

    def run(self, graph, ctx):
        graph.nodes.pop(0)
        return graph


@register_pass("rename-first")
class RenameFirst(Pass):
    """A harmless pass that leaves a mark."""

    def run(self, graph, ctx):
        graph.nodes[0].name = "renamed_by_a_later_pass"
        return graph


@register_pass("crash")
class Crash(Pass):
    """Raise like a buggy pass."""

    def run(self, graph, ctx):
        raise ZeroDivisionError("division by zero")


@register_pass("exit-zero")
class ExitZero(Pass):
    """User code that tries to end trtopt with success."""

    def run(self, graph, ctx):
        raise SystemExit(0)


@register_pass("hard-exit")
class HardExit(Pass):
    """User code that tries to end the process at once, with success."""

    def run(self, graph, ctx):
        import os

        os._exit(0)
'''


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN_PASSES)
    return path


MODEL = MODELS / "cnn_legacy.onnx"


@pytest.mark.parametrize(
    ("culprit", "reason"),
    [
        ("scale-weight", "is allowed"),
        ("dangle", "not"),  # "... is not a graph input ..." / "not topologically sorted"
        ("crash", "ZeroDivisionError: division by zero"),
    ],
)
def test_a_breaking_pass_is_rolled_back_and_the_chain_goes_on(plugin, culprit, reason):
    rollbacks = []
    optimized = trtopt.optimize(
        MODEL,
        passes=["cleanup", culprit, "rename-first"],
        plugins=[plugin],
        on_rollback=rollbacks.append,
    )
    assert [r.pass_name for r in rollbacks] == [culprit]
    assert reason in rollbacks[0].reason
    original = onnx.load(str(MODEL))
    data = model_feeds(original)
    assert_same_outputs(ort_run(original, data), ort_run(optimized, data))
    # The pass after the rolled-back one still ran.
    assert optimized.graph.node[0].name == "renamed_by_a_later_pass"

    with pytest.raises(RolledBack) as info:
        trtopt.optimize(MODEL, passes=["cleanup", culprit], plugins=[plugin], strict=True)
    assert info.value.exit_code == 1 and f"pass '{culprit}' rolled back" in str(info.value)


def test_without_verification_a_broken_pass_goes_through(plugin):
    optimized = trtopt.optimize(MODEL, passes=["scale-weight"], plugins=[plugin], verify=False)
    data = model_feeds(onnx.load(str(MODEL)))
    with pytest.raises(AssertionError):
        assert_same_outputs(ort_run(MODEL, data), ort_run(optimized, data))


def test_user_code_cannot_end_trtopt_with_success(plugin):
    with pytest.raises(PassError, match=r"called sys.exit\(0\)") as info:
        trtopt.optimize(MODEL, passes=["exit-zero"], plugins=[plugin])
    assert info.value.exit_code == 3
    with pytest.raises(PassError, match=r"called os._exit\(0\)"):
        trtopt.optimize(MODEL, passes=["hard-exit"], plugins=[plugin])


def test_a_hard_exit_in_a_plugin_is_exit_3_on_the_command_line(plugin, tmp_path):
    done = run_cli(
        "optimize",
        str(MODEL),
        str(tmp_path / "o.onnx"),
        "--plugin",
        str(plugin),
        "--passes",
        "hard-exit",
    )
    assert done.returncode == 3 and "os._exit(0)" in done.stderr
    assert not (tmp_path / "o.onnx").exists()
    (tmp_path / "exits.py").write_text("import os\nos._exit(0)\n")
    done = run_cli(
        "optimize", str(MODEL), str(tmp_path / "o.onnx"), "--plugin", str(tmp_path / "exits.py")
    )
    assert done.returncode == 2 and "exits.py" in done.stderr


def test_rollbacks_are_logged_by_default(plugin, caplog):
    with caplog.at_level(logging.WARNING, logger="trtopt"):
        trtopt.optimize(MODEL, passes=["crash"], plugins=[plugin])
    assert "pass 'crash' rolled back: ZeroDivisionError" in caplog.text


def test_a_model_onnx_runtime_cannot_run_is_still_proven_valid(caplog):
    # A custom-domain op has no kernel here: outputs cannot be compared, validity still is.
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Unknown", ["a"], ["y"], domain="example.custom"),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    )
    with caplog.at_level(logging.WARNING, logger="trtopt"):
        optimized = trtopt.optimize(model)
    assert "outputs not compared" in caplog.text
    assert [n.op_type for n in optimized.graph.node] == ["Unknown"]
    assert optimized.graph.node[0].domain == "example.custom"


def test_cli_refuses_a_folder_as_the_output(tmp_path):
    done = run_cli("optimize", str(MODEL), str(tmp_path))
    assert done.returncode == 2 and f"{tmp_path}: is a folder" in done.stderr


def test_cli_names_the_rollback_and_strict_writes_nothing(plugin, tmp_path):
    out = tmp_path / "out.onnx"
    done = run_cli(
        "optimize", str(MODEL), str(out), "--plugin", str(plugin), "--passes", "cleanup,dangle"
    )
    assert done.returncode == 0, done.stderr
    assert "pass 'dangle' rolled back" in done.stderr and out.is_file()
    assert "Traceback" not in done.stderr

    strict = tmp_path / "strict.onnx"
    done = run_cli(
        "optimize",
        str(MODEL),
        str(strict),
        "--plugin",
        str(plugin),
        "--passes",
        "dangle",
        "--strict",
    )
    assert done.returncode == 1 and not strict.exists()
    assert "rolled back" in done.stderr and "Traceback" not in done.stderr


def test_optimize_proves_stages_on_given_data(tmp_path, plugin):
    original = onnx.load(str(MODEL))
    (feed,) = model_feeds(original, samples=1)
    np.savez(tmp_path / "feed.npz", **feed)
    rollbacks = []
    trtopt.optimize(
        MODEL,
        passes=["scale-weight"],
        plugins=[plugin],
        data=tmp_path / "feed.npz",
        on_rollback=rollbacks.append,
    )
    assert [r.pass_name for r in rollbacks] == ["scale-weight"]


def test_differs_judges_floats_within_tolerance_and_the_rest_exactly():
    base = [{"y": np.array([1.0, 2.0, np.nan], np.float32), "i": np.array([1, 2])}]
    assert (
        differs(base, [{"y": np.array([1.0, 2.0001, np.nan], np.float32), "i": base[0]["i"]}])
        is None
    )
    # 2.0 -> 2.5: the limit is 1e-4 * max|y| (2) + 1e-3 * |2.0| = 0.0022, at index [1].
    assert "changed by 0.5 at [1] where 0.0022 is allowed" in differs(
        base, [{"y": np.array([1.0, 2.5, np.nan], np.float32), "i": base[0]["i"]}]
    )
    assert "changed" in differs(base, [{"y": base[0]["y"], "i": np.array([1, 3])}])
    assert "is float64" in differs(
        base, [{"y": base[0]["y"].astype(np.float64), "i": base[0]["i"]}]
    )
    assert "missing" in differs(base, [{"i": base[0]["i"]}])


def test_a_clean_chain_is_proven_once_and_a_broken_one_stage_by_stage(plugin, monkeypatch):
    from trtopt import stages

    judged = []
    judge = stages.StageJudge.judge

    def counting(self, graph, exact):
        judged.append(exact)
        return judge(self, graph, exact)

    monkeypatch.setattr(stages.StageJudge, "judge", counting)
    model = onnx.load(str(MODEL))
    trtopt.optimize(model, ["rename-first", "cleanup", "fuse"], plugins=[plugin])
    assert len(judged) == 1  # the final graph only
    judged.clear()
    rolled = []
    chain = ["rename-first", "scale-weight", "cleanup"]
    trtopt.optimize(model, chain, plugins=[plugin], on_rollback=rolled.append)
    assert [r.pass_name for r in rolled] == ["scale-weight"]
    assert len(judged) == 1 + 3  # the refused final graph, then each of the 3 changed stages


def test_the_original_runs_beside_the_passes_and_the_chain_is_fingerprinted_twice(monkeypatch):
    # The original's ONNX Runtime run is on a thread of its own (it releases the GIL) while
    # the passes run; the proven final graph runs on the caller's thread after it. Whether
    # a clean chain changed the graph is two fingerprints (before and after), not two a pass.
    from trtopt import optimizer, stages

    ran, fingerprints = [], []
    run, signature = stages.run, stages.graph_signature

    def recording(original, feeds, threads=None):
        ran.append((type(original).__name__, threading.current_thread().name))
        return run(original, feeds, threads)

    def counting(graph, alive=None):
        fingerprints.append(graph)
        return signature(graph, alive)

    monkeypatch.setattr(optimizer, "run_stage", recording)
    monkeypatch.setattr(stages, "run", recording)
    monkeypatch.setattr(stages, "graph_signature", counting)
    trtopt.optimize(onnx.load(str(MODEL)), ["cleanup", "fold-constants", "fuse", "cleanup"])
    assert ran == [("bytes", "trtopt-reference"), ("PosixPath", threading.main_thread().name)]
    assert len(fingerprints) == 2


def test_a_stage_the_checker_refuses_names_the_checkers_reason(plugin, tmp_path):
    # The checker reads the stage's bytes as written, not the file again: the same refusal.
    rollbacks = []
    trtopt.optimize_file(
        MODEL, tmp_path / "o.onnx", ["dangle"], plugins=[plugin], on_rollback=rollbacks.append
    )
    assert [r.pass_name for r in rollbacks] == ["dangle"]
    assert rollbacks[0].reason.startswith("invalid ONNX model: ")
    assert (tmp_path / "o.onnx").is_file()


def test_unread_weights_are_fingerprinted_by_identity_and_stay_unread():
    import onnx_graphsurgeon as gs

    from trtopt import graph_io, stages

    graph = graph_io.import_graph(onnx.load(str(MODEL)), MODEL.parent)
    unread = [
        t
        for t in graph.tensors().values()
        if isinstance(t, gs.Constant) and type(t._values) is gs.ir.tensor.LazyValues
    ]
    assert unread
    alive = []
    before = stages.graph_signature(graph, alive)
    assert all(type(t._values) is gs.ir.tensor.LazyValues for t in unread)  # none read
    assert stages.graph_signature(graph, alive) == before
    # Other values of the same name, type and shape, still unread: a change.
    proto = onnx.TensorProto()
    proto.CopyFrom(unread[0]._values.tensor)
    unread[0]._values = gs.ir.tensor.LazyValues(proto)
    assert stages.graph_signature(graph, alive) != before
    # Without ``alive`` every constant is read (the fingerprint of its leading bytes).
    stages.graph_signature(graph)
    assert all(isinstance(t._values, np.ndarray) for t in unread)
