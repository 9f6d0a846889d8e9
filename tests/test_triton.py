"""Triton model repositories written from real compiles: every config.pbtxt is parsed with
Triton's own schema (tritonclient's model_config_pb2) and checked field by field against the
final ONNX graph it serves; a version is written once and never replaced; nothing in the
repository that trtopt did not write is changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from google.protobuf import text_format
from onnx import TensorProto, helper

import trtopt
from helpers import QUICKSTART, QUICKSTART_MODEL, ROOT, run_cli
from trtopt.deploy import model_config, write_model_repository
from trtopt.errors import EXIT_USER, RecipeError, UserError
from trtopt.feeds import declared_dim
from trtopt.recipe import DeploySpec, TritonOptions, load_recipe

FAST = [
    "check.samples=1",
    "check.latency_runs=0",
    "check.verify_passes=false",
    "check.golden=null",
]
PROFILE = (
    "inputs.pixel_values.profile={min: [1, 3, 32, 32], opt: [4, 3, 32, 32], max: [8, 3, 32, 32]}"
)
ODD_NAME = 'total "sum" \\ all'
"""An output name that text format must escape."""


def pb2():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2")


def parse(path: Path):
    """config.pbtxt read by Triton's own schema (an unknown field or a bad value raises)."""
    return text_format.Parse(path.read_text(), pb2().ModelConfig())


def assert_matches_model(config, graph: Path, batched: bool) -> None:
    """Names, data types and dims of every input and output, as the ONNX graph declares them:
    the batch dim left out when the model batches, -1 where a dim is dynamic, a tensor with no
    dims left declared [1]: reshaped to [] when batched (Triton's core refuses an empty reshape
    unbatched; its ONNX Runtime backend reads an unbatched [1] as the model's scalar)."""
    from tritonclient.utils import np_to_triton_dtype

    model = onnx.load(str(graph), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    for declared, values in ((config.input, inputs), (config.output, model.graph.output)):
        assert [t.name for t in declared] == [v.name for v in values]
        for tensor, value in zip(declared, values, strict=True):
            tensor_type = value.type.tensor_type
            numpy_type = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            want_type = "TYPE_" + np_to_triton_dtype(numpy_type)
            assert pb2().DataType.Name(tensor.data_type) == want_type, tensor.name
            shape = [declared_dim(d) for d in tensor_type.shape.dim]
            if batched:
                assert not isinstance(shape[0], int), tensor.name
                shape = shape[1:]
            dims = [d if isinstance(d, int) else -1 for d in shape]
            if dims:
                assert list(tensor.dims) == dims and not tensor.HasField("reshape")
            else:
                assert list(tensor.dims) == [1] and tensor.HasField("reshape") == batched
                assert not tensor.reshape.shape


def assert_triton_accepts(config) -> None:
    """What Triton's core checks when it loads a config (model_config_utils.cc)."""
    pairs = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}
    assert pairs[config.platform] == config.backend
    assert config.HasField("version_policy") and config.max_batch_size >= 0
    for size in config.dynamic_batching.preferred_batch_size:
        assert 0 < size <= config.max_batch_size
    if config.HasField("dynamic_batching"):
        assert config.max_batch_size > 0
    for tensor in (*config.input, *config.output):
        assert tensor.dims and all(d >= 1 or d == -1 for d in tensor.dims)
        if tensor.HasField("reshape") and not tensor.reshape.shape:
            assert config.max_batch_size > 0  # "scalar tensors are not supported"


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder under ``folder``, hidden ones included."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def ort_compile(tmp_path_factory) -> Path:
    """The quickstart recipe on ONNX Runtime, its batch dim given a profile (1..8, opt 4)."""
    out = tmp_path_factory.mktemp("ort") / "out"
    result = trtopt.compile(QUICKSTART, out, [*FAST, PROFILE], use_cache=False)
    assert result.exit_code == 0
    return out


@pytest.fixture(scope="module")
def rtx_compile(tmp_path_factory) -> Path:
    """The quickstart recipe built into a TensorRT for RTX engine on this CPU (batch 1..16)."""
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path_factory.mktemp("rtx") / "out"
    recipe = ROOT / "recipes" / "quickstart-rtx.yaml"
    result = trtopt.compile(recipe, out, FAST, use_cache=False)
    assert result.exit_code == 0
    return out


