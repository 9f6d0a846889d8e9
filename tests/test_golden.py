"""Golden files: what `trtopt golden update` writes, that it is deterministic and current, that
every shipped recipe has one within the size budget, and the errors for broken ones."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import trtopt
from gate_helpers import QUICKSTART, shipped_recipes
from helpers import ROOT, ort_run, run_cli
from trtopt.cli import main
from trtopt.errors import EXIT_USER
from trtopt.gate import verify_golden
from trtopt.golden import metadata_path, write_golden
from trtopt.model import model_sha256

QUICKSTART_MODEL = ROOT / "recipes" / "models" / "quickstart.onnx"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The quickstart recipe's golden file, written twice."""
    folder = tmp_path_factory.mktemp("golden")
    first = trtopt.update_golden(QUICKSTART, folder / "a.npz")
    second = trtopt.update_golden(QUICKSTART, folder / "b.npz")
    return first, second


def test_update_writes_inputs_reference_outputs_and_metadata(fresh):
    golden, _ = fresh
    with np.load(golden.path, allow_pickle=False) as archive:
        assert archive.files == [
            "inputs/0000/pixel_values",
            "inputs/0001/pixel_values",
            "outputs/0000/logits",
            "outputs/0001/logits",
        ]
        assert archive["inputs/0000/pixel_values"].shape == (4, 3, 32, 32)  # check.dims batch 4
    # The reference: the original model on ONNX Runtime, on exactly the stored inputs.
    expected = ort_run(QUICKSTART_MODEL, golden.inputs)
    for outputs, (logits,) in zip(golden.outputs, expected, strict=True):
        np.testing.assert_allclose(outputs["logits"], logits, atol=1e-5)
    meta = json.loads(metadata_path(golden.path).read_text())
    assert meta["format"] == "trtopt-golden" and meta["version"] == 2
    assert meta["recipe"] == "quickstart"
    assert meta["model"]["sha256"] == hashlib.sha256(QUICKSTART_MODEL.read_bytes()).hexdigest()
    assert meta["data"]["source"] == "check.data: synthetic (seed 0)"
    assert meta["data"]["samples"] == 2  # check.golden_samples
    assert meta["npz"]["sha256"] == hashlib.sha256(golden.path.read_bytes()).hexdigest()
    assert meta["thresholds"]["logits"] == {"max_abs": 1e-4, "min_cosine": 0.99999, "min_top1": 1}
    assert meta["class_scores"] == ["logits"] and meta["error_quantile"] == 0.99
    assert meta["versions"]["onnxruntime"] and meta["versions"]["trtopt"]


def test_golden_bytes_are_deterministic(fresh):
    first, second = fresh
    assert first.path.read_bytes() == second.path.read_bytes()
    a, b = json.loads(metadata_path(first.path).read_text()), metadata_path(second.path)
    b = json.loads(b.read_text())
    a["npz"].pop("file"), b["npz"].pop("file")
    assert a == b
    with zipfile.ZipFile(first.path) as archive:  # no build time stamped in
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_shipped_quickstart_golden_is_current(fresh):
    """The committed file holds what `golden update` writes today (outputs within float noise:
    another CPU may round differently)."""
    golden, _ = fresh
    shipped = trtopt.load_golden(ROOT / "golden" / "quickstart.npz")
    for a, b in zip(shipped.inputs, golden.inputs, strict=True):
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
    for a, b in zip(shipped.outputs, golden.outputs, strict=True):
        np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5)


@pytest.mark.parametrize("recipe_path", shipped_recipes(), ids=lambda p: p.stem)
def test_every_shipped_recipe_has_its_golden_file_within_budget(recipe_path):
    recipe = trtopt.load_recipe(recipe_path)
    assert recipe.check.golden, f"{recipe_path.name}: set check.golden"
    path = (ROOT / "golden" / f"{recipe.name}.npz").resolve()
    assert Path(recipe.check.golden).resolve() == path
    golden = trtopt.load_golden(path)
    assert golden.meta["recipe"] == recipe.name
    model = onnx.load(recipe.model, load_external_data=False)
    # Current: made from this very model, and its inputs fit it.
    verify_golden(golden, model, recipe.model, model_sha256(Path(recipe.model)))
    assert path.stat().st_size <= trtopt.GOLDEN_SIZE_BUDGET


