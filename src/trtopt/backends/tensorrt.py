"""TensorRT engines through Polygraphy's loaders, one code path for both flavours.

Datacenter TensorRT (``tensorrt``, 10.x strongly typed and 11.x) and TensorRT for RTX
(``tensorrt_rtx``) are built the same way: ``NetworkFromOnnxPath(strongly_typed=True)`` ->
``CreateConfig`` / ``CreateConfigRTX`` -> ``EngineBytesFromNetwork`` -> ``SaveBytes``. The
flavours differ only in the module Polygraphy drives, the config class, and options only one of
them has (TF32, timing cache and compatibility modes for datacenter TensorRT; target compute
capabilities and the runtime cache for RTX). Precision always comes from the graph: no
precision flag is ever set.

Building serializes the engine without deserializing it, so TensorRT for RTX builds on a CPU
(ahead of time, for the named compute capabilities); running an engine needs a GPU.
``tensorrt`` and ``tensorrt_rtx`` are imported lazily, only when a build or a run asks.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import BackendUnavailableError, BuildError, UserError
from ..lint.parser import parse_errors
from .base import BuildResult
from .profiles import Profiles

ENGINE_FILE = "model.engine"
BUILD_LOG_FILE = "build.log"
TIMING_CACHE_FILE = "timing.cache"
RTX_DEFAULT_TARGETS = ((8, 0), (8, 6), (8, 9), (12, 0))
"""Compute capabilities a TensorRT for RTX engine built with none named runs on ("8.0, 8.6,
8.9, 12.0, and later": docs.nvidia.com/deeplearning/tensorrt-rtx, cpu-engines)."""
PARSE_FAILED = "Could not parse ONNX correctly"


@dataclass(frozen=True)
class Flavour:
    """One TensorRT distribution: its backend name, Python module and trtopt extra."""

    name: str
    module: str
    title: str
    extra: str
    rtx: bool
    section: str
    """The recipe's `build` key for its options."""


FLAVOURS = {
    "tensorrt": Flavour("tensorrt", "tensorrt", "TensorRT", "tensorrt", False, "tensorrt"),
    "tensorrt-rtx": Flavour(
        "tensorrt-rtx", "tensorrt_rtx", "TensorRT for RTX", "rtx", True, "tensorrt_rtx"
    ),
}


class BackendOptionError(UserError):
    """A build option the installed TensorRT does not have; ``option`` names the recipe key."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


def unavailable_reason(flavour: Flavour) -> str | None:
    """Why ``flavour`` cannot be imported, naming the extra that installs it; None if it can."""
    if importlib.util.find_spec(flavour.module) is not None:
        return None
    return (
        f"the {flavour.name} backend needs {flavour.title} (Python module '{flavour.module}'), "
        f"which is not installed: pip install 'trtopt[{flavour.extra}]'"
    )


def import_tensorrt(flavour: Flavour) -> ModuleType:
    """The flavour's module, with Polygraphy's TensorRT loaders bound to it.

    Polygraphy picks ``tensorrt`` or ``tensorrt_rtx`` from ``POLYGRAPHY_USE_TENSORRT_RTX`` once,
    when its modules are imported, and keeps a lazy module handle in each. trtopt chooses the
    flavour per build, so it sets ``polygraphy.config.USE_TENSORRT_RTX`` and points every
    Polygraphy module's handle (and the cached TensorRT logger) at the chosen module.
    """
    reason = unavailable_reason(flavour)
    if reason:
        raise BackendUnavailableError(reason)
    try:
        module = importlib.import_module(flavour.module)
    except Exception as error:  # a broken install raises anything from ImportError to OSError
        raise BackendUnavailableError(
            f"{flavour.title} is installed but cannot be imported ({type(error).__name__}: "
            f"{error}); reinstall it: pip install --force-reinstall 'trtopt[{flavour.extra}]'"
        ) from error
    _bind_polygraphy(flavour)
    return module


_bound_flavour: str | None = None


def _bind_polygraphy(flavour: Flavour) -> None:
    global _bound_flavour
    from polygraphy import config

    config.USE_TENSORRT_RTX = flavour.rtx
    if _bound_flavour == flavour.name:
        return
    from polygraphy.mod.trt_importer import lazy_import_trt

    importlib.import_module("polygraphy.backend.trt")
    importlib.import_module("polygraphy.backend.tensorrt_rtx")
    handle = lazy_import_trt()
    for name, module in list(sys.modules.items()):
        held = getattr(module, "trt", None) if name.startswith("polygraphy.") else None
        if type(held).__name__ == "LazyModule":
            module.trt = handle
    importlib.import_module("polygraphy.backend.trt.util").TRT_LOGGER = None
    _bound_flavour = flavour.name


# --- recipe options -> Polygraphy loader arguments ----------------------------------------------

# Options that need one TensorRT attribute: option -> (class or enum, member).
OPTION_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "optimization_level": ("IBuilderConfig", "builder_optimization_level"),
    "max_aux_streams": ("IBuilderConfig", "max_aux_streams"),
    "workspace": ("MemoryPoolType", "WORKSPACE"),
    "sparsity": ("BuilderFlag", "SPARSE_WEIGHTS"),
    "refittable": ("BuilderFlag", "REFIT"),
    "strip_plan": ("BuilderFlag", "STRIP_PLAN"),
    "tf32": ("BuilderFlag", "TF32"),
    "timing_cache": ("IBuilderConfig", "create_timing_cache"),
    "version_compatible": ("BuilderFlag", "VERSION_COMPATIBLE"),
    "exclude_lean_runtime": ("BuilderFlag", "EXCLUDE_LEAN_RUNTIME"),
}


@dataclass
class LoaderArguments:
    """Keyword arguments for each Polygraphy loader of the build."""

    network: dict[str, Any] = field(default_factory=dict)
    """NetworkFromOnnxPath"""
    config: dict[str, Any] = field(default_factory=dict)
    """CreateConfig (datacenter) or CreateConfigRTX (RTX)"""
    engine: dict[str, Any] = field(default_factory=dict)
    """EngineBytesFromNetwork"""

    def to_json(self, flavour: Flavour) -> dict[str, dict[str, str]]:
        """What each loader was given, printable, for the report."""
        config_class = "CreateConfigRTX" if flavour.rtx else "CreateConfig"
        return {
            "NetworkFromOnnxPath": {k: repr(v) for k, v in self.network.items()},
            config_class: {k: repr(v) for k, v in self.config.items() if k != "profiles"},
            "EngineBytesFromNetwork": {k: repr(v) for k, v in self.engine.items()},
        }


def _member(trt: Any, option: str, owner: str, member: str, version: str, title: str) -> Any:
    holder = getattr(trt, owner, None)
    if holder is None or not hasattr(holder, member):
        raise BackendOptionError(
            f"option '{option}' needs {owner}.{member}, which {title} {version} does not have",
            option,
        )
    return getattr(holder, member)


def parse_compute_capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


def loader_arguments(
    flavour: Flavour,
    options: dict[str, Any],
    profiles: Profiles,
    trt: Any,
    timing_cache_out: Path | None = None,
) -> LoaderArguments:
    """Map recipe options to Polygraphy loader arguments, checking each option against the
    installed TensorRT (``trt`` is its module); an option it lacks is a BackendOptionError
    that names the option and the version."""
    from polygraphy.backend.trt import Profile

    version = getattr(trt, "__version__", "?")

    def need(option: str, owner: str | None = None, member: str | None = None) -> Any:
        if owner is None:
            owner, member = OPTION_ATTRIBUTES[option]
        assert member is not None
        return _member(trt, option, owner, member, version, flavour.title)

    args = LoaderArguments()
    need("strongly_typed", "NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
    args.network["strongly_typed"] = True

    config = args.config
    config["profiles"] = [
        _profile(Profile(), profile) for profile in profiles.profiles
    ] or None  # None: a static network needs none (Polygraphy adds an empty one)
    if options.get("optimization_level") is not None:
        need("optimization_level")
        config["builder_optimization_level"] = options["optimization_level"]
    if options.get("max_aux_streams") is not None:
        need("max_aux_streams")
        config["max_aux_streams"] = options["max_aux_streams"]
    pools: dict[Any, int] = {}
    if options.get("workspace") is not None:
        pools[need("workspace")] = int(options["workspace"])
    for pool, size in (options.get("memory_pools") or {}).items():
        pools[need(f"memory_pools.{pool}", "MemoryPoolType", pool.upper())] = int(size)
    if pools:
        config["memory_pool_limits"] = pools
    if options.get("profiling_verbosity") is not None:
        value = options["profiling_verbosity"]
        config["profiling_verbosity"] = need(
            "profiling_verbosity", "ProfilingVerbosity", value.upper()
        )
    for option, argument in (
        ("sparsity", "sparse_weights"),
        ("refittable", "refittable"),
        ("strip_plan", "strip_plan"),
        ("version_compatible", "version_compatible"),
        ("exclude_lean_runtime", "exclude_lean_runtime"),
    ):
        if options.get(option):
            need(option)
            config[argument] = True

    if flavour.rtx:
        capabilities = [
            parse_compute_capability(c) for c in options.get("compute_capabilities", [])
        ]
        for major, minor in capabilities:
            need("compute_capabilities", "ComputeCapability", f"SM{major}{minor}")
        config["compute_capabilities"] = capabilities or None
    else:
        if options.get("tf32"):
            need("tf32")
        config["tf32"] = bool(options.get("tf32"))
        if options.get("hardware_compatibility_level") is not None:
            value = options["hardware_compatibility_level"]
            config["hardware_compatibility_level"] = need(
                "hardware_compatibility_level", "HardwareCompatibilityLevel", value.upper()
            )
        cache = options.get("timing_cache")
        if cache or timing_cache_out is not None:
            need("timing_cache")
        if cache:
            config["load_timing_cache"] = str(cache)
        save = cache or timing_cache_out
        if save:
            args.engine["save_timing_cache"] = str(save)
    return args


def _profile(profile: Any, shapes: dict[str, tuple[Any, Any, Any]]) -> Any:
    for name, (low, opt, high) in shapes.items():
        profile.add(name, min=list(low), opt=list(opt), max=list(high))
    return profile


# --- GPU presence --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int]


def find_gpu() -> Gpu | None:
    """The first CUDA GPU, or None where there is no driver or device.

    Asked of the CUDA driver with ctypes rather than through Polygraphy's CUDA wrapper, which
    loads the CUDA runtime and raises where no driver exists; this only needs a yes or no.
    """
    for library in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(library)
            break
        except OSError:
            continue
    else:
        return None
    count, device = ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or not count.value:
        return None
    if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetName(name, 256, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # COMPUTE_CAPABILITY_MINOR
    return Gpu(name.value.decode(errors="replace"), (major.value, minor.value))


# --- the build log -------------------------------------------------------------------------------


@contextmanager
def _build_log(path: Path) -> Iterator[list[str]]:
    """Send Polygraphy's and TensorRT's messages (INFO and up) to ``path`` only, and collect the
    errors; nothing reaches the terminal."""
    from polygraphy.logger import G_LOGGER

    errors: list[str] = []

    class Errors(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= G_LOGGER.ERROR:
                errors.append(record.getMessage())

    python_logger = logging.getLogger("Polygraphy")
    handlers = [logging.FileHandler(path, encoding="utf-8"), Errors()]
    handlers[0].setFormatter(logging.Formatter("%(message)s"))
    previous = (G_LOGGER.use_python_logging_system, python_logger.propagate, python_logger.level)
    G_LOGGER.use_python_logging_system = True
    python_logger.propagate = False
    python_logger.setLevel(1)
    for handler in handlers:
        python_logger.addHandler(handler)
    try:
        with G_LOGGER.verbosity(G_LOGGER.VERBOSE), warnings.catch_warnings():
            # TensorRT for RTX warns that Polygraphy's (empty) timing cache is a no-op.
            warnings.simplefilter("ignore", DeprecationWarning)
            yield errors
    finally:
        for handler in handlers:
            python_logger.removeHandler(handler)
            handler.close()
        G_LOGGER.use_python_logging_system = previous[0]
        python_logger.propagate = previous[1]
        python_logger.setLevel(previous[2])


def _clean(message: str) -> str:
    """Drop the CUDA-runtime noise a GPU-less machine adds to TensorRT's messages."""
    lines = [line for line in str(message).splitlines() if "catchCudaError" not in line]
    return "\n".join(lines).strip()


# --- the backend ---------------------------------------------------------------------------------


class TensorrtBackend:
    """Builds a serialized engine from the final ONNX graph; runs it where a GPU is present."""

    def __init__(
        self, flavour: str, options: dict[str, Any], profiles: Profiles | None = None
    ) -> None:
        self.flavour = FLAVOURS[flavour]
        self.name = self.flavour.name
        self.options = options
        self.profiles = profiles or Profiles()

    def unavailable(self) -> str | None:
        return unavailable_reason(self.flavour)

    def build(self, model_path: Path, out_dir: Path) -> BuildResult:
        trt = import_tensorrt(self.flavour)
        from polygraphy.backend.common import SaveBytes
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
        from polygraphy.exception import PolygraphyException

        flavour, version = self.flavour, trt.__version__
        timing_out = None if flavour.rtx else out_dir / TIMING_CACHE_FILE
        args = loader_arguments(flavour, self.options, self.profiles, trt, timing_out)
        engine_path, log_path = out_dir / ENGINE_FILE, out_dir / BUILD_LOG_FILE
        cache = self.options.get("timing_cache")
        if cache and not flavour.rtx:  # Polygraphy locks `<cache>.lock` beside it
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
        with _build_log(log_path) as errors:
            config_class = CreateConfigRTX if flavour.rtx else CreateConfig
            try:
                loader = SaveBytes(
                    EngineBytesFromNetwork(
                        NetworkFromOnnxPath(str(model_path), **args.network),
                        config=config_class(**args.config),
                        **args.engine,
                    ),
                    str(engine_path),
                )
                start = time.perf_counter()
                loader()
                seconds = time.perf_counter() - start
            except PolygraphyException as error:
                raise self._build_error(trt, model_path, str(error), errors) from None
        files = [log_path]
        if cache and Path(cache).is_file() and timing_out is not None:
            shutil.copyfile(cache, timing_out)
        if timing_out is not None and timing_out.is_file():
            files.append(timing_out)
        capabilities = self.options.get("compute_capabilities") or []
        details = {
            "tensorrt": {
                "flavour": flavour.name,
                "module": flavour.module,
                "version": version,
                "strongly_typed": True,
                "engine_bytes": engine_path.stat().st_size,
                "compute_capabilities": capabilities
                or (["default: " + ", ".join(f"{a}.{b}" for a, b in RTX_DEFAULT_TARGETS)])
                if flavour.rtx
                else None,
                "profiles": self.profiles.to_json(),
                "profile_notes": self.profiles.notes,
                "timing_cache": str(cache) if cache else None,
                "loaders": args.to_json(flavour),
            }
        }
        return BuildResult(flavour.name, engine_path, seconds, details, files)

    def _build_error(
        self, trt: Any, model_path: Path, message: str, logged: list[str]
    ) -> BuildError:
        """A BuildError naming the ONNX node the parser rejected, or TensorRT's own errors."""
        what = f"{self.flavour.title} {trt.__version__}"
        if PARSE_FAILED in message:
            issues = parse_errors(trt, model_path)
            if issues:
                first = issues[0]
                more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
                return BuildError(
                    f"{what} rejects node '{first.node}' ({first.op}): {first.cause}. "
                    f"Fix: {first.fix}{more}",
                    f"node '{first.node}'",
                )
        details = [_clean(line) for line in logged if _clean(line)]
        tail = "; ".join(details[-3:]) if details else _clean(message)
        return BuildError(f"{what} could not build the engine: {tail}")

    def cannot_run(self, build: BuildResult) -> str | None:
        gpu = find_gpu()
        if gpu is None:
            return "no CUDA GPU or driver on this machine"
        if self.flavour.rtx:
            named = [parse_compute_capability(c) for c in self.options["compute_capabilities"]]
            cc = gpu.compute_capability
            fits = cc in named if named else (cc in RTX_DEFAULT_TARGETS or cc >= (12, 0))
            if not fits:
                return (
                    f"the GPU ({gpu.name}, compute capability {cc[0]}.{cc[1]}) is not one the "
                    "engine was built for"
                )
        build.details["tensorrt"]["gpu"] = gpu.name
        return None

    def runner(self, build: BuildResult) -> Any:
        import_tensorrt(self.flavour)
        from polygraphy.backend.trt import EngineFromPath, TrtRunner

        engine = EngineFromPath(str(build.artifact))
        cache = self.options.get("runtime_cache") if self.flavour.rtx else None
        if cache:
            return _runtime_cache_runner(engine, Path(cache))
        return TrtRunner(engine, name="artifact")


def _runtime_cache_runner(engine_loader: Any, cache_path: Path) -> Any:
    """A TrtRunner whose execution context uses a TensorRT for RTX runtime cache, loaded from
    ``cache_path`` when it exists and saved back when the runner deactivates. Polygraphy has no
    runtime-cache loader, hence this."""
    from polygraphy.backend.trt import TrtRunner

    class RuntimeCacheRunner(TrtRunner):
        def __init__(self) -> None:
            super().__init__(self._context, name="artifact")
            self._engine = self._cache = None

        def _context(self) -> Any:
            self._engine = engine_loader()
            runtime_config = self._engine.create_runtime_config()
            self._cache = runtime_config.create_runtime_cache()
            if cache_path.is_file():
                self._cache.deserialize(cache_path.read_bytes())
            runtime_config.set_runtime_cache(self._cache)
            return self._engine.create_execution_context(runtime_config)

        def deactivate_impl(self) -> None:
            super().deactivate_impl()
            if self._cache is not None:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                cache_path.write_bytes(bytes(self._cache.serialize()))

    return RuntimeCacheRunner()
