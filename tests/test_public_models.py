"""Pretrained public models nobody here exported, from the wheels that ship them: PaddleOCR's
text direction classifier, detector and recognizer (rapidocr-onnxruntime) and the Silero
voice-activity detector (faster-whisper). Every pass keeps what they compute.

The wheels come from PyPI with pip, as CI installs everything else; where PyPI cannot be
reached the tests skip, saying so."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import conformance
import trtopt

WHEELS = {"rapidocr-onnxruntime": "1.4.4", "faster-whisper": "1.2.1"}
# name -> (file inside the wheels, input shapes); the rest of each model's inputs as declared
MODELS = {
    "ppocr-cls": (
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        {"x": [2, 3, 48, 192]},
    ),
    "ppocr-det": (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        {"x": [1, 3, 320, 320]},
    ),
    "ppocr-rec": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", {"x": [1, 3, 48, 320]}),
    "silero-vad": (
        "faster_whisper/assets/silero_vad_v6.onnx",
        {"input": [1, 576], "state": [2, 1, 128]},
    ),
}
# Every exact pass alone on the small ones; the default chain on all.
EVERY_PASS = {"ppocr-cls", "silero-vad"}


@pytest.fixture(scope="session")
def public_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models, unpacked from wheels kept in a folder every test worker shares
    ($TRTOPT_TEST_WHEELS, else the temporary folder); a wheel missing there is downloaded
    and moved in whole, so workers never see half a file."""
    shared = Path(
        os.environ.get("TRTOPT_TEST_WHEELS") or Path(tempfile.gettempdir()) / "trtopt-test-wheels"
    )
    shared.mkdir(parents=True, exist_ok=True)
    mine = tmp_path_factory.mktemp("wheels")
    for name, version in WHEELS.items():
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        if any(shared.glob(pattern)):
            continue
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                str(mine),
                f"{name}=={version}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:
            pytest.skip(f"cannot download {name} {version} from PyPI: {done.stderr.strip()[-200:]}")
        for wheel in mine.glob(pattern):
            os.replace(wheel, shared / wheel.name)
    models = mine / "models"
    for name, version in WHEELS.items():
        (wheel,) = shared.glob(f"{name.replace('-', '_')}-{version}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(models, [n for n in archive.namelist() if n.endswith(".onnx")])
    return models


def _feed(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for info in session.get_inputs():
        if info.name == "sr":  # the detector's sample rate
            feed[info.name] = np.array(16000, dtype=np.int64)
            continue
        shape = shapes.get(info.name) or [d if isinstance(d, int) else 1 for d in info.shape]
        feed[info.name] = rng.random(shape, dtype=np.float32)
    return feed


def _chains(name: str) -> dict:
    every = conformance.chains()
    return every if name in EVERY_PASS else {"default": every["default"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_public_pretrained_models_keep_their_outputs_through_every_pass(public_models, name):
    relative, shapes = MODELS[name]
    model = onnx.load(str(public_models / relative))
    feed = _feed(model, shapes)
    expected = conformance.run_feed(model, feed)
    for chain, passes in _chains(name).items():
        optimized = trtopt.optimize(model, passes=passes, verify=False)
        onnx.checker.check_model(optimized)
        got = conformance.run_feed(optimized, feed)
        assert all(conformance.same(a, b) for a, b in zip(expected, got)), f"{name}: {chain}"
        if chain == "default":
            # Paddle's exports carry their scale/shape arithmetic; the detector is already lean.
            fewer = len(optimized.graph.node) < len(model.graph.node)
            assert fewer or name == "silero-vad"
            # The declared output shapes survive (PaddleOCR's -1 batch dim included).
            assert [o.type for o in optimized.graph.output] == [o.type for o in model.graph.output]
