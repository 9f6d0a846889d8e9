"""A Triton Inference Server model repository entry from a finished compile.

:func:`model_config` derives the model configuration from what the compile knows, never from
hand-typed fields: tensor names, data types and dims from the final ONNX graph (``model.onnx``,
the artifact itself or the graph kept beside an engine), the batch dim, ``max_batch_size`` and
the preferred batch sizes from the optimization profiles, the platform from the backend.
:func:`write_model_repository` writes ``REPO/<name>/<version>/`` (``model.plan``, or
``model.onnx``: a folder holding the model and its external data when it has any) through a
hidden staging folder renamed into place, never over an existing version, then replaces
``REPO/<name>/config.pbtxt`` in one step. It deletes and replaces nothing it did not write: a
config.pbtxt without trtopt's header is refused, other files and versions are left alone.

The config text is written here, so deploying needs no protobuf package; the tests parse it
with Triton's own schema (tritonclient's ``model_config_pb2``, extra ``triton``). Field names
and values follow triton-inference-server/common ``protobuf/model_config.proto``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ..errors import ModelError, Place, RecipeError, UserError
from ..feeds import Dim, declared_dim
from ..model import external_data_files, load_model
from ..recipe import Recipe, TritonOptions, load_recipe
from ..report import SCHEMA_VERSION
from ..staging import owner, remove, remove_dead

CONFIG_FILE = "config.pbtxt"
CONFIG_HEADER = "# Written by trtopt"
"""First words of every config.pbtxt trtopt writes; a config without them is never replaced."""
PLAN_FILE = "model.plan"
ONNX_FILE = "model.onnx"
"""Triton's default model file names (``default_model_filename``) of its TensorRT and ONNX
Runtime backends; an ONNX model with external data is a folder of that name."""
GRAPH_FILE = "model.onnx"
"""The final ONNX graph in a compile's output folder (an engine is built from it)."""
ENGINE_BACKENDS = ("tensorrt", "tensorrt-rtx")
ONNXRUNTIME_DEFAULT_MAX_BATCH_SIZE = 4
"""max_batch_size where no profile bounds the batch of an ONNX model: what Triton's ONNX Runtime
backend sets itself for a model that can batch (its ``default-max-batch-size``)."""
VERSION_NAME = re.compile(r"^[1-9][0-9]*$")
"""Folder names Triton reads as versions; it ignores others and names starting with 0."""
TEMP_PREFIX = ".trtopt-"
"""Staging folders and config files being written: hidden, so Triton never reads them."""
MAX_CLAIMS = 64
"""Version numbers tried when other writers take the next one first."""

GRAPH_LEVELS = {"all": 0, "basic": -1, "extended": 1, "disable": 2}
"""build.onnxruntime.graph_optimization_level -> Triton's ``optimization.graph.level``
(onnxruntime_backend: -1 basic, 1 extended, 2 none; any other value all)."""

DATA_TYPES = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}
"""ONNX element type -> Triton data type (model_configuration.md, Datatypes)."""


TENSORRT_TYPES = frozenset(
    [
        *("TYPE_BOOL", "TYPE_UINT8", "TYPE_INT8", "TYPE_INT32", "TYPE_INT64"),
        *("TYPE_FP16", "TYPE_FP32", "TYPE_BF16"),
    ]
)
"""The data types Triton's TensorRT backend binds (tensorrt_backend, tensorrt_utils.cc)."""


@dataclass(frozen=True)
class _Runtime:
    """A Triton backend that serves one kind of artifact."""

    platform: str
    backend: str
    file: str
    title: str
    types: frozenset[str]
    """The data types it binds."""
    kind: str
    """Where its instances run by default."""


PLAN = _Runtime(
    "tensorrt_plan",
    "tensorrt",
    PLAN_FILE,
    "TensorRT",
    TENSORRT_TYPES,
    "gpu",
)
ONNXRUNTIME = _Runtime(
    "onnxruntime_onnx",
    "onnxruntime",
    ONNX_FILE,
    "ONNX Runtime",
    frozenset(DATA_TYPES.values()) - {"TYPE_BF16"},
    "cpu",
)

