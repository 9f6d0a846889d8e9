"""The recipe format: a pydantic schema, YAML loading with places, `extends:` and `--set`."""

from __future__ import annotations

import ast
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .calibration.source_specs import DataSource
from .docstrings import describe_fields
from .errors import Place, RecipeError, did_you_mean
from .metrics import DEFAULT_QUANTILE, DEFAULT_TOP_K, METRICS
from .passes import available_passes, get_pass, load_plugin
from .positions import Document, KeyPath
from .recipe_yaml import input_paths, load_document, output_folder

MAX_ERRORS_SHOWN = 5
MAX_THREADS = 1024
"""Most ONNX Runtime threads a recipe may ask for: more only exhausts the machine."""
SEED_LIMIT = 2**32
"""Seeds are NumPy's: 0 <= seed < 2**32."""

Dim = Annotated[int, Field(ge=1)] | Annotated[str, Field(min_length=1)]
TopK = Annotated[int, Field(ge=1)]
"""k of a top-k agreement."""
Quantile = Annotated[float, Field(gt=0, lt=1)]
"""A quantile strictly between 0 and 1."""


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors. Validators are built when a
    section is first validated (``defer_build``), not as the class is made: a command that
    reads no recipe does not pay for them."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=describe_fields, defer_build=True)