@pytest.fixture(scope="module")
def tokens_compile(tmp_path_factory) -> Path:
    """A model whose only dynamic dim is not a batch dim: tokens [2, n] -> a scalar sum, the
    values as FP16, the tokens shifted (INT64)."""
    folder = tmp_path_factory.mktemp("tokens")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["tokens"], ["values"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["values"], [ODD_NAME], keepdims=0),
            helper.make_node("Cast", ["values"], ["half"], to=TensorProto.FLOAT16),
            helper.make_node("Add", ["tokens", "five"], ["shifted"]),
        ],
        "tokens",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [2, "n"])],
        [
            helper.make_tensor_value_info(ODD_NAME, TensorProto.FLOAT, []),
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, [2, "n"]),
            helper.make_tensor_value_info("shifted", TensorProto.INT64, [2, "n"]),
        ],
        [helper.make_tensor("five", TensorProto.INT64, [], [5])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), folder / "m.onnx"
    )
    recipe = {
        "name": "tokens",
        "model": "m.onnx",
        "inputs": {"tokens": {"range": [0, 9]}},
        "passes": ["cleanup"],
        "check": {"samples": 1, "latency_runs": 0, "dims": {"n": 3}},
    }
    (folder / "tokens.yaml").write_text(yaml.safe_dump(recipe))
    result = trtopt.compile(folder / "tokens.yaml", folder / "out", use_cache=False)
    assert result.exit_code == 0
    return folder / "out"