Where = Callable[..., Place | str]
"""Where a deploy option was written, from its keys under deploy.triton (for errors)."""


def option_place(*keys: str | int) -> str:
    """The default :data:`Where`: ``deploy.triton.<keys>``."""
    return ".".join(["deploy", "triton", *(str(k) for k in keys)])


@dataclass(frozen=True)
class TritonTensor:
    """One input or output as Triton's config declares it."""

    name: str
    data_type: str
    """Triton's data type, e.g. TYPE_FP32."""
    dims: tuple[int, ...]
    """The shape without the batch dim when the model batches; -1 where it is dynamic."""
    reshape: tuple[int, ...] | None = None
    """The model's own shape where Triton needs another: a tensor that is only its batch dim
    is declared as dims [1] and reshaped to [] (an unbatched scalar is dims [1], no reshape)."""


@dataclass(frozen=True)
class TritonConfig:
    """A model configuration (config.pbtxt), derived from a compile."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    instance_kind: str
    """KIND_GPU or KIND_CPU."""
    instance_count: int
    gpus: tuple[int, ...]
    version_policy: int | str | tuple[int, ...]
    """The newest N versions, "all", or the listed versions."""
    default_model_filename: str
    dynamic_batching: bool
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_microseconds: int
    graph_level: int | None
    """ONNX Runtime's graph optimization level in Triton's numbering (None: not ONNX Runtime)."""
    gpu_accelerators: tuple[str, ...]
    """Execution accelerators Triton's ONNX Runtime backend puts before CUDA (``tensorrt``)."""
    parameters: tuple[tuple[str, str], ...]
    source: str
    """What the config was written from, for its header."""
    notes: tuple[str, ...]
    """What a person serving the model should know (also written into the header)."""

    def text(self) -> str:
        """config.pbtxt in protobuf text format, the same bytes for the same config."""
        comments = [f"{CONFIG_HEADER} from {self.source}.", *self.notes]
        lines = [_comment(line) for line in comments]
        lines += [
            "# trtopt replaces this file on every deploy: change the recipe's deploy.triton.",
            f"name: {_quote(self.name)}",
            f"platform: {_quote(self.platform)}",
            f"backend: {_quote(self.backend)}",
            f"max_batch_size: {self.max_batch_size}",
            f"version_policy: {_policy_text(self.version_policy)}",
            *_tensors_text("input", self.inputs),
            *_tensors_text("output", self.outputs),
        ]
        if self.dynamic_batching:
            lines.append("dynamic_batching {")
            if self.preferred_batch_sizes:
                lines.append(f"  preferred_batch_size: {_list_text(self.preferred_batch_sizes)}")
            lines += [f"  max_queue_delay_microseconds: {self.max_queue_delay_microseconds}", "}"]
        lines += ["instance_group [", "  {", f"    count: {self.instance_count}"]
        lines.append(f"    kind: {self.instance_kind}")
        if self.gpus:
            lines.append(f"    gpus: {_list_text(self.gpus)}")
        lines += ["  }", "]", f"default_model_filename: {_quote(self.default_model_filename)}"]
        if self.graph_level is not None or self.gpu_accelerators:
            lines.append("optimization {")
            if self.graph_level is not None:
                lines.append(f"  graph {{ level: {self.graph_level} }}")
            if self.gpu_accelerators:
                # Precision is in the graph: the accelerator builds what it reads, in FP32.
                fp32 = 'parameters { key: "precision_mode" value: "FP32" }'
                accelerators = ", ".join(
                    f"{{ name: {_quote(name)} {fp32} }}" for name in self.gpu_accelerators
                )
                lines.append(
                    f"  execution_accelerators {{ gpu_execution_accelerator: [{accelerators}] }}"
                )
            lines.append("}")
        lines += [
            f"parameters {{ key: {_quote(k)} value {{ string_value: {_quote(v)} }} }}"
            for k, v in self.parameters
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TritonModel:
    """A model version written into a Triton model repository."""

    repository: Path
    name: str
    version: int
    config: TritonConfig
    files: tuple[str, ...]
    """The files of the version folder, relative to it."""

    @property
    def model_dir(self) -> Path:
        return self.repository / self.name

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.version)

    @property
    def config_path(self) -> Path:
        return self.model_dir / CONFIG_FILE

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "name": self.name,
            "version": self.version,
            "config": str(self.config_path),
            "files": list(self.files),
            "platform": self.config.platform,
            "max_batch_size": self.config.max_batch_size,
            "notes": list(self.config.notes),
        }