class ProfileSpec(Strict):
    """One TensorRT optimization profile of an input: the shapes an engine accepts."""

    min: list[Annotated[int, Field(ge=0)]]
    """Smallest shape, e.g. [1, 3, 224, 224]."""
    opt: list[Annotated[int, Field(ge=0)]]
    """Shape TensorRT tunes for (and latency is measured at)."""
    max: list[Annotated[int, Field(ge=0)]]
    """Largest shape."""

    @model_validator(mode="after")
    def _ordered(self) -> ProfileSpec:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError("min, opt and max must have the same number of dims")
        if any(not a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise ValueError("every dim must satisfy min <= opt <= max")
        return self


class InputSpec(Strict):
    """Overrides for one model input."""

    shape: list[Dim] | None = None
    """Declared shape written into the optimized model; a string is a symbolic dim."""
    range: tuple[float, float] | None = None
    """Inclusive [low, high] of synthetic values: integers take both ends, e.g. [0, 30521]
    for the ids of a 30,522-token vocabulary; floats are uniform between them."""
    profile: ProfileSpec | None = None
    """TensorRT optimization profile (min/opt/max shapes) of a dynamic input."""
    profiles: list[ProfileSpec] = []
    """Several optimization profiles; the engine's i-th profile takes every input's i-th."""

    @field_validator("range")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None:
            low, high = value
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("range bounds must be finite numbers")
            if low > high:
                raise ValueError(f"range [{low}, {high}] is reversed: write [{high}, {low}]")
        return value

    @model_validator(mode="after")
    def _one_profile_form(self) -> InputSpec:
        if self.profile is not None and self.profiles:
            raise ValueError("give either `profile` or `profiles`, not both")
        for spec in self.profile_list():
            if self.shape is not None and len(spec.min) != len(self.shape):
                raise ValueError(
                    f"profile has {len(spec.min)} dims, the shape has {len(self.shape)}"
                )
        return self

    def profile_list(self) -> list[ProfileSpec]:
        return [self.profile] if self.profile is not None else list(self.profiles)


class CudaProviderOptions(Strict):
    """ONNX Runtime's CUDA execution provider (CUDAExecutionProvider, package
    onnxruntime-gpu)."""

    device_id: Annotated[int, Field(ge=0)] = 0
    """CUDA device the provider runs on."""
    cudnn_conv_algo_search: Literal["exhaustive", "heuristic", "default"] = "exhaustive"
    """How cuDNN picks a convolution algorithm: exhaustive benchmarks every one on the first
    run (ONNX Runtime's default), heuristic asks cuDNN's heuristics, default takes the
    implicit-GEMM algorithm without searching (least memory)."""
    tf32: bool = False
    """Allow TF32 for FP32 matmul/convolution (ONNX Runtime's use_tf32). Off: FP32 stays FP32,
    as the graph says (ONNX Runtime itself defaults to on)."""


class TensorrtProviderOptions(Strict):
    """ONNX Runtime's TensorRT execution provider (TensorrtExecutionProvider, package
    onnxruntime-gpu with TensorRT's libraries). Its own precision flags (trt_fp16_enable,
    trt_int8_enable) are always off and cannot be set: precision is in the graph (casts, Q/DQ),
    and those flags would let TensorRT lower FP32 layers behind the accuracy check's back."""

    device_id: Annotated[int, Field(ge=0)] = 0
    """CUDA device the provider runs on."""
    engine_cache_path: str | None = None
    """Folder of TensorRT engines the provider builds, reused by later sessions
    (trt_engine_cache_path); relative to the recipe. Null: engines are built anew by every
    session."""
    timing_cache_path: str | None = None
    """Folder of the provider's timing cache (trt_timing_cache_path); relative to the recipe.
    Null: no timing cache."""
    builder_optimization_level: Annotated[int, Field(ge=0, le=5)] | None = None
    """TensorRT builder optimization level 0-5 (trt_builder_optimization_level); null keeps
    the provider's (3)."""
    max_workspace_size: ByteSize | None = None
    """TensorRT workspace limit, e.g. 4GiB (trt_max_workspace_size); null: the provider's
    default (the device's memory)."""


ProviderName = Literal["tensorrt", "cuda", "cpu"]
"""An ONNX Runtime execution provider: tensorrt (TensorrtExecutionProvider), cuda
(CUDAExecutionProvider) or cpu (CPUExecutionProvider)."""


def _distinct(names: list[str]) -> list[str]:
    if not names:
        raise ValueError("name at least one provider, e.g. [cpu]")
    if len(set(names)) != len(names):
        raise ValueError(f"{names} names a provider twice")
    return names


class OnnxruntimeOptions(Strict):
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    """ONNX Runtime's own graph optimizations applied when the session is created."""
    intra_op_threads: Annotated[int, Field(ge=0, le=MAX_THREADS)] = 0
    """Threads within an operator; 0 lets ONNX Runtime choose."""
    inter_op_threads: Annotated[int, Field(ge=0, le=MAX_THREADS)] = 0
    """Threads across operators; 0 lets ONNX Runtime choose."""
    providers: list[ProviderName] = ["cpu"]
    """Execution providers the artifact runs on, in order of preference: a node runs on the
    first that takes it, e.g. [tensorrt, cuda, cpu]. tensorrt and cuda need the onnxruntime-gpu
    package in place of onnxruntime (extra `gpu`). The report's build section lists the
    providers that actually ran."""
    fallback: bool = False
    """A provider named in `providers` that this machine lacks (not in the installed
    onnxruntime, or it fails to start: no GPU, no CUDA libraries) is skipped, with a warning,
    and the next one runs. Default false: the compile stops (exit 2) rather than report CPU
    numbers for a GPU recipe."""
    tensorrt: TensorrtProviderOptions = TensorrtProviderOptions()
    """Options of the tensorrt provider."""
    cuda: CudaProviderOptions = CudaProviderOptions()
    """Options of the cuda provider."""

    _distinct_providers = field_validator("providers")(_distinct)


class CalibrationSpec(Strict):
    """Where trtopt's own ONNX Runtime runs happen: calibration (quantize, and the precision
    pass's range guard) and the reference model the accuracy check compares with (its outputs
    and latency). Default CPU: the same numbers on every machine. [cuda, cpu] with fallback
    true uses the GPU where there is one, which makes calibrating a large model practical."""

    providers: list[Literal["cuda", "cpu"]] = ["cpu"]
    """Execution providers, in order of preference: cuda (CUDAExecutionProvider, package
    onnxruntime-gpu) and cpu."""
    fallback: bool = False
    """A provider this machine lacks is skipped, with a warning, and the next one runs;
    default false: the compile stops (exit 2)."""
    cuda: CudaProviderOptions = CudaProviderOptions()
    """Options of the cuda provider."""

    _distinct_providers = field_validator("providers")(_distinct)


class TensorrtCommonOptions(Strict):
    """Engine build options that datacenter TensorRT and TensorRT for RTX share. Builds are
    always strongly typed: precision comes from the graph (casts, Q/DQ), never from flags."""

    optimization_level: Annotated[int, Field(ge=0, le=5)] | None = None
    """Builder optimization level 0-5 (higher searches longer); null keeps TensorRT's (3)."""
    workspace: ByteSize | None = None
    """Workspace memory pool limit, e.g. 4GiB; null leaves it to TensorRT (device memory)."""
    memory_pools: dict[str, ByteSize] = {}
    """Other memory pool limits by TensorRT pool name, e.g. {tactic_shared_memory: 48KiB}."""
    max_aux_streams: Annotated[int, Field(ge=0)] | None = None
    """Most auxiliary CUDA streams TensorRT may use; null lets it decide."""
    profiling_verbosity: Literal["none", "layer_names_only", "detailed"] | None = None
    """How much layer information the engine keeps for profilers (Polygraphy: detailed)."""
    sparsity: bool = False
    """Let TensorRT use structured-sparsity kernels for 2:4 sparse weights."""
    refittable: bool = False
    """Build an engine whose weights can be refitted later."""
    strip_plan: bool = False
    """With refittable: leave the refittable weights out of the plan file."""


class TensorrtOptions(TensorrtCommonOptions):
    """Datacenter TensorRT (10.x strongly typed, 11.x)."""

    tf32: bool = False
    """Allow TF32 for FP32 matmul/convolution (faster on Ampere and later, ~10-bit mantissa)."""
    timing_cache: str | None = None
    """Timing cache file, loaded before and saved after each build (reused across compiles);
    relative to the recipe. A copy is written to the output folder."""
    version_compatible: bool = False
    """Build an engine later TensorRT runtimes can load (embeds the lean runtime)."""
    exclude_lean_runtime: bool = False
    """With version_compatible: leave the lean runtime out of the plan."""
    hardware_compatibility_level: (
        Literal["none", "ampere_plus", "same_compute_capability"] | None
    ) = None
    """Build for GPUs other than the build GPU: ampere_plus runs on any Ampere or later."""
    gpu: Annotated[str, Field(min_length=1)] | None = None
    """With `--ray`: the GPU model to build on, as Ray's accelerator type (e.g. H100, A10G,
    L4), so the engine is tuned on the GPU it will run on; null: any GPU of the cluster."""


def _compute_capability(value: Any) -> str:
    text = str(value).strip().lower()
    major, _, minor = text.partition(".")
    if text.startswith("sm") and text[2:].isdigit() and len(text) in (4, 5):  # sm89, sm120
        major, minor = text[2:-1], text[-1]
    if not (major.isdigit() and minor.isdigit() and len(minor) == 1):
        raise ValueError(f"'{value}' is not a compute capability such as 8.9 or 12.0")
    return f"{int(major)}.{int(minor)}"


class TensorrtRtxOptions(TensorrtCommonOptions):
    """TensorRT for RTX: engines are built ahead of time on any machine (a CPU is enough) for
    the named compute capabilities, and JIT-specialized on the GPU at first run."""

    compute_capabilities: list[str] = []
    """Target GPUs as compute capabilities, e.g. [8.9, 12.0] (Ada, Blackwell); empty builds
    TensorRT for RTX's default set (Ampere and later)."""
    runtime_cache: str | None = None
    """Runtime cache file of JIT-compiled kernels, loaded and saved where the engine runs on a
    GPU; relative to the recipe."""

    @field_validator("compute_capabilities", mode="before")
    @classmethod
    def _normalize_capabilities(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_compute_capability(item) for item in value]
        return value


BACKEND_SECTIONS = {
    "onnxruntime": "onnxruntime",
    "tensorrt": "tensorrt",
    "tensorrt-rtx": "tensorrt_rtx",
}
"""Backend name -> the `build` key holding its options."""


class BuildSpec(Strict):
    backend: Literal["onnxruntime", "tensorrt", "tensorrt-rtx"] = "onnxruntime"
    """Which backend builds the artifact: onnxruntime (CPU, always available), tensorrt
    (datacenter TensorRT, extra `tensorrt`) or tensorrt-rtx (TensorRT for RTX, extra `rtx`)."""
    onnxruntime: OnnxruntimeOptions = OnnxruntimeOptions()
    tensorrt: TensorrtOptions = TensorrtOptions()
    tensorrt_rtx: TensorrtRtxOptions = TensorrtRtxOptions()

    def section(self) -> str:
        """The `build` key that holds the chosen backend's options."""
        return BACKEND_SECTIONS[self.backend]

    def options(self) -> dict[str, Any]:
        """The chosen backend's options, as plain data."""
        return getattr(self, self.section()).model_dump(mode="json")


class Thresholds(Strict):
    """Accuracy limits for an output; an unset limit is reported but not gated."""

    max_abs: Annotated[float, Field(ge=0)] | None = None
    mean_abs: Annotated[float, Field(ge=0)] | None = None
    max_rel: Annotated[float, Field(ge=0)] | None = None
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    min_top1: Annotated[float, Field(ge=0, le=1)] | None = None
    """Fraction of rows whose argmax agrees; only for outputs marked ``class_scores``."""
    quantile_abs: Annotated[float, Field(ge=0)] | None = None
    """Largest ``check.error_quantile`` quantile (default 0.99: p99) of the absolute error."""
    min_snr_db: float | None = None
    """Smallest signal-to-noise ratio in dB (10 log10 of reference power over error power)."""
    min_psnr_db: float | None = None
    """Smallest peak signal-to-noise ratio in dB (peak: the reference's maximum)."""
    min_topk: Annotated[float, Field(ge=0, le=1)] | None = None
    """Fraction of rows whose reference argmax is among the artifact's ``top_k`` largest
    scores; only for outputs marked ``class_scores``."""
    max_degradation: dict[str, Annotated[float, Field(ge=0)]] | None = None
    """How much worse than in the baseline report (``check.baseline``) each named metric may
    get, in its own unit, e.g. {cosine: 1.0e-4, max_abs: 0.01, top1: 0.0}."""

    @field_validator("max_degradation")
    @classmethod
    def _known_metrics(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name in value or {}:
            if name not in METRICS:
                raise ValueError(
                    f"unknown metric '{name}'{did_you_mean(name, METRICS)}; "
                    f"metrics: {', '.join(METRICS)}"
                )
        return value

    def over(self, base: Thresholds) -> Thresholds:
        """These thresholds, falling back to ``base`` for the limits not set here."""
        return base.model_copy(update={k: getattr(self, k) for k in self.model_fields_set})


DEFAULT_THRESHOLDS = Thresholds(max_abs=1e-3, min_cosine=0.9999)


class OutputSpec(Strict):
    class_scores: bool = False
    """The output holds class scores along its last axis: top-1 agreement is measured."""
    top_k: TopK = DEFAULT_TOP_K
    """k of the top-k agreement measured for class scores."""
    thresholds: Thresholds = Thresholds()


class CheckData(DataSource):
    """Where check inputs come from: synthetic (the default), npz, npy, images or a script;
    ``check.samples`` feeds are taken from it."""


class DataSpec(Strict):
    """Data sets the passes use; each is one of npz, npy, images, script or synthetic."""

    calibration: DataSource | None = None
    """What calibration (quantize) and the FP16 range guard (precision) stream through the
    model; default: synthetic data, with a warning in the report."""
    validation: DataSource | None = None
    """What automatic sensitivity searches judge accuracy on; default: the check data."""


class CheckSpec(Strict):
    reference: Literal["onnxruntime"] = "onnxruntime"
    """The reference: the original model on ONNX Runtime CPU."""
    samples: Annotated[int, Field(ge=1)] = 4
    seed: Annotated[int, Field(ge=0, lt=SEED_LIMIT)] = 0
    data: CheckData = CheckData()
    dims: dict[str, Annotated[int, Field(ge=1)]] = {}
    """Values of symbolic dims for synthetic data; a dim named nowhere (or -1) is 2."""
    thresholds: Thresholds = DEFAULT_THRESHOLDS
    outputs: dict[str, OutputSpec] = {}
    verify_passes: bool = False
    """Run the check inputs after every pass and name the first pass that breaks numerics."""
    latency_runs: Annotated[int, Field(ge=0)] = 20
    """Timed runs of reference and artifact on ONNX Runtime CPU; 0 skips latency."""
    error_quantile: Quantile = DEFAULT_QUANTILE
    """Which quantile of the absolute error ``quantile_abs`` measures (0.99: p99)."""
    golden: str | None = None
    """Golden file (``trtopt golden update`` writes it): inputs and reference outputs that
    ``trtopt check`` and every compile run the artifact on; relative to the recipe."""
    golden_samples: Annotated[int, Field(ge=1)] | None = None
    """Feeds stored in the golden file; default ``samples``. Keep golden files small enough to
    commit: ``trtopt golden update`` warns above 256 KiB."""
    baseline: str | None = None
    """A previous report.json (or `trtopt check --json` output) that ``max_degradation``
    thresholds compare with; relative to the recipe."""

    def thresholds_for(self, output: str) -> Thresholds:
        spec = self.outputs.get(output)
        defaults = DEFAULT_THRESHOLDS.model_copy(
            update=self.thresholds.model_dump(include=self.thresholds.model_fields_set)
        )
        return spec.thresholds.over(defaults) if spec else defaults


class CacheSpec(Strict):
    """The stage cache: pass outputs and unchanged compiles reused across runs."""

    enabled: bool = True
    """Read and write the cache (``--no-cache`` turns it off for one run)."""
    dir: str | None = None
    """Cache folder, relative to the recipe; ``--cache-dir`` and ``$TRTOPT_CACHE_DIR`` take
    precedence; default: the platform's user cache folder."""


ServedName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
"""A served model's name (a folder of the repository): letters, digits, '.', '_' and '-'."""
BatchSize = Annotated[int, Field(ge=1)]
ModelVersion = Annotated[int, Field(ge=1)]
"""A model version: a numbered folder of the repository."""


class TritonInstances(Strict):
    """Triton's instance group: how many copies of the model run, and on what."""

    count: Annotated[int, Field(ge=1)] = 1
    """Instances of the model on each device."""
    kind: Literal["gpu", "cpu"] | None = None
    """Where the instances run; default: gpu for an engine, cpu for an ONNX model."""
    gpus: list[Annotated[int, Field(ge=0)]] = []
    """GPU device ids the instances run on (kind gpu); empty: every GPU."""

    @model_validator(mode="after")
    def _gpus_need_gpu(self) -> TritonInstances:
        if self.gpus and self.kind == "cpu":
            raise ValueError("`gpus` names GPUs, but `kind` is cpu")
        return self


class TritonOptions(Strict):
    """A Triton Inference Server model repository entry written from a compile: the config
    (names, data types, dims, batching) is derived from the final ONNX graph and the engine's
    optimization profiles; these options only choose what the compile cannot know."""

    repository: str | None = None
    """Model repository folder the compile writes <name>/config.pbtxt and <name>/<version>/
    into; relative to the recipe. `trtopt deploy RECIPE --triton REPO` names one instead."""
    name: ServedName | None = None
    """The model's name in the repository; default: the recipe's name."""
    version: ModelVersion | None = None
    """Version folder to write; default: one more than the highest in the repository. An
    existing version is never replaced."""
    serve: Literal["artifact", "onnx"] = "artifact"
    """artifact: the build's artifact (an engine as model.plan on Triton's TensorRT backend,
    an ONNX model on its ONNX Runtime backend); onnx: the final ONNX graph on the ONNX Runtime
    backend, whatever the build."""
    max_batch_size: Annotated[int, Field(ge=0)] | None = None
    """Largest batch Triton forms; 0 serves the model unbatched. Default: from the
    optimization profiles when the first dim of every input and output is a batch dim (the
    largest batch the profiles cover from 1), else 0."""
    dynamic_batching: bool = True
    """Let Triton's dynamic batcher combine requests (when max_batch_size > 0)."""
    preferred_batch_sizes: list[BatchSize] | None = None
    """Batch sizes the dynamic batcher aims for; default: the profiles' opt batch sizes."""
    max_queue_delay_microseconds: Annotated[int, Field(ge=0)] = 0
    """How long the dynamic batcher may hold a request to form a larger batch."""
    instances: TritonInstances = TritonInstances()
    version_policy: Annotated[int, Field(ge=1)] | Literal["all"] | list[ModelVersion] = 1
    """Versions Triton serves: a number N serves the newest N (Triton's default: 1), `all`
    every version, a list of numbers those versions."""

    @model_validator(mode="after")
    def _batching_consistent(self) -> TritonOptions:
        if self.preferred_batch_sizes and not self.dynamic_batching:
            raise ValueError("`preferred_batch_sizes` needs `dynamic_batching: true`")
        if isinstance(self.version_policy, list) and not self.version_policy:
            raise ValueError("`version_policy` lists no version")
        return self


class DeploySpec(Strict):
    """Where a compile's artifact goes once it passes."""

    triton: TritonOptions | None = None
    """A Triton Inference Server model repository entry."""


class PassSpec(Strict):
    name: str
    options: dict[str, Any] = {}

    def to_yaml(self) -> str | dict[str, Any]:
        return {self.name: self.options} if self.options else self.name


class Recipe(Strict):
    """A compile recipe. Paths are absolute once loaded from a file."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    model: str
    inputs: dict[str, InputSpec] = {}
    passes: list[PassSpec] = []
    build: BuildSpec = BuildSpec()
    check: CheckSpec = CheckSpec()
    data: DataSpec = DataSpec()
    output: str | None = None
    """Output folder; default build/<name> beside the recipe."""
    plugins: list[str] = []
    """Python files defining extra passes; loaded before the passes are validated."""
    cache: CacheSpec = CacheSpec()
    deploy: DeploySpec = DeploySpec()
    calibration: CalibrationSpec = CalibrationSpec()
    """Execution providers of calibration and the reference run (ONNX Runtime's CPU by
    default)."""
    strict: bool = False
    """A pass whose result fails to load, fails the ONNX checker, changes the outputs of a
    pass that must keep them, or raises, is rolled back and the compile goes on; true: such a
    rollback fails the compile (exit 1)."""

    _document: Document | None = PrivateAttr(default=None)
    _folder: Path | None = PrivateAttr(default=None)
    """The recipe file's folder, where the default output goes (None: not from a file)."""
    _file: Path | None = PrivateAttr(default=None)

    @property
    def file(self) -> Path | None:
        """The recipe file (None: not loaded from a file)."""
        return self._file

    @model_validator(mode="before")
    @classmethod
    def _normalize_passes(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("passes"), list):
            data = {**data, "passes": [_pass_item(item) for item in data["passes"]]}
        return data

    def place(self, *path: str | int) -> Place | str:
        """Where a key path was written (file:line:col), for errors found after loading."""
        if self._document is not None:
            place = self._document.place(path)
            if place is not None:
                return place
        return ".".join(str(p) for p in path) or "recipe"

    def input_ranges(self) -> dict[str, tuple[float, float]]:
        """The synthetic value range of each input that sets one."""
        return {name: spec.range for name, spec in self.inputs.items() if spec.range}

    def output_dir(self) -> Path:
        """`output`, else build/<name> beside the recipe file (so every verb, from any
        folder, finds the same one)."""
        return output_folder(self.output, self.name, self._folder)

    def input_paths(self) -> list[Path]:
        """Files and folders a compile of this recipe reads (its own files, `extends`
        included; the model, data, golden and baseline files, caches, plugins): an output
        folder may be none of them and hold none of them. A glob stands for the folder
        before its first wildcard."""
        sources = self._document.sources if self._document is not None else ()
        return input_paths(self.model_dump(mode="json"), sources)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        data["passes"] = _Lines(p.to_yaml() for p in self.passes)
        return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False)


class _RecipeDumper(yaml.SafeDumper):
    """YAML as a recipe is written: a list of scalars (a shape, a range) on one line, the
    passes one per line."""


class _Lines(list):
    """A list written one item per line."""


def _flow_scalars(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = not isinstance(data, _Lines) and all(not isinstance(i, dict | list) for i in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_RecipeDumper.add_representer(list, _flow_scalars)
_RecipeDumper.add_representer(_Lines, _flow_scalars)


def _pass_item(item: Any) -> Any:
    """`name` or `{name: {options}}` -> {name, options}; anything else is left for pydantic."""
    if isinstance(item, str):
        return {"name": item}
    if isinstance(item, dict) and len(item) == 1:
        ((name, options),) = item.items()
        return {"name": name, "options": {} if options is None else options}
    return item


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    run_plugins: bool = True,
    document: Document | None = None,
) -> Recipe:
    """Load, merge (`extends`), override (`--set`) and validate a recipe file.

    Plugins named by the recipe are imported so that their passes validate like built-ins.
    ``run_plugins=False`` (``trtopt validate``: checking an untrusted recipe must not run
    its code) only parses them: the names their ``@register_pass("...")`` decorators spell
    out are accepted as pass names, with options left for the compile to check.
    ``document``: the file and ``overrides`` already read as YAML (``load_document``), so that
    what is validated is what was read, once.
    """
    if document is None:
        document = load_document(Path(path), overrides)
    recipe = recipe_from_document(document, run_plugins)
    recipe._folder = Path(path).resolve().parent
    recipe._file = Path(path).resolve()
    return recipe


def recipe_from_document(document: Document, run_plugins: bool = True) -> Recipe:
    try:
        recipe = Recipe.model_validate(document.data)
    except ValidationError as error:
        raise _recipe_error(error, document) from None
    recipe._document = document
    owners: dict[str, str] = {}
    for i, plugin in enumerate(recipe.plugins):
        try:
            names = list(load_plugin(Path(plugin)) if run_plugins else declared_passes(plugin))
        except RecipeError as error:
            raise RecipeError(error.message, document.place(("plugins", i))) from None
        for name in names:
            if owners.get(name, plugin) != plugin:
                raise RecipeError(
                    f"pass '{name}' is registered twice: by {owners[name]} and by {plugin}",
                    document.place(("plugins", i)),
                )
            owners[name] = plugin
    validate_passes(recipe, set() if run_plugins else set(owners))
    return recipe


def declared_passes(path: str | Path) -> list[str]:
    """The pass names a plugin file registers with ``@register_pass("literal")``, read
    without running it; a missing or unparsable file is a RecipeError. A name that is
    also a built-in's is refused, as the import would refuse it."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except FileNotFoundError:
        raise RecipeError(f"plugin file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise RecipeError(f"plugin {path} does not parse: {error}") from None
    names = []
    for node in ast.walk(tree):
        for decorator in getattr(node, "decorator_list", []):
            if (
                isinstance(decorator, ast.Call)
                and getattr(decorator.func, "id", getattr(decorator.func, "attr", None))
                == "register_pass"
                and decorator.args
                and isinstance(decorator.args[0], ast.Constant)
                and isinstance(decorator.args[0].value, str)
            ):
                names.append(decorator.args[0].value)
    for name in names:
        if name in available_passes():
            raise RecipeError(f"plugin {path} registers '{name}', which is a built-in pass")
        if names.count(name) > 1:
            raise RecipeError(f"plugin {path} registers '{name}' twice")
    return names


def validate_passes(recipe: Recipe, unchecked: set[str] | None = None) -> None:
    """Check every pass name and its options against the registry, naming the place.
    ``unchecked``: names of passes that plugins declare but were not loaded (their options
    are checked when the compile loads them)."""
    for i, spec in enumerate(recipe.passes):
        if unchecked and spec.name in unchecked:
            continue
        try:
            pass_cls = get_pass(spec.name)
        except RecipeError as error:
            raise RecipeError(error.message, recipe.place("passes", i)) from None
        try:
            pass_cls.Options.model_validate(spec.options)
        except ValidationError as error:
            document = recipe._document or Document(None, {})
            prefix: KeyPath = ("passes", i, spec.name)
            what = f"pass '{spec.name}'"
            raise _recipe_error(error, document, prefix, pass_cls.Options, what) from None


def _recipe_error(
    error: ValidationError,
    document: Document,
    prefix: KeyPath = (),
    model: type[BaseModel] = Recipe,
    what: str = "",
) -> RecipeError:
    """Turn pydantic's errors into one RecipeError naming file:line:col for each."""
    lines: list[str] = []
    first_place: Place | str | None = None
    for item in error.errors()[:MAX_ERRORS_SHOWN]:
        loc = _data_loc(item["loc"], document.data, prefix)
        place = document.place((*prefix, *loc)) or "recipe"
        first_place = first_place or place
        key = ".".join(str(k) for k in loc)
        if item["type"] == "extra_forbidden":
            parent = loc[:-1]
            hint = did_you_mean(str(loc[-1]), _fields_at(model, parent))
            message = f"unknown key '{loc[-1]}'{' in ' + what if what else ''}{hint}"
        elif item["type"] == "missing":
            message = f"missing required key '{key}'"
        else:
            message = f"{key or what or 'recipe'}: {item['msg']}"
        lines.append(f"{place}: {message}")
    more = len(error.errors()) - MAX_ERRORS_SHOWN
    if more > 0:
        lines.append(f"(and {more} more)")
    first = lines[0].partition(": ")[2]
    return RecipeError("\n".join([first, *lines[1:]]), first_place)


def _data_loc(loc: tuple[Any, ...], data: Any, prefix: KeyPath) -> KeyPath:
    """Drop pydantic's union tags from an error location, keeping real keys and indexes."""
    node = data
    for key in prefix:
        node = (
            node.get(key)
            if isinstance(node, dict)
            else (node[key] if isinstance(node, list) and isinstance(key, int) else None)
        )
    kept: list[str | int] = []
    for key in loc:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        elif key in ("name", "options") and isinstance(node, (str, dict)):
            continue  # PassSpec fields that the short form does not spell out
        elif not (isinstance(key, str) and ("[" in key or key[:1].isupper())):
            kept.append(key)
            node = None
            continue
        else:
            continue
        kept.append(key)
    return tuple(kept)


def _fields_at(model: type[BaseModel], path: KeyPath) -> list[str]:
    """The valid keys of the section at ``path``, for 'did you mean' suggestions."""
    current: Any = model
    for key in path:
        found = model_in(current)
        if found is None:
            return []
        # A key that is not a field is a dict key or list index: stay on the value's model.
        current = found.model_fields[key].annotation if key in found.model_fields else found
    found = model_in(current)
    return list(found.model_fields) if found else []


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X | None`, `dict[str, X]`, `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe format, with every registered pass and its options."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "trtopt recipe"
    schema["properties"]["extends"] = {
        "type": "string",
        "description": "A recipe file this one deep-merges over (lists are replaced).",
    }
    passes = available_passes()
    defs = schema.setdefault("$defs", {})
    variants: list[dict[str, Any]] = [{"enum": list(passes)}]
    for name, cls in passes.items():
        options = cls.Options.model_json_schema()
        defs.update(options.pop("$defs", {}))
        options["description"] = cls.summary()
        variants.append(
            {
                "type": "object",
                "properties": {name: {"anyOf": [options, {"type": "null"}]}},
                "required": [name],
                "additionalProperties": False,
            }
        )
    schema["properties"]["passes"] = {"type": "array", "items": {"anyOf": variants}}
    defs.pop("PassSpec", None)
    return schema
