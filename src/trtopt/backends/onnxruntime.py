"""The embedded ONNX Runtime backend: CPU always, CUDA and TensorRT execution providers where
onnxruntime-gpu is installed; and the sessions the reference run and calibration use.

A recipe names providers in order of preference (``[tensorrt, cuda, cpu]``); they become the
``(name, options)`` pairs ``ort.InferenceSession`` takes. ONNX Runtime itself drops a provider
it lacks, or one that fails to start, with no more than a log line and runs on the CPU: here
every provider asked for is checked before any work (it must be in the installed package and
start on a one-node model) and again on every session, and a missing one is an error naming
the recipe key unless the recipe allows ``fallback``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from polygraphy.backend.onnxrt import OnnxrtRunner

from ..errors import BuildError
from ..lazy import lazy_import
from .base import BuildResult
from .tensorrt import BackendOptionError

if TYPE_CHECKING:
    import onnxruntime as ort
else:
    ort = lazy_import("onnxruntime", globals())  # a compile served from the cache runs no session

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
"""A recipe's provider name -> ONNX Runtime's."""
CPU = PROVIDER_NAMES["cpu"]
GPU_PACKAGE = "onnxruntime-gpu"
SWITCH_TO_GPU = (
    "onnxruntime-gpu has it, in place of onnxruntime (the two cannot both be installed): "
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
)
"""How to get the CUDA and TensorRT providers: the GPU package in place of the CPU one."""
TENSORRT_PRECISION_OFF = {"trt_fp16_enable": "False", "trt_int8_enable": "False"}
"""The TensorRT provider's own precision flags, always off: precision is in the graph (casts,
Q/DQ), and these would let TensorRT lower FP32 layers that the accuracy check never saw."""
CONV_ALGO_SEARCH = {"exhaustive": "EXHAUSTIVE", "heuristic": "HEURISTIC", "default": "DEFAULT"}

Provider = tuple[str, dict[str, str]]
"""An execution provider as ``ort.InferenceSession(providers=...)`` takes it: its ONNX Runtime
name and its options (strings)."""

OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
"""A recipe's graph_optimization_level -> ONNX Runtime's ``GraphOptimizationLevel`` member."""


def cuda_options(options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A recipe's ``cuda`` section -> the CUDA provider's options."""
    options = options or {}
    return {
        "device_id": str(options.get("device_id", 0)),
        "cudnn_conv_algo_search": CONV_ALGO_SEARCH[
            options.get("cudnn_conv_algo_search") or "exhaustive"
        ],
        "use_tf32": "1" if options.get("tf32") else "0",
    }


def tensorrt_options(options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A recipe's ``tensorrt`` section -> the TensorRT provider's options, its precision flags
    off (TENSORRT_PRECISION_OFF)."""
    options = options or {}
    result = {"device_id": str(options.get("device_id", 0)), **TENSORRT_PRECISION_OFF}
    for key, enable, path in (
        ("engine_cache_path", "trt_engine_cache_enable", "trt_engine_cache_path"),
        ("timing_cache_path", "trt_timing_cache_enable", "trt_timing_cache_path"),
    ):
        if options.get(key):
            result[enable], result[path] = "True", str(options[key])
    if options.get("builder_optimization_level") is not None:
        result["trt_builder_optimization_level"] = str(options["builder_optimization_level"])
    if options.get("max_workspace_size") is not None:
        result["trt_max_workspace_size"] = str(int(options["max_workspace_size"]))
    return result


def execution_providers(
    providers: Sequence[str] = ("cpu",),
    tensorrt: Mapping[str, Any] | None = None,
    cuda: Mapping[str, Any] | None = None,
) -> list[Provider]:
    """A recipe's provider names (and the option sections of tensorrt and cuda) -> ONNX
    Runtime's names and options, in the same order."""
    options = {"tensorrt": tensorrt_options(tensorrt), "cuda": cuda_options(cuda), "cpu": {}}
    return [(PROVIDER_NAMES[name], options[name]) for name in providers]


class ProviderUnavailableError(BackendOptionError):
    """A provider the recipe asks for is missing here, and the recipe allows no fallback."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "providers")


def _installed_package() -> str:
    """Which ONNX Runtime distribution provides the ``onnxruntime`` module."""
    for name in (GPU_PACKAGE, "onnxruntime"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"onnxruntime {ort.__version__}"


def _probe_model() -> bytes:
    """A one-node model (Identity of a float[1]) a provider must run to count as started."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "provider-probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@functools.cache
def why_missing(name: str, device_id: str = "0") -> str | None:
    """Why ONNX Runtime's provider ``name`` cannot run here, or None: it must be in the
    installed package and start on a one-node model (ONNX Runtime drops one that fails to
    start, e.g. without a GPU or its CUDA libraries, with only a log line). Asked once per
    process."""
    if name == CPU:  # in every ONNX Runtime build: a compile served from the cache imports none
        return None
    available = ort.get_available_providers()
    if name not in available:
        has = ", ".join(p.removesuffix("ExecutionProvider") for p in available)
        return f"is not in the installed {_installed_package()} (it has {has})"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            _probe_model(), options, providers=[(name, {"device_id": device_id})],
            enable_fallback=0,
        )  # fmt: skip
    except Exception as error:  # ORT raises its own types (RuntimeError, Fail, ...)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"failed to start on device {device_id}: {first}"
    if name not in session.get_providers():
        return (
            f"did not start on device {device_id} (no GPU, or the CUDA, cuDNN or TensorRT "
            "libraries it was built for are not loadable; ONNX Runtime's log says which)"
        )
    return None