def model_config(
    output_dir: Path, options: TritonOptions | None = None, place: Where = option_place
) -> TritonConfig:
    """The Triton model configuration of the compile in ``output_dir`` (its report.json and
    final ONNX graph), without writing anything. ``options``: the recipe's deploy.triton
    (default: all defaults); ``place(*keys)`` says where an option under deploy.triton was
    written, for errors. Raises UserError (exit 2) naming the place of what is wrong."""
    return _derive(Path(output_dir), options or TritonOptions(), place)[0]


def write_model_repository(
    output_dir: Path,
    repository: Path,
    options: TritonOptions | None = None,
    place: Where = option_place,
) -> TritonModel:
    """Write the compile in ``output_dir`` into the Triton model repository ``repository``
    (created if missing) as a new version of ``<name>`` (``options.name``, default the recipe's
    name), and replace ``<name>/config.pbtxt``. The version is ``options.version`` or one more
    than the highest in the repository; an existing version is a UserError, never replaced.
    ``options.repository`` is not read: the caller says which repository. Everything is
    checked before the repository is touched; a failure leaves it as it was."""
    options = options or TritonOptions()
    config, sources = _derive(Path(output_dir), options, place)
    repository = Path(repository)
    model_dir = repository / config.name
    _check_repository(repository, model_dir, options.version, place)
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_dead(model_dir, re.escape(TEMP_PREFIX) + r"(?:version|config)-")
    staging = model_dir / f"{TEMP_PREFIX}version-{owner()}{secrets.token_hex(4)}"
    os.mkdir(staging)  # the umask decides its mode, as for any folder the user makes
    try:
        for source, relative in sources:
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        version = _claim(staging, model_dir, options.version, place)
    except BaseException:
        remove(staging)
        raise
    _replace_file(model_dir, CONFIG_FILE, config.text())
    files = tuple(relative for _, relative in sources)
    return TritonModel(repository, config.name, version, config, files)


def deploy_to_triton(
    recipe: str | Path | Recipe,
    repository: str | Path | None = None,
    output_dir: str | Path | None = None,
    overrides: list[str] | None = None,
) -> TritonModel:
    """Write a compiled recipe's output (``output_dir``, default the recipe's ``output``) into
    ``repository`` (default the recipe's ``deploy.triton.repository``) as a new version, with
    the recipe's ``deploy.triton`` options: what ``trtopt deploy RECIPE --triton REPO`` does."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    options = recipe.deploy.triton or TritonOptions()
    target = repository if repository is not None else options.repository
    if target is None:
        raise UserError(
            "no Triton model repository: pass --triton REPO or set deploy.triton.repository",
            recipe.place("deploy"),
        )
    out = Path(output_dir) if output_dir is not None else recipe.output_dir()
    return write_model_repository(out, Path(target), options, triton_place(recipe))


def triton_place(recipe: Recipe) -> Where:
    """Where an option under the recipe's deploy.triton was written, for errors."""
    return lambda *keys: recipe.place("deploy", "triton", *keys)


@dataclass(frozen=True)
class _Tensor:
    """A graph input or output as the final ONNX graph declares it."""

    name: str
    elem_type: int
    shape: tuple[Dim, ...] | None
    """None: the graph gives no shape (not even a rank)."""