def test_an_onnxruntime_compile_is_served_on_cpus_batched_as_its_profile_says(
    ort_compile, tmp_path
):
    repo = tmp_path / "repo"
    model = write_model_repository(ort_compile, repo)
    assert (model.version, model.version_dir) == (1, repo / "quickstart" / "1")
    assert listing(repo).keys() == {
        "quickstart",
        "quickstart/config.pbtxt",
        "quickstart/1",
        "quickstart/1/model.onnx",
    }
    config = parse(model.config_path)
    assert_triton_accepts(config)
    assert (config.name, config.platform, config.backend) == (
        "quickstart",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.max_batch_size == 8  # the profile's max batch
    assert list(config.dynamic_batching.preferred_batch_size) == [4]  # its opt batch
    assert config.version_policy.latest.num_versions == 1
    assert config.default_model_filename == "model.onnx"
    assert config.optimization.graph.level == 0  # graph_optimization_level: all
    (group,) = config.instance_group
    assert pb2().ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU" and group.count == 1
    assert_matches_model(config, ort_compile / "model.onnx", batched=True)
    served = model.version_dir / "model.onnx"
    assert served.read_bytes() == (ort_compile / "model.onnx").read_bytes()
    session = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    batch = np.zeros((config.max_batch_size, *config.input[0].dims), np.float32)
    (logits,) = session.run(None, {"pixel_values": batch})
    assert logits.shape == (config.max_batch_size, *config.output[0].dims)


def test_a_tensorrt_rtx_engine_is_a_plan_on_gpus_batched_as_its_profile_says(rtx_compile, tmp_path):
    repo = tmp_path / "repo"
    model = write_model_repository(rtx_compile, repo)
    config = parse(model.config_path)
    assert_triton_accepts(config)
    assert (config.name, config.platform, config.backend) == (
        "quickstart-rtx",
        "tensorrt_plan",
        "tensorrt",
    )
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.default_model_filename == "model.plan"
    (group,) = config.instance_group
    assert pb2().ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
    assert_matches_model(config, rtx_compile / "model.onnx", batched=True)
    assert model.files == ("model.plan",)
    plan = (model.version_dir / "model.plan").read_bytes()
    assert plan == (rtx_compile / "model.engine").read_bytes()
    # Stock Triton cannot load a TensorRT for RTX plan: the config and the result say so.
    assert "TensorRT for RTX" in model.config.notes[0]
    assert "# A TensorRT for RTX" in model.config_path.read_text()

    # The same compile's final ONNX graph, on Triton's ONNX Runtime backend instead.
    onnx_model = write_model_repository(
        rtx_compile, repo, TritonOptions(name="quickstart-onnx", serve="onnx")
    )
    config = parse(onnx_model.config_path)
    assert (config.platform, config.max_batch_size) == ("onnxruntime_onnx", 16)
    assert pb2().ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"
    served = (onnx_model.version_dir / "model.onnx").read_bytes()
    assert served == (rtx_compile / "model.onnx").read_bytes()


def test_engine_options_the_engine_cannot_honour_are_errors_before_anything_is_written(
    rtx_compile, tmp_path
):
    repo = tmp_path / "repo"
    with pytest.raises(RecipeError) as error:
        write_model_repository(rtx_compile, repo, TritonOptions(max_batch_size=32))
    assert error.value.place == "deploy.triton.max_batch_size"
    assert "(16)" in error.value.message
    cpu = TritonOptions.model_validate({"instances": {"kind": "cpu"}})
    with pytest.raises(RecipeError) as error:
        write_model_repository(rtx_compile, repo, cpu)
    assert error.value.place == "deploy.triton.instances.kind"
    assert not repo.exists()


def with_report(folder: Path, change) -> Path:
    """A copy of a compile's output whose report.json ``change(report)`` edited."""
    report = json.loads((folder / "report.json").read_text())
    change(report)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_the_batch_limit_comes_from_the_profiles_or_from_tritons_own_default(ort_compile, tmp_path):
    def profile(low: int | None):
        def change(report):
            shapes = {"min": low, "opt": 4, "max": 8}
            report["recipe"]["inputs"]["pixel_values"]["profile"] = low and {
                which: [batch, 3, 32, 32] for which, batch in shapes.items()
            }

        return change

    unbounded = with_report(shutil.copytree(ort_compile, tmp_path / "a"), profile(None))
    config = model_config(unbounded)
    assert (config.max_batch_size, config.preferred_batch_sizes) == (4, ())
    assert "as Triton's ONNX Runtime backend would pick" in config.notes[0]
    from_two = with_report(shutil.copytree(ort_compile, tmp_path / "b"), profile(2))
    config = model_config(from_two)
    assert config.max_batch_size == 0 and not config.dynamic_batching
    assert config.inputs[0].dims == (-1, 3, 32, 32)  # the batch dim stays, dynamic
    assert "no optimization profile takes batch 1" in config.notes[0]
    assert "# Served unbatched" in config.text()


def test_the_onnxruntime_build_settings_reach_tritons_onnxruntime_backend(ort_compile, tmp_path):
    def settings(report):
        report["recipe"]["build"]["onnxruntime"].update(
            graph_optimization_level="extended", intra_op_threads=2
        )

    out = with_report(shutil.copytree(ort_compile, tmp_path / "out"), settings)
    config = parse(write_model_repository(out, tmp_path / "repo").config_path)
    assert config.optimization.graph.level == 1  # onnxruntime_backend: 1 is extended
    assert dict(config.parameters).keys() == {"intra_op_thread_count"}
    assert config.parameters["intra_op_thread_count"].string_value == "2"


def test_gpu_providers_serve_on_gpus_with_tensorrt_as_triton_names_it(ort_compile, tmp_path):
    def providers(report):
        report["recipe"]["build"]["onnxruntime"]["providers"] = ["tensorrt", "cuda", "cpu"]

    out = with_report(shutil.copytree(ort_compile, tmp_path / "out"), providers)
    config = parse(write_model_repository(out, tmp_path / "repo").config_path)
    assert config.instance_group[0].kind == pb2().ModelInstanceGroup.KIND_GPU
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {"precision_mode": "FP32"}
    cpu_only = parse(write_model_repository(ort_compile, tmp_path / "cpu").config_path)
    assert cpu_only.instance_group[0].kind == pb2().ModelInstanceGroup.KIND_CPU
    assert not cpu_only.optimization.execution_accelerators.gpu_execution_accelerator


def test_a_datacenter_engine_config_names_the_tensorrt_that_serves_it(rtx_compile, tmp_path):
    # Datacenter TensorRT cannot be installed here: the RTX compile's report stands in for one.
    def datacenter(report):
        report["build"]["backend"] = "tensorrt"
        report["build"]["tensorrt"]["version"] = "10.13.0.35"
        report["recipe"]["build"]["tensorrt"]["version_compatible"] = True

    out = with_report(shutil.copytree(rtx_compile, tmp_path / "out"), datacenter)
    model = write_model_repository(out, tmp_path / "repo")
    config = parse(model.config_path)
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 16)
    text = model.config_path.read_text()
    assert "# Built with TensorRT 10.13.0.35" in text
    assert "--backend-config=tensorrt,version-compatible=true" in text
    assert "TensorRT for RTX" not in text