@dataclass
class ProviderChoice:
    """The providers a session gets: those asked for that run here, in order, and why the
    others were skipped (only with ``fallback``)."""

    requested: list[str]
    """The recipe's provider names."""
    providers: list[Provider]
    """What runs: ONNX Runtime names and options."""
    missing: dict[str, str] = field(default_factory=dict)
    """Recipe name -> why it was skipped."""

    def names(self) -> list[str]:
        return [name for name, _ in self.providers]

    def notes(self, key: str = "providers") -> list[str]:
        """One line per provider skipped, for the report's warnings; ``key``: the recipe key
        that named the providers."""
        ran = ", ".join(self.names())
        return [f"{key}: {name} skipped, {why}; ran on {ran}" for name, why in self.missing.items()]

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": list(self.requested),
            "providers": self.names(),
            "missing": dict(self.missing),
        }


def choose_providers(
    providers: Sequence[str] = ("cpu",),
    fallback: bool = False,
    tensorrt: Mapping[str, Any] | None = None,
    cuda: Mapping[str, Any] | None = None,
) -> ProviderChoice:
    """The providers of a recipe's list that run here. A missing one raises
    ProviderUnavailableError, naming it and how to get it, unless ``fallback`` (then it is
    skipped and the next one runs); so does a list none of whose providers runs."""
    requested = list(providers)
    wanted = execution_providers(requested, tensorrt, cuda)
    kept: list[Provider] = []
    missing: dict[str, str] = {}
    for recipe_name, (name, options) in zip(requested, wanted):
        why = why_missing(name, options.get("device_id", "0"))
        if why is None:
            kept.append((name, options))
            continue
        if not fallback:
            hint = f"; {SWITCH_TO_GPU}" if name not in ort.get_available_providers() else ""
            raise ProviderUnavailableError(
                f"{recipe_name} ({name}) {why}{hint}; or set `fallback: true` to run on the "
                "next provider of the list"
            )
        missing[recipe_name] = f"{name} {why}"
    if not kept:
        raise ProviderUnavailableError(
            f"no provider of {requested} runs here: {'; '.join(missing.values())}"
        )
    return ProviderChoice(requested, kept, missing)


def open_session(
    model: str | Path | bytes,
    options: ort.SessionOptions,
    choice: ProviderChoice,
    fallback: bool = False,
) -> ort.InferenceSession:
    """A session on ``choice``'s providers, with ONNX Runtime's own silent fallback off; a
    provider the session did not register (it failed to start after all) is an error unless
    ``fallback``."""
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(
        source, sess_options=options, providers=choice.providers, enable_fallback=0
    )
    ran = session.get_providers()
    lost = [name for name in choice.names() if name not in ran]
    if lost and not fallback:
        raise ProviderUnavailableError(
            f"{', '.join(lost)} did not start for this model (ONNX Runtime ran it on "
            f"{', '.join(ran)} instead); see ONNX Runtime's log for why, or allow "
            "`fallback: true`"
        )
    return session


def session_loader(
    model_path: Path,
    graph_optimization_level: str = "all",
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    providers: Sequence[str] = ("cpu",),
    fallback: bool = False,
    tensorrt: Mapping[str, Any] | None = None,
    cuda: Mapping[str, Any] | None = None,
) -> Callable[[], ort.InferenceSession]:
    """A lazy session factory, the callable Polygraphy's OnnxrtRunner accepts. Takes a recipe's
    `build.onnxruntime` (or `calibration`) options as they are: ``providers`` in order of
    preference (default CPU), ``fallback``, and the ``tensorrt`` and ``cuda`` provider options.

    Written here rather than with Polygraphy's SessionFromOnnx because that loader exposes no
    thread counts, which latency comparisons need to pin, and no provider options.
    """

    def load() -> ort.InferenceSession:
        choice = choose_providers(providers, fallback, tensorrt, cuda)
        options = ort.SessionOptions()
        level = OPTIMIZATION_LEVELS[graph_optimization_level]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        return open_session(model_path, options, choice, fallback)

    return load


