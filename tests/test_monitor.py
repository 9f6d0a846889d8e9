"""`trtopt monitor`: the quickstart compiled to FP16 runs on captured inputs, most in the recipe's
input range and a few far outside it; exactly the out-of-distribution samples are named (by
file, and by index in a batched file), the exit code is the verdict (0, 1; 2 for a file that
does not fit the model), and the JSON, JUnit and HTML outputs read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from junitparser import Failure, JUnitXml, Skipped

import trtopt
from helpers import QUICKSTART
from trtopt.cli import main
from trtopt.deploy import monitor as monitor_module
from trtopt.errors import EXIT_ACCURACY, EXIT_OK, EXIT_USER

pytestmark = pytest.mark.usefixtures("keep_sigterm")

GATE = ["check.thresholds.max_abs=0.05", "check.thresholds.min_cosine=0.999"]
"""Thresholds FP16 keeps on inputs in the recipe's range [0, 1] (max_abs about 0.01 there), and
breaks on inputs scaled 500-fold (max_abs above 1)."""
OUT_OF_DISTRIBUTION = {"batch.npz[2]", "drift/ood_0.npz", "drift/ood_1.npz"}
SHAPE = (3, 32, 32)


def _pixels(rng: np.random.Generator, rows: int = 1, scale: float = 1.0) -> np.ndarray:
    return (rng.random((rows, *SHAPE), dtype=np.float32) * np.float32(scale)).astype(np.float32)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """The quickstart with an FP16 pass appended, compiled once (no golden file: FP16 would not
    keep the quickstart's own thresholds)."""
    out = tmp_path_factory.mktemp("monitor") / "out"
    passes = [*yaml.safe_load(QUICKSTART.read_text())["passes"], {"precision": {"dtype": "fp16"}}]
    overrides = [
        f"passes={json.dumps(passes)}",
        "check.golden=null",
        "check.latency_runs=0",
        "check.verify_passes=false",
        "check.samples=2",
        *GATE,
    ]
    result = trtopt.compile(QUICKSTART, output_dir=out, overrides=overrides, use_cache=False)
    assert result.exit_code == EXIT_OK, result.summary()
    return out


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> Path:
    """8 in-range files, a batch of 4 whose row 2 is scaled out of range, 2 scaled files."""
    folder = tmp_path_factory.mktemp("captured")
    rng = np.random.default_rng(7)
    for index in range(8):
        np.savez(folder / f"ok_{index}.npz", pixel_values=_pixels(rng))
    batch = _pixels(rng, rows=4)
    batch[2] *= 500
    np.savez(folder / "batch.npz", pixel_values=batch)
    (folder / "drift").mkdir()
    for index in range(2):
        np.savez(folder / "drift" / f"ood_{index}.npz", pixel_values=_pixels(rng, scale=500))
    return folder


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    output = capsys.readouterr()
    return code, output.out, output.err


def test_the_out_of_distribution_samples_are_named(compiled, captured):
    result = trtopt.monitor(QUICKSTART, captured, artifact=compiled, overrides=GATE)
    assert result.samples == 14
    assert result.exit_code == EXIT_ACCURACY
    assert {str(f.sample) for f in result.flagged} == OUT_OF_DISTRIBUTION
    batched = next(f for f in result.flagged if f.sample.file == "batch.npz")
    assert batched.sample.index == 2
    assert all("max_abs" in line for f in result.flagged for line in f.failures)
    (logits,) = result.outputs
    max_abs = logits.metrics["max_abs"]
    assert {str(s) for s in max_abs.beyond} == OUT_OF_DISTRIBUTION
    # The distribution: most samples well inside the limit, the worst far outside it.
    assert max_abs.quantile(0.5) < 0.05 < max_abs.worst
    assert max_abs.worst == max(max_abs.values)
    cosine = logits.metrics["cosine"]
    assert cosine.worst == min(cosine.values) and cosine.passed  # higher is better
    assert logits.metrics["mean_abs"].limit is None  # measured, not gated
    text = result.format()
    assert text.startswith("quickstart: FAIL (14 samples")
    assert "FAIL (3 samples)" in text
    for name in OUT_OF_DISTRIBUTION:
        assert name in text


def test_cli_outputs_json_junit_and_html(compiled, captured, tmp_path, capsys):
    junit, page = tmp_path / "monitor.xml", tmp_path / "monitor.html"
    args = ["monitor", str(QUICKSTART), "--data", str(captured), "--artifact", str(compiled)]
    args += ["--json", "--junit", str(junit), "--html", str(page)]
    code, out, _ = cli(capsys, *args, *(f"--set={s}" for s in GATE))
    assert code == EXIT_ACCURACY

    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    data = json.loads(out, parse_constant=refuse)
    assert (data["kind"], data["schema_version"], data["verdict"]) == ("monitor", 1, "fail")
    assert data["exit_code"] == EXIT_ACCURACY and data["samples"] == 14
    assert {f["sample"] for f in data["flagged"]} == OUT_OF_DISTRIBUTION
    assert {(f["file"], f["index"]) for f in data["flagged"]} == {
        ("batch.npz", 2),
        ("drift/ood_0.npz", None),
        ("drift/ood_1.npz", None),
    }
    max_abs = data["outputs"]["logits"]["metrics"]["max_abs"]
    assert max_abs["verdict"] == "fail" and max_abs["beyond"] == 3 and max_abs["limit"] == 0.05
    assert set(max_abs) >= {"worst", "p50", "p99"}

    cases = [case for suite in JUnitXml.fromfile(str(junit)) for case in suite]
    metrics = data["outputs"]["logits"]["metrics"]
    assert sorted(case.name for case in cases) == sorted(metrics)  # one per output and metric
    failed = [case for case in cases if any(isinstance(r, Failure) for r in case.result)]
    assert [case.name for case in failed] == ["max_abs"]
    message = failed[0].result[0].text
    assert all(name in message for name in OUT_OF_DISTRIBUTION)
    skipped = {c.name for c in cases if any(isinstance(r, Skipped) for r in c.result)}
    assert skipped == {m for m, v in metrics.items() if v["limit"] is None}

    text = page.read_text()
    assert "trtopt monitor quickstart: FAIL" in text
    assert "<img" in text  # the distribution plots (matplotlib is in the test extra)
    for name in OUT_OF_DISTRIBUTION:
        assert name in text


def test_in_distribution_data_passes(compiled, tmp_path, capsys):
    rng = np.random.default_rng(3)
    for index in range(3):
        np.savez(tmp_path / f"in_{index}.npz", pixel_values=_pixels(rng))
    args = ["monitor", str(QUICKSTART), "--data", str(tmp_path), "--artifact", str(compiled)]
    code, out, _ = cli(capsys, *args, *(f"--set={s}" for s in GATE))
    assert code == EXIT_OK, out
    assert out.startswith("quickstart: PASS (3 samples") and "flagged" not in out


def test_an_image_folder_is_preprocessed_as_declared(compiled, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(5)
    (tmp_path / "cam").mkdir()
    for index in range(2):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "cam" / f"frame_{index}.png")
    result = trtopt.monitor(QUICKSTART, tmp_path / "cam", artifact=compiled, overrides=GATE)
    assert (result.samples, result.exit_code) == (2, EXIT_OK)


def test_a_file_that_does_not_fit_is_exit_2_naming_it(compiled, captured, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "a_fine.npz", pixel_values=np.zeros((1, *SHAPE), np.float32))
    np.savez(bad / "b_wide.npz", pixel_values=np.zeros((1, 3, 32, 48), np.float32))
    args = ["monitor", str(QUICKSTART), "--data", str(bad), "--artifact", str(compiled)]
    code, out, err = cli(capsys, *args)
    assert code == EXIT_USER and not out
    assert "b_wide.npz: input 'pixel_values' dim 3 is 48, the model expects 32" in err
    assert "Traceback" not in err

    (bad / "b_wide.npz").write_bytes(b"captured by a broken exporter")
    code, _, err = cli(capsys, *args)
    assert code == EXIT_USER and "b_wide.npz: not a readable .npz file" in err

    (bad / "b_wide.npz").unlink()
    np.savez(bad / "c_double.npz", pixel_values=np.zeros((1, *SHAPE)))
    code, _, err = cli(capsys, *args)
    assert code == EXIT_USER
    assert "c_double.npz: input 'pixel_values' has dtype float64, the model expects" in err

    code, _, err = cli(
        capsys,
        "monitor",
        str(QUICKSTART),
        "--data",
        str(captured),
        "--artifact",
        str(tmp_path / "none"),
    )
    assert code == EXIT_USER and "artifact not found" in err


def test_without_matplotlib_the_page_keeps_its_tables(compiled, captured, monkeypatch):
    result = trtopt.monitor(QUICKSTART, captured, artifact=compiled, overrides=GATE)
    monkeypatch.setattr(monitor_module, "has_matplotlib", lambda: False)
    page = monitor_module.render_html(result)
    assert "<img" not in page and monitor_module.MISSING_PLOTS in page
    assert "samples beyond" in page and "drift/ood_1.npz" in page