def test_a_dynamic_dim_that_is_not_a_batch_dim_serves_unbatched(tokens_compile, tmp_path):
    model = write_model_repository(tokens_compile, tmp_path / "repo")
    config = parse(model.config_path)
    assert_triton_accepts(config)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert_matches_model(config, tokens_compile / "model.onnx", batched=False)
    tokens, total, half, shifted = (*config.input, *config.output)
    assert list(tokens.dims) == [2, -1] and list(half.dims) == [2, -1]
    assert total.name == ODD_NAME and list(total.dims) == [1] and not total.HasField("reshape")
    assert [pb2().DataType.Name(t.data_type) for t in (tokens, total, half, shifted)] == [
        "TYPE_INT64",
        "TYPE_FP32",
        "TYPE_FP16",
        "TYPE_INT64",
    ]
    with pytest.raises(RecipeError, match="cannot batch, the first dim of 'tokens' is fixed"):
        model_config(tokens_compile, TritonOptions(max_batch_size=4))


def test_each_deploy_is_the_next_version_and_what_trtopt_did_not_write_stays(ort_compile, tmp_path):
    repo = tmp_path / "repo"
    foreign = {
        "README.md": b"our models\n",
        "quickstart/labels.txt": b"cat\ndog\n",
        "other/config.pbtxt": b'name: "other"\n',
        "other/1/model.onnx": b"not ours",
    }
    for name, data in foreign.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)

    first = write_model_repository(ort_compile, repo)
    before = listing(first.version_dir)
    two = TritonOptions.model_validate({"instances": {"count": 2}, "version_policy": "all"})
    second = write_model_repository(ort_compile, repo, two)

    assert (first.version, second.version) == (1, 2)
    assert listing(first.version_dir) == before  # version 1 is untouched
    files = listing(repo)
    assert {name: files[name] for name in foreign} == foreign
    assert sorted(n for n in files if n.startswith("quickstart/") and "/" not in n[11:]) == [
        "quickstart/1",
        "quickstart/2",
        "quickstart/config.pbtxt",
        "quickstart/labels.txt",
    ]  # no staging folder or temporary config left behind
    config = parse(second.config_path)  # replaced by the second deploy's
    assert config.instance_group[0].count == 2 and config.version_policy.HasField("all")


def test_a_fixed_version_that_exists_is_never_replaced(ort_compile, tmp_path):
    repo = tmp_path / "repo"
    three = write_model_repository(ort_compile, repo, TritonOptions(version=3))
    assert three.version_dir == repo / "quickstart" / "3"
    (repo / "quickstart" / "5").mkdir()  # someone's empty version folder
    before = listing(repo)
    for version in (3, 5):
        with pytest.raises(UserError) as error:
            write_model_repository(ort_compile, repo, TritonOptions(version=version))
        assert error.value.exit_code == EXIT_USER
        assert str(repo / "quickstart" / str(version)) in error.value.message
        assert error.value.place == "deploy.triton.version"
    assert listing(repo) == before
    assert write_model_repository(ort_compile, repo).version == 6


def test_a_config_trtopt_did_not_write_is_never_replaced(ort_compile, tmp_path):
    mine = tmp_path / "repo" / "quickstart" / "config.pbtxt"
    mine.parent.mkdir(parents=True)
    mine.write_text('name: "quickstart"\nplatform: "onnxruntime_onnx"\n')
    before = listing(tmp_path / "repo")
    with pytest.raises(UserError, match="not written by trtopt") as error:
        write_model_repository(ort_compile, tmp_path / "repo")
    assert error.value.place == str(mine)
    assert listing(tmp_path / "repo") == before


def test_only_a_finished_compile_that_passed_is_deployed(ort_compile, tmp_path):
    failed = shutil.copytree(ort_compile, tmp_path / "failed")
    report = json.loads((failed / "report.json").read_text())
    (failed / "report.json").write_text(json.dumps({**report, "verdict": "fail", "exit_code": 1}))
    with pytest.raises(UserError, match="did not pass") as error:
        write_model_repository(failed, tmp_path / "repo")
    assert error.value.place == str(failed / "report.json")
    with pytest.raises(UserError, match=r"no report\.json"):
        write_model_repository(tmp_path, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_an_onnx_model_with_external_data_is_served_as_a_folder(ort_compile, tmp_path):
    out = shutil.copytree(ort_compile, tmp_path / "out")
    model = onnx.load(str(out / "model.onnx"))
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=True, location="weights.bin")
    written = write_model_repository(out, tmp_path / "repo")
    assert written.files == ("model.onnx/model.onnx", "model.onnx/weights.bin")
    assert parse(written.config_path).default_model_filename == "model.onnx"
    served = written.version_dir / "model.onnx" / "model.onnx"
    session = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixel_values": np.zeros((2, 3, 32, 32), np.float32)})
    assert logits.shape == (2, 10)