def test_golden_update_cli_writes_default_path_and_warns_over_budget(tmp_path, cli):
    result = run_cli(
        "golden", "update", str(QUICKSTART), "--set", "check.golden=null", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "golden" / "quickstart.npz").is_file()
    assert (tmp_path / "golden" / "quickstart.json").is_file()
    assert "golden/quickstart.npz" in result.stdout and "2 samples" in result.stdout
    big = cli(
        "golden", "update", str(QUICKSTART), "-o", str(tmp_path / "big.npz"), "--samples", "8"
    )
    assert big.returncode == 0 and "golden-file budget" in big.stderr


def _copy(tmp_path, name="quickstart"):
    for suffix in (".npz", ".json"):
        shutil.copy(ROOT / "golden" / f"{name}{suffix}", tmp_path / f"g{suffix}")
    return tmp_path / "g.npz"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """`trtopt ARGS` in this process (faster than a subprocess; same exit codes and output)."""

    def run(*args: str) -> Ran:
        code = main(list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


@pytest.fixture
def check(cli):
    def run(*args: str) -> Ran:
        return cli("check", str(QUICKSTART), "--artifact", str(QUICKSTART_MODEL), *args)

    return run


def test_missing_golden_file_exits_2_naming_it(tmp_path, check):
    result = check("--golden", str(tmp_path / "nope.npz"))
    assert result.returncode == EXIT_USER
    assert f"{tmp_path / 'nope.npz'}: golden file not found" in result.stderr
    assert "trtopt golden update" in result.stderr and "Traceback" not in result.stderr


def test_golden_without_its_metadata_exits_2(tmp_path, check):
    golden = _copy(tmp_path)
    metadata_path(golden).unlink()
    result = check("--golden", str(golden))
    assert result.returncode == EXIT_USER and "g.json is missing" in result.stderr


def test_edited_golden_file_exits_2_with_both_hashes(tmp_path, check):
    golden = _copy(tmp_path)
    data = bytearray(golden.read_bytes())
    data[200] ^= 0xFF
    golden.write_bytes(bytes(data))
    result = check("--golden", str(golden))
    assert result.returncode == EXIT_USER
    assert "sha256" in result.stderr and "g.json records" in result.stderr


def test_golden_of_another_model_exits_2(tmp_path, check, cli):
    golden = _copy(tmp_path, "bert-fp16")
    result = check("--golden", str(golden))
    assert result.returncode == EXIT_USER
    assert "made from another model" in result.stderr
    # The hint names the recipe being checked, by its path (not the golden file's recipe name).
    assert "golden update " in result.stderr and "recipes/quickstart.yaml`" in result.stderr
    # Without a recipe there is no model to compare: the inputs themselves do not fit.
    alone = cli("check", "--artifact", str(QUICKSTART_MODEL), "--golden", str(golden))
    assert alone.returncode == EXIT_USER
    assert "input names do not match" in alone.stderr and "pixel_values" in alone.stderr


def test_golden_with_other_outputs_exits_2(tmp_path, check):
    shipped = trtopt.load_golden(ROOT / "golden" / "quickstart.npz")
    outputs = [{"scores": o["logits"]} for o in shipped.outputs]
    meta = {k: v for k, v in shipped.meta.items() if k not in ("format", "version", "npz")}
    path = write_golden(tmp_path / "renamed.npz", shipped.inputs, outputs, meta)
    result = check("--golden", str(path))
    assert result.returncode == EXIT_USER
    assert "outputs ['scores'] are not the outputs ['logits']" in result.stderr


def test_unknown_golden_version_exits_2(tmp_path, check):
    golden = _copy(tmp_path)
    meta = json.loads(metadata_path(golden).read_text())
    meta["version"] = 99
    metadata_path(golden).write_text(json.dumps(meta))
    result = check("--golden", str(golden))
    assert result.returncode == EXIT_USER and "version 99" in result.stderr


def _edit(golden: Path, edit) -> None:
    meta = json.loads(metadata_path(golden).read_text())
    edit(meta)
    metadata_path(golden).write_text(json.dumps(meta))


def _loosen(meta: dict) -> None:
    meta["thresholds"]["logits"].update(max_abs=1e9, min_cosine=-1)


@pytest.mark.parametrize(
    ("edit", "differs"),
    [
        (_loosen, ["thresholds.logits.max_abs is 1000000000.0, was 0.0001",
                   "thresholds.logits.min_cosine is -1, was 0.99999"]),
        (lambda m: m.update(class_scores=[]), ['class_scores is [], was ["logits"]']),
        (lambda m: m.update(top_k={"logits": 1}), ["top_k.logits is 1, was 5"]),
        (lambda m: m.update(error_quantile=0.5), ["error_quantile is 0.5, was 0.99"]),
        (lambda m: m["thresholds"].pop("logits"), ["thresholds.logits is missing, was {"]),
        (lambda m: m["model"].update(sha256="0" * 64), ["model.sha256 is"]),
    ],
    ids=["loosened", "class_scores", "top_k", "quantile", "dropped", "model"],
)  # fmt: skip
def test_edited_golden_gating_metadata_exits_2_naming_what_differs(tmp_path, cli, edit, differs):
    """The thresholds and output kinds a check without a recipe gates on are recorded in the
    npz too: loosening them in the .json no longer turns a failing check into a pass."""
    golden = _copy(tmp_path)
    _edit(golden, edit)
    result = cli("check", "--artifact", str(QUICKSTART_MODEL), "--golden", str(golden))
    assert result.returncode == EXIT_USER, result.stdout
    assert f"{metadata_path(golden)}: edited golden metadata" in result.stderr
    for text in differs:
        assert text in result.stderr
    assert "golden update quickstart.yaml" in result.stderr


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m["thresholds"]["logits"].update(max_abs=-1), "thresholds.logits.max_abs:"),
        (lambda m: m["thresholds"]["logits"].update(max_abs="x"), "thresholds.logits.max_abs:"),
        (lambda m: m["thresholds"]["logits"].update(max_abs=[1]), "thresholds.logits.max_abs:"),
        (lambda m: m["thresholds"]["logits"].update(min_top1=2), "thresholds.logits.min_top1:"),
        (
            lambda m: m["thresholds"]["logits"].update(max_abss=1),
            "unknown key 'thresholds.logits.max_abss'",
        ),
        (lambda m: m["thresholds"].update(logits=0.1), "thresholds.logits:"),
        (lambda m: m.update(thresholds=[]), "thresholds:"),
        (lambda m: m.update(class_scores="logits"), "class_scores:"),
        (lambda m: m.update(top_k={"logits": 0}), "top_k.logits:"),
        (lambda m: m.update(error_quantile=2), "error_quantile:"),
        (lambda m: m.update(threshold={}), "unknown key 'threshold'; did you mean 'thresholds'?"),
    ],
)  # fmt: skip
def test_invalid_golden_metadata_exits_2_naming_file_and_key(tmp_path, cli, edit, named):
    """The .json is checked with the recipe's own models (Thresholds): exit 2, not 3."""
    golden = _copy(tmp_path)
    _edit(golden, edit)
    result = cli("check", "--artifact", str(QUICKSTART_MODEL), "--golden", str(golden))
    assert result.returncode == EXIT_USER, result.stderr
    assert f"{metadata_path(golden)}: {named}" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