def _derive(
    output_dir: Path, options: TritonOptions, place: Where
) -> tuple[TritonConfig, list[tuple[Path, str]]]:
    """The config, and the files of a version folder as (source, path inside the folder)."""
    report = _read_report(output_dir)
    build, recipe = report["build"], report["recipe"]
    backend = build["backend"]
    graph_path = output_dir / GRAPH_FILE
    engine = backend in ENGINE_BACKENDS and options.serve == "artifact"
    runtime = PLAN if engine else ONNXRUNTIME
    if not graph_path.is_file():
        raise UserError(f"the final ONNX graph {GRAPH_FILE} is missing", str(output_dir))
    graph = load_model(graph_path, external_data=False)
    if engine:
        artifact = output_dir / build["artifact"]
        if not artifact.is_file():
            raise UserError(f"the engine {build['artifact']} is missing", str(output_dir))
        sources = [(artifact, PLAN_FILE)]
    else:
        sources = _onnx_files(graph, graph_path)
    inputs, outputs = _graph_tensors(graph, graph_path)
    notes: list[str] = []
    profiles = _profiles(report)
    max_batch, opt_batches = _max_batch_size(
        inputs, outputs, profiles, runtime, options, place, notes
    )
    preferred = _preferred(options, max_batch, opt_batches, place)
    batched = max_batch > 0
    where = str(graph_path)
    providers = [] if engine else recipe["build"]["onnxruntime"].get("providers") or []
    on_gpu = options.instances.gpus or {"cuda", "tensorrt"} & set(providers)
    kind = options.instances.kind or ("gpu" if on_gpu else runtime.kind)
    if runtime is PLAN and kind == "cpu":
        raise RecipeError(
            "a TensorRT engine runs only on a GPU; `serve: onnx` serves the final ONNX graph "
            "on CPUs",
            place("instances", "kind"),
        )
    graph_level, parameters = _onnxruntime_settings(recipe) if not engine else (None, ())
    # The build's TensorRT provider, as Triton's ONNX Runtime backend names it; its CUDA
    # provider is what KIND_GPU instances run on.
    accelerators = ("tensorrt",) if "tensorrt" in providers and kind == "gpu" else ()
    notes += _engine_notes(build, recipe) if engine else []
    config = TritonConfig(
        name=options.name or recipe["name"],
        platform=runtime.platform,
        backend=runtime.backend,
        max_batch_size=max_batch,
        inputs=tuple(_triton_tensor(t, "input", batched, runtime, where) for t in inputs),
        outputs=tuple(_triton_tensor(t, "output", batched, runtime, where) for t in outputs),
        instance_kind=f"KIND_{kind.upper()}",
        gpu_accelerators=accelerators,
        instance_count=options.instances.count,
        gpus=tuple(options.instances.gpus),
        version_policy=tuple(options.version_policy)
        if isinstance(options.version_policy, list)
        else options.version_policy,
        default_model_filename=runtime.file,
        dynamic_batching=batched and options.dynamic_batching,
        preferred_batch_sizes=preferred if options.dynamic_batching else (),
        max_queue_delay_microseconds=options.max_queue_delay_microseconds,
        graph_level=graph_level,
        parameters=parameters,
        source=f"the compile of recipe '{recipe['name']}' ({backend} build, "
        f"{build['artifact']} sha256 {str(build.get('sha256'))[:16]})"
        + (
            f", serving its final ONNX graph {GRAPH_FILE}"
            if backend != "onnxruntime" and not engine
            else ""
        ),
        notes=tuple(notes),
    )
    return config, sources


