"""`trtopt check` and the golden check of `trtopt compile`: pass, a perturbed artifact that fails
naming its output and metric, thresholds (defaults, per-output overrides, baselines), the new
metrics against numpy, and JUnit XML read by a JUnit parser."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from junitparser import Failure, JUnitXml, Skipped

import trtopt
from gate_helpers import QUICKSTART, compile_quickstart, perturb
from helpers import ROOT, run_cli
from trtopt import accuracy, metrics
from trtopt.cli import main
from trtopt.errors import EXIT_ACCURACY, EXIT_OK, EXIT_USER
from trtopt.recipe import CheckSpec


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (as `trtopt ARGS`): exit code, stdout, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check")
    result = compile_quickstart(folder / "out")
    bad = perturb(folder / "out" / "model.onnx", folder / "bad.onnx")
    return result, bad


def test_compile_runs_the_golden_check_and_reports_it(compiled):
    result, _ = compiled
    assert result.exit_code == EXIT_OK
    golden = result.report["golden"]
    assert golden["verdict"] == "pass" and golden["accuracy"]["samples"] == 2
    assert golden["golden"].endswith("golden/quickstart.npz")
    assert set(golden["accuracy"]["outputs"]["logits"]["metrics"]) == set(metrics.METRICS)
    assert (result.output_dir / "report.html").is_file()
    assert json.loads((result.output_dir / "report.json").read_text())["golden"] == golden


def test_check_passes_with_json_and_every_metric(compiled, capsys, tmp_path):
    result, _ = compiled
    code, out, _ = cli(
        capsys, "check", str(QUICKSTART), "--artifact", str(result.output_dir), "--json"
    )
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["kind"] == "check" and data["verdict"] == "pass" and data["exit_code"] == 0
    assert data["artifact"] == str(result.output_dir / "model.onnx")
    logits = data["accuracy"]["outputs"]["logits"]
    assert list(logits["metrics"]) == list(metrics.METRICS)
    assert {c["metric"] for c in logits["checks"]} == {"max_abs", "cosine", "top1"}
    code, out, _ = cli(capsys, "check", str(QUICKSTART), "--artifact", str(result.output_dir))
    assert code == EXIT_OK and out.startswith("quickstart: PASS")
    assert "logits  snr_db" in out and "not gated" in out


def test_perturbed_artifact_fails_naming_output_and_metric(compiled, capsys, tmp_path):
    _, bad = compiled
    junit = tmp_path / "junit.xml"
    code, out, _ = cli(
        capsys, "check", str(QUICKSTART), "--artifact", str(bad), "--junit", str(junit)
    )
    assert code == EXIT_ACCURACY
    assert "quickstart: FAIL" in out
    assert "FAIL logits: max_abs = " in out and "(limit 0.0001)" in out
    assert "FAIL logits: cosine = " in out
    # A JUnit parser reads one test case per output and metric.
    xml = JUnitXml.fromfile(str(junit))
    cases = {(case.classname, case.name): case for suite in xml for case in suite}
    assert set(cases) == {("trtopt.check.quickstart.logits", m) for m in metrics.METRICS}
    failed = {
        name
        for (_, name), case in cases.items()
        if any(isinstance(r, Failure) for r in case.result)
    }
    skipped = {
        name
        for (_, name), case in cases.items()
        if any(isinstance(r, Skipped) for r in case.result)
    }
    assert "max_abs" in failed and "cosine" in failed
    assert skipped == {"mean_abs", "max_rel", "quantile_abs", "snr_db", "psnr_db", "topk"}
    failure = next(r for r in cases[("trtopt.check.quickstart.logits", "max_abs")].result)
    assert failure.message.startswith("logits: max_abs = ") and "limit 0.0001" in failure.message
    suite = next(iter(xml))
    assert suite.tests == 9 and suite.failures == len(failed) and suite.skipped == 6
    # The document has the schema's shape: testsuites > testsuite > testcase.
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and int(root.get("failures")) == len(failed)
    assert all(child.tag == "testsuite" for child in root)
    assert all(case.tag == "testcase" for suite in root for case in suite)


def test_standalone_check_uses_the_thresholds_the_golden_file_recorded(compiled, capsys):
    result, bad = compiled
    golden = str(trtopt.load_recipe(QUICKSTART).check.golden)
    code, out, _ = cli(capsys, "check", "--artifact", str(result.artifact), "--golden", golden)
    assert code == EXIT_OK and "logits  top1" in out and "1        pass" in out
    code, out, _ = cli(capsys, "check", "--artifact", str(bad), "--golden", golden, "--json")
    assert code == EXIT_ACCURACY
    checks = json.loads(out)["accuracy"]["outputs"]["logits"]["checks"]
    assert {c["metric"]: c["limit"] for c in checks} == {
        "max_abs": 1e-4,
        "cosine": 0.99999,
        "top1": 1.0,
    }


def test_global_thresholds_and_per_output_overrides(compiled, capsys):
    result, _ = compiled
    base = ["check", str(QUICKSTART), "--artifact", str(result.artifact)]
    code, out, _ = cli(capsys, *base, "--set", "check.thresholds.min_snr_db=500")
    assert code == EXIT_ACCURACY and "FAIL logits: snr_db = " in out and "limit 500" in out
    override = "check.outputs.logits.thresholds={min_snr_db: 20, quantile_abs: 1.0e-3}"
    code, out, _ = cli(capsys, *base, "--set", "check.thresholds.min_snr_db=500", "--set", override)
    assert code == EXIT_OK, out
    assert "logits  quantile_abs" in out and "0.001" in out


def test_max_degradation_against_a_baseline(compiled, capsys, tmp_path):
    result, bad = compiled
    baseline = tmp_path / "baseline.json"
    code, out, _ = cli(
        capsys, "check", str(QUICKSTART), "--artifact", str(result.artifact), "--json"
    )
    baseline.write_text(out)
    loose = [
        "--set",
        "check.thresholds={max_abs: null, min_cosine: null}",
        "--set",
        "check.outputs.logits.thresholds={max_degradation: {cosine: 1.0e-6, top1: 0.0}}",
    ]
    args = ["check", str(QUICKSTART), "--baseline", str(baseline), *loose]
    code, out, _ = cli(capsys, *args, "--artifact", str(bad))
    assert code == EXIT_ACCURACY
    assert "FAIL logits: cosine vs baseline = " in out and "baseline 1)" in out
    code, out, _ = cli(capsys, *args, "--artifact", str(result.artifact))
    assert code == EXIT_OK and "cosine vs baseline" in out
    # A compile report is a baseline too (its golden check).
    code, _, _ = cli(
        capsys,
        *args,
        "--artifact",
        str(bad),
        "--set",
        f"check.baseline={result.output_dir / 'report.json'}",
    )
    assert code == EXIT_ACCURACY


def test_unknown_degradation_metric_and_missing_baseline_exit_2(compiled, capsys, tmp_path):
    result, _ = compiled
    base = ["check", str(QUICKSTART), "--artifact", str(result.artifact)]
    code, _, err = cli(capsys, *base, "--set", "check.thresholds.max_degradation={cosin: 0.1}")
    assert code == EXIT_USER and "unknown metric 'cosin'; did you mean 'cosine'?" in err
    assert "--set check.thresholds.max_degradation" in err
    code, _, err = cli(capsys, *base, "--baseline", str(tmp_path / "none.json"))
    assert code == EXIT_USER and "baseline report not found" in err


def test_missing_artifact_and_missing_golden_setting_exit_2(capsys, tmp_path):
    code, _, err = cli(capsys, "check", str(QUICKSTART), "--artifact", str(tmp_path / "x.onnx"))
    assert code == EXIT_USER and f"{tmp_path / 'x.onnx'}: artifact not found" in err
    code, _, err = cli(capsys, "check", str(QUICKSTART), "--set", "check.golden=null")
    assert code == EXIT_USER and "no golden file" in err and "quickstart.yaml" in err
    code, _, err = cli(capsys, "check")
    assert code == EXIT_USER and "say what to check" in err


def test_compile_fails_when_the_artifact_drifts_from_the_golden_outputs(tmp_path, write_recipe):
    (tmp_path / "drift.py").write_text(DRIFT_PLUGIN)
    recipe = write_recipe(
        f"extends: {QUICKSTART}\nplugins: [drift.py]\n"
        "passes: [cleanup, {drift: {}}]\n"
        f"output: {tmp_path / 'out'}\n"
    )
    result = trtopt.compile(
        recipe, overrides=["check.samples=1", "check.latency_runs=0"], use_cache=False
    )
    assert result.exit_code == EXIT_ACCURACY
    assert result.report["golden"]["verdict"] == "fail"
    assert any(
        f.startswith("golden: logits: max_abs = ") for f in result.report["accuracy"]["failures"]
    )
    assert (tmp_path / "out" / "report.html").is_file()


def test_compile_with_a_stale_golden_file_exits_2_before_any_work(tmp_path, write_recipe, capsys):
    stale = ROOT / "golden" / "bert-int8.npz"
    recipe = write_recipe(
        f"extends: {QUICKSTART}\ncheck: {{golden: {stale}}}\noutput: {tmp_path / 'out'}\n"
    )
    code, _, err = cli(capsys, "compile", str(recipe), "--no-cache")
    assert code == EXIT_USER and "bert-int8.npz: made from another model" in err
    assert not (tmp_path / "out").exists()


DRIFT_PLUGIN = '''
import numpy as np
import onnx_graphsurgeon as gs
from trtopt import Pass, PassOptions, register_pass


@register_pass("drift")
class Drift(Pass):
    """Scale the largest weight by 1.05 (a pass that changes numerics)."""

    exact = False  # changes the numbers on purpose: the accuracy check judges it

    def run(self, graph, ctx):
        constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
        largest = max(constants, key=lambda t: t.values.size)
        largest.values = (largest.values * 1.05).astype(largest.values.dtype)
        return graph
'''


# -- the metrics against numpy ---------------------------------------------------------------


def test_new_metrics_match_numpy():
    rng = np.random.default_rng(0)
    reference = [{"scores": rng.standard_normal((8, 6)).astype(np.float32)} for _ in range(3)]
    candidate = [
        {"scores": r["scores"] + 0.05 * rng.standard_normal((8, 6)).astype(np.float32)}
        for r in reference
    ]
    # Row 0 of sample 0: the reference's top class drops to the candidate's 2nd place.
    row = reference[0]["scores"][0]
    top, second = np.argsort(-row)[:2]
    candidate[0]["scores"][0] = row
    candidate[0]["scores"][0][top] = row[second] - 1e-3
    spec = CheckSpec(outputs={"scores": {"class_scores": True, "top_k": 2}})
    result = accuracy.compare(
        reference, candidate, spec.thresholds_for, {"scores"}, quantile=0.9, top_k={"scores": 2}
    )
    measured = result.outputs[0].metrics
    r = [x["scores"].astype(np.float64) for x in reference]
    c = [x["scores"].astype(np.float64) for x in candidate]
    err = [np.abs(a - b) for a, b in zip(r, c)]
    assert math.isclose(
        measured["quantile_abs"], max(np.quantile(e, 0.9) for e in err), rel_tol=1e-4
    )
    snr = min(10 * np.log10(np.mean(a**2) / np.mean((a - b) ** 2)) for a, b in zip(r, c))
    psnr = min(20 * np.log10(a.max()) - 10 * np.log10(np.mean((a - b) ** 2)) for a, b in zip(r, c))
    assert math.isclose(measured["snr_db"], snr, rel_tol=1e-6)
    assert math.isclose(measured["psnr_db"], psnr, rel_tol=1e-6)
    agree = sum(int(np.sum(np.argmax(a, -1) == np.argmax(b, -1))) for a, b in zip(r, c))
    assert measured["top1"] == agree / 24 and measured["top1"] < 1
    assert measured["topk"] == 1.0  # within the top 2 everywhere
    identical = accuracy.compare(reference, reference, spec.thresholds_for, {"scores"})
    assert identical.outputs[0].metrics["snr_db"] == metrics.DB_CEILING
    json.dumps(identical.to_json(), allow_nan=False)  # standard JSON, no Infinity


def test_check_of_a_recipe_compiled_elsewhere_names_artifact(tmp_path):
    result = run_cli("check", str(QUICKSTART), "--set", f"output={tmp_path / 'nowhere'}")
    assert result.returncode == EXIT_USER
    assert "artifact not found" in result.stderr and "--artifact DIR" in result.stderr