def test_the_recipe_deploy_section(write_recipe, tmp_path):
    recipe = {
        "name": "q",
        "model": str(QUICKSTART_MODEL),
        "deploy": {"triton": {"repository": "models", "version_policy": [1, 3]}},
    }
    loaded = load_recipe(write_recipe(recipe))
    triton = loaded.deploy.triton
    assert triton.repository == str(tmp_path / "models")  # relative to the recipe
    assert triton.version_policy == [1, 3] and triton.serve == "artifact"
    recipe["deploy"]["triton"]["max_batch"] = 4
    path = write_recipe(recipe)
    with pytest.raises(RecipeError, match="did you mean 'max_batch_size'") as error:
        load_recipe(path)
    lines = path.read_text().splitlines()
    assert error.value.place.line == 1 + next(i for i, s in enumerate(lines) if "max_batch:" in s)
    del recipe["deploy"]["triton"]["max_batch"]
    recipe["deploy"]["triton"]["instances"] = {"kind": "cpu", "gpus": [0]}
    with pytest.raises(RecipeError, match="names GPUs"):
        load_recipe(write_recipe(recipe))


def test_the_readme_shows_every_deploy_option_as_the_schema_takes_it():
    section = (ROOT / "README.md").read_text().split("## Serving with Triton")[1]
    shown = yaml.safe_load(section.split("```yaml\n")[1].split("```")[0])["deploy"]
    assert set(shown["triton"]) == set(TritonOptions.model_fields)
    assert DeploySpec.model_validate(shown).triton == TritonOptions(repository="../models")


def test_a_passing_compile_deploys_itself_and_a_cache_hit_deploys_a_new_version(tmp_path):
    repo = tmp_path / "repo"
    sets = [*FAST, f"deploy={{triton: {{repository: {json.dumps(str(repo))}}}}}"]
    cache = tmp_path / "cache"
    first = trtopt.compile(QUICKSTART, tmp_path / "out", overrides=sets, cache_dir=cache)
    assert first.exit_code == 0
    deployed = first.report["deploy"]["triton"]
    assert deployed["version"] == 1 and (repo / "quickstart" / "1" / "model.onnx").is_file()
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["deploy"] == first.report["deploy"]
    again = trtopt.compile(QUICKSTART, tmp_path / "out", overrides=sets, cache_dir=cache)
    assert again.report["cache"]["compile"] == "hit"
    assert again.report["deploy"]["triton"]["version"] == 2
    parse(repo / "quickstart" / "config.pbtxt")


def test_a_failing_compile_deploys_nothing(tmp_path):
    repo = tmp_path / "repo"
    sets = [
        *FAST,
        "check.thresholds={max_abs: 0.0, min_cosine: 1.0}",
        "passes=[{precision: {dtype: fp16}}]",
        f"deploy={{triton: {{repository: {json.dumps(str(repo))}}}}}",
    ]
    result = trtopt.compile(QUICKSTART, tmp_path / "out", overrides=sets, use_cache=False)
    assert result.exit_code == 1 and "deploy" not in result.report
    assert not repo.exists()


def test_trtopt_deploy_writes_a_compiled_recipe(tmp_path):
    out = tmp_path / "out"
    assert trtopt.compile(QUICKSTART, out, overrides=FAST, use_cache=False).exit_code == 0
    repo = tmp_path / "repo"
    done = run_cli("deploy", str(QUICKSTART), "--triton", str(repo), "--artifact", str(out))
    assert done.returncode == 0, done.stderr
    assert "quickstart/1" in done.stdout
    parse(tmp_path / "repo" / "quickstart" / "config.pbtxt")
    missing = run_cli("deploy", str(QUICKSTART), "--artifact", str(out))
    assert missing.returncode == EXIT_USER and "--triton REPO" in missing.stderr