def _onnx_files(graph: onnx.ModelProto, path: Path) -> list[tuple[Path, str]]:
    """An ONNX model's files in a version folder: model.onnx, or with external data a folder
    model.onnx/ holding model.onnx and the data files where the model finds them (Triton's
    layout of a model of several files)."""
    data = external_data_files(graph, path.parent)
    folder = f"{ONNX_FILE}/" if data else ""
    return [
        (path, folder + ONNX_FILE),
        *((p, folder + p.relative_to(path.parent).as_posix()) for p in data),
    ]


def _onnxruntime_settings(recipe: dict[str, Any]) -> tuple[int, tuple[tuple[str, str], ...]]:
    """build.onnxruntime as Triton's ONNX Runtime backend takes it: the graph optimization
    level, and the thread counts the recipe sets (0 leaves them to ONNX Runtime)."""
    ort = recipe["build"]["onnxruntime"]
    threads = tuple(
        (f"{key}_thread_count", str(ort[f"{key}_threads"]))
        for key in ("intra_op", "inter_op")
        if ort[f"{key}_threads"]
    )
    return GRAPH_LEVELS[ort["graph_optimization_level"]], threads


def _read_report(output_dir: Path) -> dict[str, Any]:
    """A finished, passing compile's report.json, or a UserError naming what is wrong."""
    path = output_dir / "report.json"
    if not path.is_file():
        raise UserError(
            "not the output folder of a finished compile (no report.json)", str(output_dir)
        )
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"report.json does not parse: {error}", str(path)) from None
    if not isinstance(report, dict) or report.get("schema_version") != SCHEMA_VERSION:
        found = report.get("schema_version") if isinstance(report, dict) else None
        raise UserError(
            f"report.json has schema version {found!r}, this trtopt reads {SCHEMA_VERSION}: "
            "compile again",
            str(path),
        )
    if report.get("verdict") != "pass":
        raise UserError(
            f"the compile did not pass (verdict {report.get('verdict')!r}, exit code "
            f"{report.get('exit_code')}); only a compile that passes is deployed",
            str(path),
        )
    try:
        report["build"]["backend"], report["build"]["artifact"]
        report["recipe"]["name"], report["recipe"]["build"]["onnxruntime"]
    except (KeyError, TypeError) as error:
        raise UserError(f"report.json lacks {error}: compile again", str(path)) from None
    return report


def _graph_tensors(graph: onnx.ModelProto, where: Path) -> tuple[list[_Tensor], list[_Tensor]]:
    initializers = {t.name for t in graph.graph.initializer}
    found: list[list[_Tensor]] = []
    for role, values in (("input", graph.graph.input), ("output", graph.graph.output)):
        tensors = []
        for value in values:
            if role == "input" and value.name in initializers:
                continue
            if value.type.WhichOneof("value") != "tensor_type":
                raise ModelError(
                    f"{role} '{value.name}' is not a tensor; Triton serves tensors only",
                    str(where),
                )
            tensor_type = value.type.tensor_type
            shape = (
                tuple(declared_dim(d) for d in tensor_type.shape.dim)
                if tensor_type.HasField("shape")
                else None
            )
            tensors.append(_Tensor(value.name, tensor_type.elem_type, shape))
        found.append(tensors)
    return found[0], found[1]


Range = tuple[Sequence[int], Sequence[int], Sequence[int]]
"""(min, opt, max) shapes of one input in one profile."""


def _profiles(report: dict[str, Any]) -> list[dict[str, Range]]:
    """The engine's optimization profiles; for an ONNX model, those the recipe writes."""
    built = (report["build"].get("tensorrt") or {}).get("profiles")
    if built:
        return [{n: (r["min"], r["opt"], r["max"]) for n, r in p.items()} for p in built]
    given = {
        name: [spec["profile"]] if spec.get("profile") else list(spec.get("profiles") or [])
        for name, spec in (report["recipe"].get("inputs") or {}).items()
    }
    given = {name: specs for name, specs in given.items() if specs}
    count = max((len(specs) for specs in given.values()), default=0)
    return [
        {
            name: (s["min"], s["opt"], s["max"])
            for name, specs in given.items()
            for s in [specs[index if len(specs) > 1 else 0]]
        }
        for index in range(count)
    ]


