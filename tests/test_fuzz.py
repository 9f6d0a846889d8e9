"""Fuzzing the loaders with hypothesis: random YAML structures for recipes, truncated and
bit-flipped protobufs for models. Every case loads or ends in a clean exit-2 error."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trtopt
from helpers import MODELS, ROOT, run_cli
from trtopt import ModelError, TrtoptError
from trtopt.model import load_model

MODEL_BYTES = (MODELS / "cnn_legacy.onnx").read_bytes()
FUZZ = settings(
    max_examples=60,
    deadline=10_000,  # a hang shows up as a deadline error
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KEYS = st.sampled_from(
    [
        "name",
        "model",
        "passes",
        "inputs",
        "build",
        "check",
        "data",
        "output",
        "extends",
        "plugins",
        "cache",
        "backend",
        "samples",
        "shape",
        "range",
        "fold-constants",
        "cleanup",
        "dims",
        "thresholds",
        "npz",
        "dir",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | KEYS
)
TREES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEYS | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)


def _expect_clean(path) -> None:
    try:
        trtopt.load_recipe(path)
    except TrtoptError as error:
        assert error.exit_code == 2, error
        assert str(error)


@FUZZ
@given(tree=TREES)
def test_random_yaml_structures(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("fuzz") / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    _expect_clean(path)


@FUZZ
@given(
    tree=st.dictionaries(KEYS, TREES, max_size=6),
    base=st.booleans(),
)
def test_random_sections_over_a_valid_recipe(tmp_path_factory, tree, base):
    folder = tmp_path_factory.mktemp("fuzz")
    recipe = {"name": "fuzz", "model": str(ROOT / "recipes" / "models" / "quickstart.onnx")}
    if base:
        recipe.update(tree)
    else:
        recipe = {**tree, **recipe}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    _expect_clean(folder / "recipe.yaml")


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("{}[]:-,'\"&*!|>%@`#? \n\tab1")), max_size=80))
def test_random_yaml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "recipe.yaml"
    path.write_text(text)
    _expect_clean(path)


def _expect_model_error(path) -> None:
    try:
        load_model(path)
    except ModelError as error:
        assert error.exit_code == 2 and str(path) in str(error)


@FUZZ
@given(keep=st.integers(0, len(MODEL_BYTES) - 1))
def test_truncated_models(tmp_path_factory, keep):
    path = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    path.write_bytes(MODEL_BYTES[:keep])
    _expect_model_error(path)


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(MODEL_BYTES) - 1), st.integers(0, 7)), min_size=1, max_size=8
    ),
    header=st.booleans(),
)
def test_bit_flipped_models(tmp_path_factory, flips, header):
    data = bytearray(MODEL_BYTES)
    for offset, bit in flips:
        # Half the cases aim at the first KiB, where the graph's structure lives.
        data[offset % 1024 if header else offset] ^= 1 << bit
    path = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    path.write_bytes(bytes(data))
    _expect_model_error(path)


def test_a_corrupt_model_through_the_cli_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(MODEL_BYTES[: len(MODEL_BYTES) // 3])
    result = run_cli("optimize", str(path), str(tmp_path / "out.onnx"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