@functools.cache
def load_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises when it refuses a model (not an internal failure of its own)."""
    return tuple(
        getattr(ort.capi.onnxruntime_pybind11_state, name)
        for name in ("Fail", "NotImplemented", "InvalidGraph", "InvalidArgument", "InvalidProtobuf")
    )


def why_refused(model: onnx.ModelProto, error: Exception) -> str:
    """Why ONNX Runtime refuses ``model``, in a user's words: the opset, op, domain or node
    names it cannot take, else its own message without the status prefix."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(error))
    text = re.sub(r"^Load model from .*? failed:\s*", "", text, flags=re.S).strip()
    imports = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    if match := re.search(
        r"Opset (\d+) is under development.*domain (\S+) is till opset (\d+)", text, re.S
    ):
        return (
            f"the model imports opset {match[1]} of {match[2]}, which ONNX Runtime does not "
            f"support (it supports up to opset {match[3]})"
        )
    if match := re.search(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'", text):
        return (
            f"ONNX Runtime has no implementation of {match[1]} at opset {match[2]} (node "
            f"'{match[3]}'; the model imports {imports}): convert the model to a newer opset, "
            "e.g. with onnx.version_converter"
        )
    if match := re.search(r"([\w.]*):(\w+)\(-?\d+\) is not a registered function/op", text):
        nodes = [n.name for n in model.graph.node if (n.domain, n.op_type) == match.groups()]
        return (
            f"op {match[2]} of domain '{match[1]}' (node {', '.join(map(repr, nodes[:5]))}) is "
            "unknown to ONNX Runtime: a custom op whose library is not loaded, or a wrong domain"
        )
    counts = Counter(node.name for node in model.graph.node if node.name)
    if twice := sorted(name for name, count in counts.items() if count > 1):
        return (
            "node names must be unique for ONNX Runtime; used more than once: "
            + ", ".join(map(repr, twice[:10]))
            + (f" and {len(twice) - 10} more" if len(twice) > 10 else "")
        )
    return f"ONNX Runtime cannot load the model: {text.splitlines()[0] if text else error}"


class OnnxruntimeBackend:
    """The artifact is the optimized ONNX model; building proves ONNX Runtime can plan it on the
    recipe's execution providers, which are checked when the backend is made (before any
    pass runs): a missing one raises ProviderUnavailableError unless ``fallback``."""

    name = "onnxruntime"

    def __init__(
        self,
        graph_optimization_level: str = "all",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        providers: Sequence[str] = ("cpu",),
        fallback: bool = False,
        tensorrt: Mapping[str, Any] | None = None,
        cuda: Mapping[str, Any] | None = None,
    ) -> None:
        self.graph_optimization_level = graph_optimization_level
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.providers = list(providers)
        self.fallback = fallback
        self.tensorrt = dict(tensorrt or {})
        self.cuda = dict(cuda or {})
        self.choice = choose_providers(self.providers, fallback, self.tensorrt, self.cuda)

    @property
    def notes(self) -> list[str]:
        """Warnings for the report: the providers skipped (with ``fallback``)."""
        return self.choice.notes("build.onnxruntime.providers")

    def unavailable(self) -> str | None:
        return None  # a dependency of trtopt itself; missing providers raise in __init__

    def cannot_run(self, build: BuildResult) -> str | None:
        return None

    def _loader(self, model_path: Path) -> Callable[[], ort.InferenceSession]:
        return session_loader(
            model_path,
            self.graph_optimization_level,
            self.intra_op_threads,
            self.inter_op_threads,
            self.providers,
            self.fallback,
            self.tensorrt,
            self.cuda,
        )

    def build(self, model_path: Path, out_dir: Path) -> BuildResult:
        start = time.perf_counter()
        try:
            session = self._loader(model_path)()
        except ProviderUnavailableError:
            raise
        except Exception as error:  # ORT raises its own exception types for every load failure
            raise BuildError(f"ONNX Runtime cannot load the optimized model: {error}") from error
        ran = session.get_providers()
        del session
        return BuildResult(
            backend=self.name,
            artifact=model_path,
            seconds=time.perf_counter() - start,
            details={
                "onnxruntime_version": ort.__version__,
                "graph_optimization_level": self.graph_optimization_level,
                "intra_op_threads": self.intra_op_threads,
                "inter_op_threads": self.inter_op_threads,
                "providers": ran,
                "providers_requested": self.providers,
                "providers_missing": dict(self.choice.missing),
                "provider_options": {n: o for n, o in self.choice.providers if o},
            },
        )

    def runner(self, build: BuildResult) -> OnnxrtRunner:
        return OnnxrtRunner(self._loader(build.artifact), name="artifact")