def _batch_problem(inputs: list[_Tensor], outputs: list[_Tensor], named: bool) -> str | None:
    """Why the first dim of every input and output is not a batch dim (None: it is one).
    ``named``: also require one symbolic name across them (an explicit max_batch_size does
    not)."""
    for tensor in (*inputs, *outputs):
        if not tensor.shape:
            what = "a scalar" if tensor.shape == () else "of unknown shape"
            return f"'{tensor.name}' is {what}"
        if isinstance(tensor.shape[0], int):
            return f"the first dim of '{tensor.name}' is fixed at {tensor.shape[0]}"
    if not named:
        return None
    names = sorted({str(t.shape[0]) for t in inputs if t.shape and t.shape[0] is not None})
    if len(names) > 1:
        return f"the inputs' first dims are different dims ({', '.join(names)})"
    for tensor in outputs:
        first = tensor.shape[0] if tensor.shape else None
        if names and first is not None and first != names[0]:
            return f"the first dim of output '{tensor.name}' is '{first}', not '{names[0]}'"
    return None


def _profile_batches(
    profiles: list[dict[str, Range]], inputs: list[_Tensor]
) -> tuple[int | None, list[int]]:
    """The largest B such that every batch 1..B fits one of the profiles (as Triton's
    TensorRT backend picks a profile per batch), and each profile's opt batch. None: no
    profile bounds the batch."""
    spans, opts, bounded = [], [], False
    for profile in profiles:
        shapes = [profile[t.name] for t in inputs if t.name in profile]
        bounded = bounded or bool(shapes)
        low = max((s[0][0] for s in shapes), default=0)
        high = min((s[2][0] for s in shapes), default=0)
        if shapes and low <= high:
            spans.append((low, high))
            opts.append(min(max(s[1][0] for s in shapes), high))
    if not bounded:
        return None, []
    covered = 0
    for low, high in sorted(spans):
        if low > covered + 1:
            break
        covered = max(covered, high)
    return covered, opts


def _max_batch_size(
    inputs: list[_Tensor],
    outputs: list[_Tensor],
    profiles: list[dict[str, Range]],
    runtime: _Runtime,
    options: TritonOptions,
    place: Where,
    notes: list[str],
) -> tuple[int, list[int]]:
    """max_batch_size, and the opt batch sizes of the profiles."""
    limit, opts = _profile_batches(profiles, inputs)
    asked = options.max_batch_size
    if asked == 0:
        return 0, []
    if asked is not None:
        problem = _batch_problem(inputs, outputs, named=False)
        if problem:
            raise RecipeError(
                f"max_batch_size {asked}: the model cannot batch, {problem}",
                place("max_batch_size"),
            )
        if runtime is PLAN and (limit or 0) < asked:
            raise RecipeError(
                f"max_batch_size {asked} is more than the engine's optimization profiles take "
                f"from batch 1 ({limit or 0}); widen inputs.<name>.profile",
                place("max_batch_size"),
            )
        return asked, opts
    problem = _batch_problem(inputs, outputs, named=True)
    if problem:
        if any(t.shape and not isinstance(t.shape[0], int) for t in inputs):
            notes.append(f"Served unbatched (max_batch_size 0): {problem}.")
        return 0, []
    if limit is None:
        if runtime is PLAN:
            notes.append("Served unbatched (max_batch_size 0): no profile bounds the batch.")
            return 0, []
        notes.append(
            f"No profile bounds the batch dim: max_batch_size {ONNXRUNTIME_DEFAULT_MAX_BATCH_SIZE}"
            ", as Triton's ONNX Runtime backend would pick (set deploy.triton.max_batch_size "
            "or inputs.<name>.profile)."
        )
        return ONNXRUNTIME_DEFAULT_MAX_BATCH_SIZE, []
    if limit == 0:
        notes.append(
            "Served unbatched (max_batch_size 0): no optimization profile takes batch 1 "
            "(give inputs.<name>.profile a min batch of 1)."
        )
        return 0, []
    return limit, opts


