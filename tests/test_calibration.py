"""Calibration: every data source kind, validation errors, the calibrators, streaming with
grouped tensor exposure, and the range caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from helpers import DIMS, MODELS, RANGES
from trtopt import feeds
from trtopt.calibration import (
    AbsHistogram,
    DataSet,
    DataSource,
    calibrate,
    compute_amax,
    model_digest,
    split,
    split_graph,
)
from trtopt.calibration.cache import read_tensorrt_cache, tensorrt_cache
from trtopt.calibration.collect import SMALL_INITIALIZER, collect, groups
from trtopt.errors import EXIT_USER, DataError

CNN = MODELS / "cnn_legacy.onnx"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTOPT_CACHE_DIR", str(tmp_path / "cache"))


def cnn_inputs():
    return feeds.model_inputs(onnx.load(str(CNN)))


def dataset(source: dict, **kwargs) -> DataSet:
    return DataSet(DataSource.model_validate(source), cnn_inputs(), DIMS, RANGES, **kwargs)


def images(rng, n):
    return rng.random((n, 3, 32, 32), dtype=np.float32)


# -- sources ---------------------------------------------------------------------------------


def test_npz_glob_yields_one_feed_per_file_and_limit_counts_samples(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(tmp_path / f"batch{i}.npz", pixel_values=images(rng, 4))
    data = dataset({"npz": str(tmp_path / "*.npz"), "limit": 10})
    got = list(data.feeds())
    assert [f["pixel_values"].shape[0] for f in got] == [4, 4, 2]


def test_npy_folder_is_memory_mapped_and_batched(tmp_path):
    rng = np.random.default_rng(0)
    array = images(rng, 7)
    np.save(tmp_path / "pixel_values.npy", array)
    got = list(dataset({"npy": str(tmp_path), "batch": 3}).feeds())
    assert [f["pixel_values"].shape[0] for f in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([f["pixel_values"] for f in got]), array)


def test_npy_folder_missing_input_names_the_file(tmp_path):
    np.save(tmp_path / "pixels.npy", np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(DataError, match=r"missing pixel_values\.npy.*\['pixels'\]"):
        dataset({"npy": str(tmp_path)}).first()


def test_image_folder_applies_declared_preprocessing(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    for i in range(3):
        pixels = np.full((40, 60, 3), (10 * i, 100, 200), dtype=np.uint8)
        image_mod.fromarray(pixels).save(tmp_path / f"img{i}.png")
    spec = {
        "folder": str(tmp_path),
        "resize": 32,
        "crop": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    got = list(dataset({"images": spec, "batch": 2}).feeds())
    assert [f["pixel_values"].shape for f in got] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    first = got[0]["pixel_values"][0]
    np.testing.assert_allclose(
        first[:, 5, 5], (np.array([0, 100, 200]) / 255 - 0.5) / 0.5, atol=1e-6
    )
    nhwc = DataSet(
        DataSource.model_validate({"images": {**spec, "layout": "NHWC"}}),
        [feeds.InputInfo("pixel_values", np.dtype(np.float32), ("batch", 32, 32, 3))],
    )
    assert nhwc.first()["pixel_values"].shape == (1, 32, 32, 3)


def test_image_folder_without_resize_of_mismatched_sizes_is_a_data_error(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    image_mod.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    image_mod.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match="declare resize and crop"):
        list(dataset({"images": {"folder": str(tmp_path)}, "batch": 2}).feeds())


def test_script_load_data_yields_feeds(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    for i in range(3):\n"
        "        yield {'pixel_values': np.full((2, 3, 32, 32), i, np.float32)}\n"
    )
    got = list(dataset({"script": str(script)}).feeds())
    assert [float(f["pixel_values"].max()) for f in got] == [0.0, 1.0, 2.0]


def test_script_without_load_data_is_a_data_error(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text("x = 1\n")
    with pytest.raises(DataError, match=r"no function load_data\(\)") as error:
        dataset({"script": str(script)}).first()
    assert error.value.exit_code == EXIT_USER


def test_synthetic_source_yields_limit_samples():
    data = dataset({"synthetic": {"seed": 1}, "limit": 5})
    assert data.synthetic
    assert sum(f["pixel_values"].shape[0] for f in data.feeds()) == 5


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        ({"pixels": np.zeros((1, 3, 32, 32), np.float32)}, "input names do not match"),
        ({"pixel_values": np.zeros((1, 3, 32, 32), np.float64)}, "dtype float64"),
        ({"pixel_values": np.zeros((1, 3, 16, 32), np.float32)}, r"shape \[1, 3, 16, 32\]"),
    ],
)
def test_bad_data_fails_before_any_work(tmp_path, feed, message):
    np.savez(tmp_path / "bad.npz", **feed)
    with pytest.raises(DataError, match=message):
        dataset({"npz": str(tmp_path / "bad.npz")}).first()


def test_two_kinds_in_one_source_is_rejected():
    with pytest.raises(ValueError, match="one data source kind"):
        DataSource.model_validate({"npz": "a.npz", "npy": "b"})


def test_fingerprint_follows_the_content(tmp_path):
    np.savez(tmp_path / "a.npz", pixel_values=np.zeros((1, 3, 32, 32), np.float32))
    first = dataset({"npz": str(tmp_path / "a.npz")}).fingerprint()
    assert dataset({"npz": str(tmp_path / "a.npz")}).fingerprint() == first
    np.savez(tmp_path / "a.npz", pixel_values=np.ones((1, 3, 32, 32), np.float32))
    assert dataset({"npz": str(tmp_path / "a.npz")}).fingerprint() != first


# -- calibrators -----------------------------------------------------------------------------


def test_streamed_histogram_equals_one_shot_histogram():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(5000) * scale for scale in (0.1, 1.0, 7.0, 0.5)]
    streamed = AbsHistogram(256)
    for batch in batches:
        streamed.update(batch)
    values = np.abs(np.concatenate(batches))
    expected, _ = np.histogram(values, bins=256, range=(0, streamed.top))
    # Re-binning after growth is exact: merged bins hold exactly the values of their range.
    assert streamed.counts.sum() == values.size
    assert streamed.amax == pytest.approx(values.max())
    assert np.abs(streamed.counts - expected).sum() <= 2 * 4  # float edge rounding only


def test_calibrators_on_a_gaussian_with_outliers():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(200_000), [40.0, -35.0]])
    hist = AbsHistogram()
    hist.update(values)
    assert compute_amax(hist, "minmax") == pytest.approx(40.0)
    assert 3.0 < compute_amax(hist, "percentile", percentile=99.9) < 3.6
    assert 2.0 < compute_amax(hist, "entropy") < 10.0  # clips the outliers, keeps the bulk
    # MSE weighs two far outliers against the rounding error of 200k values: some clipping.
    assert 3.0 < compute_amax(hist, "mse") < 40.0


def test_entropy_ignores_the_zero_spike_of_a_relu():
    rng = np.random.default_rng(0)
    hist = AbsHistogram()
    hist.update(np.maximum(rng.standard_normal(200_000), 0.0))
    assert compute_amax(hist, "entropy") > 2.5


def _entropy_reference(hist: AbsHistogram, levels: int = 128) -> float:
    """TensorRT's entropy calibration written as its published loop, one threshold at a time
    (pytorch-quantization's ``_compute_amax_entropy``, stride 1, stopping at the last
    occupied bin): the vectorized calibrator must pick the same threshold."""
    counts = hist.counts.astype(np.float64)
    counts[0] = counts[1]
    last = int(np.nonzero(counts)[0][-1]) + 1
    stop = max(min(hist.bins, last), levels)
    best_i, best_kl = stop, np.inf
    for i in range(levels, stop + 1):
        p = counts[:i].copy()
        p[i - 1] += counts[i:].sum()
        nonzero = counts[:i] > 0
        # `levels` groups of i // levels bins, the remainder joining the last group; each
        # group's mass spread evenly over its occupied bins.
        starts = np.arange(levels) * (i // levels)
        mass = np.add.reduceat(counts[:i], starts)
        support = np.add.reduceat(nonzero.astype(np.float64), starts)
        group = np.minimum(np.arange(i) // (i // levels), levels - 1)
        q = np.where(nonzero, mass[group] / np.maximum(support[group], 1), 0.0)
        p /= p.sum()
        q /= max(q.sum(), 1e-300)
        q[(p > 0) & (q == 0)] = 1e-4
        kl = float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
        # Strict `<` keeps the first of equal divergences; "equal" up to float rounding, as
        # the sums of the two implementations round differently.
        if best_kl == np.inf or kl < best_kl - 1e-12 * max(1.0, abs(best_kl)):
            best_i, best_kl = i, kl
    return float(min(hist.edges[best_i], hist.amax))


@pytest.mark.parametrize("seed", range(6))
def test_entropy_picks_the_threshold_of_tensorrts_loop(seed):
    rng = np.random.default_rng(seed)
    samples = [
        np.maximum(rng.standard_normal(50_000), 0.0),  # ReLU: the first-bin rule matters
        np.concatenate([rng.standard_normal(50_000), [40.0, -35.0]]),  # far outliers
        rng.standard_t(2, 20_000),  # heavy tails
        rng.exponential(1.0, 5_000),
        np.concatenate([np.zeros(500), rng.standard_normal(50) * 0.01, [5.0]]),  # empty bins
        rng.standard_normal(300) * 3.0,  # sparse: outliers land on empty bins
    ]
    hist = AbsHistogram(512)
    hist.update(samples[seed])
    assert compute_amax(hist, "entropy") == _entropy_reference(hist)


def test_entropy_at_full_resolution_matches_the_loop():
    rng = np.random.default_rng(7)
    hist = AbsHistogram()  # 2048 bins, as TensorRT
    hist.update(np.concatenate([rng.laplace(size=100_000), [25.0]]))
    assert compute_amax(hist, "entropy") == _entropy_reference(hist)


def test_histogram_skips_non_finite_values():
    hist = AbsHistogram(256)
    hist.update(np.array([1.0, -2.0, np.nan, np.inf, -np.inf, 0.5], dtype=np.float32))
    assert hist.total == 3 and hist.counts.sum() == 3 and hist.amax == 2.0
    hist.update(np.array([np.nan], dtype=np.float32))  # nothing finite: no change
    assert hist.total == 3


def test_all_zero_tensor_has_no_range():
    hist = AbsHistogram()
    hist.update(np.zeros(10))
    assert compute_amax(hist, "entropy") == 0.0


# -- streaming, groups, caches ---------------------------------------------------------------


def _tensors(model: onnx.ModelProto) -> list[str]:
    return [n.output[0] for n in model.graph.node]


def test_grouped_exposure_gives_the_same_ranges():
    model = onnx.load(str(CNN))
    names = _tensors(model)
    data = dataset({"synthetic": {}, "limit": 4})
    seen: dict[str, list[int]] = {}

    def observe(name, array):
        seen.setdefault(name, []).append(array.shape[0])

    collect(model, data, names, observe, memory_budget=64 << 10)  # forces several groups
    assert set(seen) == set(names)
    assert all(len(v) == 4 for v in seen.values())  # every tensor saw every feed once
    whole = calibrate(model, data, names, "minmax", use_cache=False).ranges
    grouped = calibrate(model, data, names, "minmax", use_cache=False, memory_budget=1 << 16)
    assert grouped.ranges == pytest.approx(whole)


def test_batch_shapes_size_the_groups():
    """Sizes come from the first feed's shapes: a symbolic batch dim is not guessed large
    (which split the tensors into needless groups, each a pass over the data)."""
    model = onnx.load(str(CNN))
    names = _tensors(model)
    exact = groups(model, names, 4 << 20, {"pixel_values": (1, 3, 32, 32)})
    assert exact == [names]  # every tensor at batch 1 is well under 4 MiB in all
    assert len(groups(model, names, 4 << 20)) > 1  # guessed sizes of symbolic dims


def test_weights_are_fed_not_copied_into_the_session():
    model = onnx.load(str(CNN))
    light, weights = split(model)
    large = {t.name for t in model.graph.initializer if t.ByteSize() > SMALL_INITIALIZER}
    assert large and set(weights) == large
    assert not large & {t.name for t in light.graph.initializer}
    assert large <= {i.name for i in light.graph.input}
    names = _tensors(model)
    data = dataset({"synthetic": {}, "limit": 3})
    whole = calibrate(model, data, names, "entropy", use_cache=False).ranges
    fed = calibrate(light, data, names, "entropy", use_cache=False, weights=weights).ranges
    assert fed == whole
    # The cache key covers the weights' values, not only the graph that names them.
    changed = {**weights, next(iter(weights)): next(iter(weights.values())) * 2}
    assert model_digest(light, weights) != model_digest(light, changed)


def test_split_graph_shares_the_graphs_arrays():
    graph = gs.import_onnx(onnx.load(str(CNN)))
    light, weights = split_graph(graph)
    constants = {t.name: t for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    assert weights and all(weights[n] is constants[n].values for n in weights)
    assert not {t.name for t in light.graph.initializer} & set(weights)
    assert all(isinstance(t, gs.Constant) for t in (constants[n] for n in weights))  # untouched
    data = dataset({"synthetic": {}, "limit": 2})
    names = _tensors(onnx.load(str(CNN)))
    whole = calibrate(onnx.load(str(CNN)), data, names, "minmax", use_cache=False).ranges
    fed = calibrate(light, data, names, "minmax", use_cache=False, weights=weights).ranges
    assert fed == whole


def test_weights_numpy_cannot_feed_stay_initializers():
    import ml_dtypes

    rng = np.random.default_rng(0)
    h = onnx.helper
    w32 = onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w32")
    bf16 = rng.standard_normal((64, 64)).astype(ml_dtypes.bfloat16)
    w16 = onnx.numpy_helper.from_array(bf16, "w16")
    graph = h.make_graph(
        [
            h.make_node("MatMul", ["x", "w32"], ["y"]),
            h.make_node("Cast", ["w16"], ["c"], to=onnx.TensorProto.FLOAT),
            h.make_node("MatMul", ["y", "c"], ["z"]),
        ],
        "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["batch", 64])],
        [w32, w16],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    data = DataSet(
        DataSource(synthetic={}, limit=2), feeds.model_inputs(model), {"batch": 1}, {"x": (0, 1)}
    )
    whole = calibrate(model, data, ["y", "c", "z"], "minmax", use_cache=False).ranges
    for light, weights in (split(model), split_graph(gs.import_onnx(model))):
        assert set(weights) == {"w32"}
        assert [t.name for t in light.graph.initializer] == ["w16"]
        fed = calibrate(light, data, ["y", "c", "z"], "minmax", use_cache=False, weights=weights)
        assert fed.ranges == whole


def test_range_cache_hit_and_miss(tmp_path):
    model = onnx.load(str(CNN))
    names = _tensors(model)[:3]
    data = dataset({"synthetic": {}, "limit": 2})
    first = calibrate(model, data, names, "entropy", cache_dir=tmp_path)
    assert not first.cached and first.cache_file and first.cache_file.is_file()
    second = calibrate(model, data, names, "entropy", cache_dir=tmp_path)
    assert second.cached and second.ranges == first.ranges
    # settings are in the key
    assert not calibrate(model, data, names, "minmax", cache_dir=tmp_path).cached
    other = dataset({"synthetic": {"seed": 9}, "limit": 2})
    assert not calibrate(model, other, names, "entropy", cache_dir=tmp_path).cached  # so is data
    # Outside a compile, nothing is cached unless the caller names a folder.
    assert calibrate(model, data, names, "entropy").cache_file is None


def test_tensorrt_calibration_cache_format():
    text = tensorrt_cache({"x": 12.7, "y": 1.27})
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert lines[1] == "x: 3dcccccd"  # 0.1 as big-endian float32 bits
    assert read_tensorrt_cache(text) == pytest.approx({"x": 12.7, "y": 1.27})


def test_calibration_folder_of_recipe_is_relative_to_it(write_recipe, tmp_path):
    from trtopt.recipe import load_recipe

    path = write_recipe(
        {
            "name": "r",
            "model": str(CNN),
            "data": {"calibration": {"npz": "calib/*.npz"}, "validation": {"npy": "val"}},
            "check": {"data": {"script": "load.py"}},
        }
    )
    recipe = load_recipe(path)
    assert recipe.data.calibration.npz == str(Path(tmp_path) / "calib/*.npz")
    assert recipe.data.validation.npy == str(Path(tmp_path) / "val")
    assert recipe.check.data.script == str(Path(tmp_path) / "load.py")
