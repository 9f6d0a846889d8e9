"""Hostile inputs that were internal errors (exit 3) and are the user's (exit 2) with their
name or path: image specs and images, CLI values, unwritable files; and hostile names that
must still make valid JUnit XML."""

from __future__ import annotations

import errno
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest

import trtopt
from helpers import QUICKSTART_MODEL, ROOT, hostile_recipe
from trtopt.cli import main
from trtopt.junit import junit_xml, report_suites

pytestmark = pytest.mark.usefixtures("keep_sigterm")


def _images(tmp_path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", size, (10, 20, 30)).save(folder / "a.png")
    return folder


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"input": "nope"}, "images.input 'nope' is not a model input"),
        ({"mean": [0.5, 0.5]}, "images.mean has 2 values, the images have 3 channel(s)"),
        ({"std": [1.0, 1.0]}, "images.std has 2 values"),
    ],
    ids=["unknown-input", "mean-of-2", "std-of-2"],
)
def test_image_specs_that_do_not_fit_exit_2_naming_the_value(tmp_path, capsys, spec, message):
    data = {"images": {"folder": str(_images(tmp_path)), **spec}}
    recipe = hostile_recipe(tmp_path, check={"samples": 1, "latency_runs": 0, "data": data})
    assert main(["compile", str(recipe), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_a_decompression_bomb_is_refused(tmp_path, capsys, monkeypatch):
    from PIL import Image

    folder = _images(tmp_path, (64, 64))
    # Pillow refuses images over twice MAX_IMAGE_PIXELS; a 64x64 PNG stands in for the bomb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = {"images": {"folder": str(folder), "resize": [32, 32]}}
    recipe = hostile_recipe(tmp_path, check={"samples": 1, "latency_runs": 0, "data": data})
    assert main(["compile", str(recipe), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "decompression bomb" in err, err


@pytest.mark.parametrize("samples", ["-3", "0", "x"])
def test_golden_update_with_no_samples_exits_2(tmp_path, capsys, samples):
    with pytest.raises(SystemExit) as exited:
        main(["golden", "update", str(hostile_recipe(tmp_path)), "--samples", samples])
    assert exited.value.code == 2
    assert "--samples" in capsys.readouterr().err


def test_junit_naming_a_folder_is_a_user_error_naming_it(tmp_path):
    folder = tmp_path / "junit"
    folder.mkdir()
    report = {"recipe": {"name": "x"}, "accuracy": {"outputs": {}, "failures": []}}
    with pytest.raises(trtopt.UserError, match="cannot write the JUnit file") as error:
        trtopt.write_junit(report, folder)
    assert str(folder) in str(error.value) and error.value.exit_code == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_output_folder_exits_2_naming_it(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        recipe = hostile_recipe(tmp_path, output=str(parent / "out"))
        assert main(["compile", str(recipe), "--no-cache"]) == 2
    finally:
        parent.chmod(0o755)
    err = capsys.readouterr().err
    assert str(parent) in err and "internal error" not in err, err


def test_junit_with_control_characters_in_names_parses(tmp_path):
    metrics = {"max_abs": 0.5}
    check = {"metric": "max_abs", "value": 0.5, "limit": 0.1, "passed": False}
    accuracy = {
        "verdict": "fail",
        "outputs": {"lo\x07git\x00s\x1b": {"error": None, "metrics": metrics, "checks": [check]}},
        "failures": ["lo\x07gits: max_abs 0.5 > 0.1"],
    }
    report = {"recipe": {"name": "bad\x0bname"}, "accuracy": accuracy, "verdict": "fail"}
    suites, extra = report_suites(report)
    text = junit_xml(suites, extra)
    root = ET.fromstring(text.encode())
    names = [case.get("classname") or "" for case in root.iter("testcase")]
    assert any("lo\\x07git\\x00s\\x1b" in name for name in names), names
    assert np.all([ch >= " " or ch in "\t\n\r" for ch in text])


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (OSError(errno.EROFS, "Read-only file system", "/srv/out/model.onnx"), "/srv/out/model"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    ],
    ids=["read-only", "disk-full"],
)
def test_a_folder_that_cannot_be_written_is_exit_2_naming_it(
    tmp_path, capsys, monkeypatch, error, shown
):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(trtopt, "compile", fail)
    assert main(["compile", str(hostile_recipe(tmp_path)), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert shown in err and "internal error" not in err, err


SILENT_GATES = """\
name: silent
model: {model}
inputs:
  pixel_values: {{shape: [n, 3, 32, 32], range: [0.0, 1.0]}}
passes: [cleanup]
check:
  samples: 1
  latency_runs: 0
  dims: {{n: 1, batch: 1}}
  outputs:
    logits: {{class_scores: true}}
  golden: {golden}
output: {out}
"""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("    logits: {", "    logit: {"),
            "recipe.yaml:11:5: check.outputs names 'logit', which is not a model output; "
            "did you mean 'logits'?; the model's outputs are ['logits']",
        ),
        (
            ("dims: {n: 1, batch: 1}", "dims: {n: 1, batchh: 1}"),
            "recipe.yaml:9:16: check.dims sets 'batchh', which no input's shape names; "
            "did you mean 'batch'?; the symbolic dims are ['batch', 'n']",
        ),
        (
            ("  pixel_values: {", "  pixel_value: {"),
            "recipe.yaml:4:3: no model input named 'pixel_value'; did you mean 'pixel_values'?",
        ),
    ],
    ids=["output", "dim", "input"],
)
@pytest.mark.parametrize("verb", ["compile", "check", "golden"])
def test_a_recipe_naming_what_the_model_lacks_exits_2_with_place_and_closest_name(
    tmp_path, capsys, verb, edit, message
):
    """A misspelt check.outputs key switched its gate off, a misspelt check.dims key was
    ignored: every name a recipe gives the model is checked against it, by every verb that
    loads the model. A dim the recipe names in inputs.<x>.shape ('n') is a dim too."""
    text = SILENT_GATES.format(
        model=QUICKSTART_MODEL, golden=ROOT / "golden" / "quickstart.npz", out=tmp_path / "out"
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace(*edit))
    args = {
        "compile": ["compile", str(recipe), "--no-cache"],
        "check": ["check", str(recipe), "--artifact", str(QUICKSTART_MODEL)],
        "golden": ["golden", "update", str(recipe), "-o", str(tmp_path / "g.npz")],
    }[verb]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/{message}" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.npz").exists()


def test_dims_a_recipe_shape_names_and_the_models_outputs_pass_the_name_check(tmp_path):
    from trtopt.inputs import check_model_names

    text = SILENT_GATES.format(model=QUICKSTART_MODEL, golden="g.npz", out=tmp_path / "out")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    check_model_names(onnx.load(QUICKSTART_MODEL), trtopt.load_recipe(recipe))