def _preferred(
    options: TritonOptions, max_batch: int, opts: list[int], place: Where
) -> tuple[int, ...]:
    asked = options.preferred_batch_sizes
    if asked is None:
        return tuple(sorted({o for o in opts if 1 <= o <= max_batch}))
    if max_batch == 0:
        raise RecipeError(
            "preferred_batch_sizes: the model is served unbatched (max_batch_size 0)",
            place("preferred_batch_sizes"),
        )
    for index, size in enumerate(asked):
        if size > max_batch:
            raise RecipeError(
                f"preferred batch size {size} is more than max_batch_size {max_batch}",
                place("preferred_batch_sizes", index),
            )
    return tuple(sorted(set(asked)))


def _triton_tensor(
    tensor: _Tensor, role: str, batched: bool, runtime: _Runtime, where: str
) -> TritonTensor:
    data_type = DATA_TYPES.get(tensor.elem_type)
    if data_type is None or data_type not in runtime.types:
        type_name = onnx.helper.tensor_dtype_to_string(tensor.elem_type)
        raise ModelError(
            f"{role} '{tensor.name}' is {type_name}, which Triton's {runtime.title} backend "
            "does not serve",
            where,
        )
    if tensor.shape is None:
        raise ModelError(
            f"{role} '{tensor.name}' has no shape in the final ONNX graph; add the "
            "infer-shapes pass to the recipe",
            where,
        )
    shape = tensor.shape[1:] if batched else tensor.shape
    dims = tuple(d if isinstance(d, int) else -1 for d in shape)
    if dims:
        return TritonTensor(tensor.name, data_type, dims)
    # Triton needs a non-empty dims. A tensor that is only its batch dim: [1] reshaped to [].
    # An unbatched scalar may not be reshaped to [] (Triton's core refuses it); its ONNX
    # Runtime backend reads dims of ones as the model's scalar, its TensorRT backend does not.
    if batched:
        return TritonTensor(tensor.name, data_type, (1,), ())
    if runtime is PLAN:
        raise ModelError(
            f"{role} '{tensor.name}' is a scalar, which Triton's TensorRT backend cannot serve "
            "unbatched; `serve: onnx` serves the final ONNX graph",
            where,
        )
    return TritonTensor(tensor.name, data_type, (1,))


