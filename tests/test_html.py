"""report.html: self-contained, verdict first, and it renders in a real headless Chromium with
no console errors and every plot decoded."""

from __future__ import annotations

import json
import re

import pytest

import trtopt
from browser import find_chromium, load_page
from gate_helpers import QUICKSTART, compile_quickstart, perturb
from trtopt import html as html_report

IMAGES = (
    "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
)
PAGE = f"({{images: {IMAGES}, verdict: document.getElementById('verdict').innerText, "
PAGE += "headings: Array.from(document.querySelectorAll('h2')).map(h => h.innerText)})"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_quickstart(tmp_path_factory.mktemp("html") / "out")


def test_page_is_self_contained_with_verdict_first(compiled):
    page = (compiled.output_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no external URL, script or stylesheet link.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page
    assert page.index('id="verdict"') < page.index("<h2>Accuracy</h2>")
    assert page.count('src="data:image/png;base64,') == 3  # per output, passes, latency
    for heading in ("Accuracy", "Passes", "Latency", "Versions"):
        assert f"<h2>{heading}</h2>" in page


def test_page_without_matplotlib_keeps_its_tables(compiled, monkeypatch):
    monkeypatch.setattr(html_report, "has_matplotlib", lambda: False)
    report = json.loads((compiled.output_dir / "report.json").read_text())
    page = html_report.render(report)
    assert "<img" not in page and "pip install 'trtopt[report]'" in page
    assert "<td>max_abs</td>" in page


def test_kept_layers_are_listed(compiled):
    report = json.loads((compiled.output_dir / "report.json").read_text())
    report["kept_in_higher_precision"] = [
        {"pass": "precision", "node": "/layer1/Softmax", "reason": "overflows FP16 (max 7e4)"}
    ]
    page = html_report.render(report)
    assert "<h2>Kept in higher precision</h2>" in page and "/layer1/Softmax" in page


def test_report_renders_in_headless_chromium(compiled, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install chromium); .ci/run installs it")
    result = load_page(chromium, compiled.output_dir / "report.html", PAGE)
    (tmp_path / "report.png").write_bytes(result.screenshot)
    assert result.errors == []
    images = result.value["images"]
    assert len(images) == 3
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, alt
    assert result.value["verdict"].startswith("PASS")
    assert result.value["headings"][:3] == ["Accuracy", "Passes", "Latency"]
    assert len(result.screenshot) > 10_000


def test_failing_check_page_renders_in_headless_chromium(compiled, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install chromium); .ci/run installs it")
    bad = perturb(compiled.artifact, tmp_path / "bad.onnx")
    result = trtopt.check(QUICKSTART, artifact=bad)
    pairs = trtopt.output_pairs(result.reference_outputs, result.candidate_outputs)
    page = trtopt.write_html(result.to_json(), tmp_path / "check.html", pairs)
    loaded = load_page(chromium, page, PAGE)
    assert loaded.errors == []
    assert loaded.value["verdict"].startswith("FAIL")
    assert "logits: max_abs" in loaded.value["verdict"]
    ((alt, complete, width, _),) = loaded.value["images"]
    assert alt.startswith("logits") and complete and width > 0


def test_the_browser_check_sees_console_errors_and_broken_images(tmp_path):
    """The harness itself: a page with a console error and an undecodable image fails it."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install chromium); .ci/run installs it")
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><div id="verdict">x</div><h2>A</h2>'
        '<img alt="bad" src="data:image/png;base64,AAAA">'
        '<script>console.error("boom")</script></body></html>'
    )
    result = load_page(chromium, page, PAGE)
    assert any("boom" in error for error in result.errors)
    assert result.value["images"][0][2] == 0