def _engine_notes(build: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    """What serving this engine on Triton takes."""
    engine = build.get("tensorrt") or {}
    version = engine.get("version", "?")
    if build["backend"] == "tensorrt-rtx":
        return [
            f"A TensorRT for RTX {version} plan: Triton's TensorRT backend links datacenter "
            "TensorRT and cannot load it; it needs a backend built against TensorRT for RTX, "
            "else set deploy.triton.serve: onnx."
        ]
    options = recipe["build"].get("tensorrt") or {}
    gpus = (
        "any Ampere or later GPU"
        if options.get("hardware_compatibility_level") == "ampere_plus"
        else "GPUs of the compute capability it was built on"
    )
    notes = [
        f"Built with TensorRT {version}: serve it with the Triton release that ships this "
        f"TensorRT (each release's notes list it), on {gpus}."
    ]
    if options.get("version_compatible"):
        notes.append(
            "Version compatible: later TensorRT runtimes load it when tritonserver runs with "
            "--backend-config=tensorrt,version-compatible=true."
        )
    return notes


def _check_repository(repository: Path, model_dir: Path, version: int | None, place: Where) -> None:
    """Refuse, before anything is written, a repository entry trtopt must not touch."""
    for path in (repository, model_dir):
        if path.exists() and not path.is_dir():
            raise UserError("not a folder: a model repository holds model folders", str(path))
    config = model_dir / CONFIG_FILE
    if config.is_symlink() or (config.exists() and not _written_here(config)):
        raise UserError(
            f"{CONFIG_FILE} was not written by trtopt (no '{CONFIG_HEADER}' header); trtopt "
            "replaces only its own: move it away or set deploy.triton.name",
            str(config),
        )
    if version is not None and os.path.lexists(model_dir / str(version)):
        raise UserError(
            f"version {version} exists ({model_dir / str(version)}); a version is never "
            "replaced: choose another deploy.triton.version, or none for the next",
            place("version"),
        )


def _written_here(config: Path) -> bool:
    try:
        with config.open("rb") as file:
            return file.read(len(CONFIG_HEADER)) == CONFIG_HEADER.encode()
    except OSError:
        return False


def _claim(staging: Path, model_dir: Path, version: int | None, place: Where) -> int:
    """Rename the staged folder to its version, never over an existing one."""
    if version is not None:
        if not _rename_new(staging, model_dir / str(version)):
            raise UserError(
                f"version {version} exists ({model_dir / str(version)}); a version is never "
                "replaced: choose another deploy.triton.version, or none for the next",
                place("version"),
            )
        return version
    for _ in range(MAX_CLAIMS):
        versions = [int(n) for n in os.listdir(model_dir) if VERSION_NAME.match(n)]
        version = max(versions, default=0) + 1
        if _rename_new(staging, model_dir / str(version)):
            return version
    raise UserError(f"other writers took {MAX_CLAIMS} new versions first", str(model_dir))


AT_FDCWD, RENAME_NOREPLACE = -100, 1


def _rename_new(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target`` unless ``target`` exists (then False). On Linux one
    step (renameat2 RENAME_NOREPLACE, which the standard library does not expose) closes the
    race with another writer; elsewhere, or where the filesystem lacks it, a check comes first
    (os.rename would replace an empty folder)."""
    if sys.platform == "linux":
        try:
            renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            renameat2 = None
        if renameat2 is not None:
            done = renameat2(
                AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), RENAME_NOREPLACE
            )
            if done == 0:
                return True
            code = ctypes.get_errno()
            if code == errno.EEXIST:
                return False
            if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                raise OSError(code, os.strerror(code), str(target))
    if os.path.lexists(target):
        return False
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    return True


def _replace_file(folder: Path, name: str, text: str) -> None:
    """Write ``folder/name`` in one step: a reader sees the old file or the new one."""
    temp = folder / f"{TEMP_PREFIX}config-{owner()}{secrets.token_hex(4)}"
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, folder / name)
    except BaseException:
        remove(temp)
        raise


def _comment(text: str) -> str:
    """A one-line comment, whatever a tensor name in it holds."""
    return "# " + "".join(c if c.isprintable() else "?" for c in text).removeprefix("# ")


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    body = "".join(
        escaped.get(c, c if c.isprintable() or ord(c) > 127 else f"\\{ord(c):03o}") for c in text
    )
    return f'"{body}"'


def _list_text(values: Sequence[int]) -> str:
    return f"[ {', '.join(str(v) for v in values)} ]" if values else "[ ]"


def _policy_text(policy: int | str | tuple[int, ...]) -> str:
    if policy == "all":
        return "{ all { } }"
    if isinstance(policy, tuple):
        return f"{{ specific {{ versions: {_list_text(policy)} }} }}"
    return f"{{ latest {{ num_versions: {policy} }} }}"


def _tensors_text(role: str, tensors: Sequence[TritonTensor]) -> list[str]:
    lines = [f"{role} ["]
    for index, tensor in enumerate(tensors):
        lines += [
            "  {",
            f"    name: {_quote(tensor.name)}",
            f"    data_type: {tensor.data_type}",
            f"    dims: {_list_text(tensor.dims)}",
        ]
        if tensor.reshape is not None:
            lines.append(f"    reshape: {{ shape: {_list_text(tensor.reshape)} }}")
        lines.append("  }," if index < len(tensors) - 1 else "  }")
    return [*lines, "]"]
