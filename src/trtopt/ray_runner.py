"""Many recipes on a Ray cluster: one task per recipe, resources by backend, artifacts shipped
back into the caller's output folders.

Ray is an optional extra, imported only here and only when a cluster is used. A worker reads the
model, data and plugin files from the paths the recipe names (shared storage), compiles into
a temporary folder and returns that folder's files; the caller stages them beside the output
and swaps them in, so a failed or interrupted transfer leaves the previous output intact.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from . import report_text
from .batch import BatchResult, Job, prepare, run
from .errors import EXIT_INTERNAL, EXIT_USER, TrtoptError, UserError
from .positions import Document
from .recipe import Recipe, recipe_from_document
from .staging import commit, stage

RAY_EXTRA = "pip install 'trtopt[ray]'"
ACCELERATOR_PREFIX = "accelerator_type:"
"""Ray's resource name prefix for a node's accelerator model (what `accelerator_type`
requests)."""
CONNECT_TIMEOUT_S = 10.0
"""How long to wait for a host:port cluster address to accept a connection. Ray's own connect
retries for minutes against an address where nothing listens."""


class FarmError(UserError):
    """The Ray cluster cannot be used: Ray not installed, or nothing at the address."""


@dataclass(frozen=True)
class Resources:
    """What one recipe's task asks the cluster for."""

    num_cpus: float = 1
    num_gpus: float = 0
    accelerator_type: str | None = None
    """Ray's accelerator type (H100, A10G, L4, ...); None: any GPU."""

    def options(self) -> dict[str, Any]:
        """Keyword arguments for a Ray task's ``.options()``."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.accelerator_type is not None:
            options["accelerator_type"] = self.accelerator_type
        return options


def resources_for(recipe: Recipe) -> Resources:
    """A datacenter TensorRT build needs a GPU (of ``build.tensorrt.gpu``'s type when named);
    ONNX Runtime and TensorRT for RTX (ahead-of-time, for named compute capabilities) build on
    a CPU."""
    if recipe.build.backend == "tensorrt":
        return Resources(num_gpus=1, accelerator_type=recipe.build.tensorrt.gpu)
    return Resources()


def unsatisfiable(need: Resources, nodes: Sequence[dict[str, Any]]) -> str | None:
    """Why no live node of the cluster (``ray.nodes()``) can ever run a task asking ``need``,
    or None when one can. Checked per node, not on the cluster's totals: one task runs on one
    node. A task nothing can run would wait forever."""
    alive = [node.get("Resources") or {} for node in nodes if node.get("Alive")]
    wanted = ACCELERATOR_PREFIX + (need.accelerator_type or "")

    def fits(resources: dict[str, float]) -> bool:
        return (
            resources.get("CPU", 0) >= need.num_cpus
            and resources.get("GPU", 0) >= need.num_gpus
            and (need.accelerator_type is None or resources.get(wanted, 0) > 0)
        )

    if any(fits(resources) for resources in alive):
        return None
    if need.accelerator_type is not None:
        types = sorted(
            {
                key[len(ACCELERATOR_PREFIX) :]
                for resources in alive
                if resources.get("GPU", 0) > 0
                for key in resources
                if key.startswith(ACCELERATOR_PREFIX)
            }
        )
        have = f"GPU types there: {', '.join(types)}" if types else "it has no GPU"
        return (
            f"no node of the Ray cluster has a GPU of accelerator type "
            f"'{need.accelerator_type}' ({have})"
        )
    if need.num_gpus:
        return "no node of the Ray cluster has a GPU, which a TensorRT engine build needs"
    return f"no node of the Ray cluster has {need.num_cpus:g} CPU to compile on"


@dataclass
class _Task:
    """What a worker needs: the recipe as loaded on the caller (extends and --set applied, so
    the worker needs neither the recipe files nor the caller's working folder)."""

    recipe: str
    document: Document
    output_dir: str
    cache_dir: str | None
    use_cache: bool


@dataclass
class _Shipped:
    """A task's answer: the result and the output folder's files by relative path."""

    result: BatchResult
    files: dict[str, bytes]
    node: str
    worker_dir: str


def _compile_task(task: _Task) -> _Shipped:
    """Runs on a worker: compile into a temporary folder, return its files."""
    with tempfile.TemporaryDirectory(prefix="trtopt-ray-") as scratch:
        out = Path(scratch) / Path(task.output_dir).name
        job = Job(task.recipe, str(out), [], task.cache_dir, task.use_cache)
        try:
            recipe = recipe_from_document(task.document)  # loads plugins on this worker
        except TrtoptError as error:
            result = BatchResult(task.recipe, error.exit_code, "error", None, 0.0, str(error))
        else:
            result = run(job, recipe)
        files: dict[str, bytes] = {}
        if out.is_dir():
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    files[path.relative_to(out).as_posix()] = path.read_bytes()
        return _Shipped(result, files, socket.gethostname(), str(out))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FarmError(
            f"running recipes on a Ray cluster needs Ray: {RAY_EXTRA}", "--ray"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast where nothing listens at a HOST:PORT address (``auto`` and URLs such as
    ``ray://`` are left to Ray, which answers those quickly)."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise FarmError("expected HOST:PORT or auto", f"--ray {address}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise FarmError(
            f"no Ray cluster answers there ({error.strerror or error})", f"--ray {address}"
        ) from None


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to the cluster; False when this process already was (then it stays so)."""
    if ray.is_initialized():
        return False
    if address is None:
        address = "auto"
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FarmError(f"cannot connect to the Ray cluster: {first}", f"--ray {address}") from None
    return True


def _relocated(value: Any, worker_dir: str, out: Path) -> Any:
    """``value`` (report.json's data) with the worker's output folder replaced by ``out`` in
    every path that names a file in it."""
    if isinstance(value, dict):
        return {key: _relocated(item, worker_dir, out) for key, item in value.items()}
    if isinstance(value, list):
        return [_relocated(item, worker_dir, out) for item in value]
    if isinstance(value, str) and (value == worker_dir or value.startswith(worker_dir + "/")):
        return str(out) + value[len(worker_dir) :]
    return value


def _deliver(shipped: _Shipped, output_dir: str) -> BatchResult:
    """Write a task's files into the caller's output folder the way a local compile does:
    staged beside it, swapped in once complete. report.json is made to name this folder."""
    result = shipped.result
    result.message = result.message.replace(shipped.worker_dir, output_dir)
    if result.exit_code != 0 and not shipped.files and result.message:
        result.message += f" (on Ray node {shipped.node})"
    result.output_dir = output_dir
    if not shipped.files:
        return result
    out = Path(output_dir)
    staging = stage(out)
    try:
        for name, data in shipped.files.items():
            relative = PurePosixPath(name)
            if relative.is_absolute() or ".." in relative.parts:
                raise TrtoptError(f"a Ray task returned a file outside its folder: {name}")
            path = staging.joinpath(*relative.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        report_path = staging / "report.json"
        if report_path.is_file():
            the_report = _relocated(json.loads(report_path.read_text()), shipped.worker_dir, out)
            the_report["built_on"] = {"ray_node": shipped.node}
            report_text.write_reports(the_report, staging)
        commit(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def compile_on_ray(
    recipes: Sequence[str | Path],
    address: str | None = "auto",
    output_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Callable[[BatchResult], None] | None = None,
) -> list[BatchResult]:
    """Compile each recipe as a Ray task on the cluster at ``address`` (the head's HOST:PORT,
    or ``auto``; None: the cluster this process is already connected to, else auto); results
    in the order of ``recipes``, as :func:`trtopt.compile_many` gives them.

    A datacenter TensorRT recipe asks for one GPU (of ``build.tensorrt.gpu``'s accelerator
    type when set), every other recipe for one CPU; a recipe no node can ever run fails at
    once (exit 2) instead of waiting. Workers read the model and data from the paths the
    recipe names, so those must be on storage every node sees; ``cache_dir`` is a folder on
    the workers. Each recipe's output is written where a local batch would put it.
    """
    ray = _import_ray()
    overrides = list(overrides or [])
    report_done = progress or (lambda result: None)
    prepared = prepare(recipes, output_dir, overrides)
    results: dict[int, BatchResult] = {}
    for index, item in enumerate(prepared):
        if isinstance(item, BatchResult):
            results[index] = item
            report_done(item)
    todo = [(i, item) for i, item in enumerate(prepared) if not isinstance(item, BatchResult)]
    if not todo:
        return [results[i] for i in range(len(recipes))]
    connected = _connect(ray, address)
    submitted: dict[Any, tuple[int, str]] = {}
    try:
        nodes = ray.nodes()
        task = ray.remote(_compile_task)
        cache = str(cache_dir) if cache_dir is not None else None
        for index, (recipe, out) in todo:
            label = str(recipes[index])
            need = resources_for(recipe)
            problem = unsatisfiable(need, nodes)
            if problem is not None:
                field = ("tensorrt", "gpu") if need.accelerator_type else ("backend",)
                message = f"{recipe.place('build', *field)}: {problem}"
                results[index] = BatchResult(label, EXIT_USER, "error", out, 0.0, message)
                report_done(results[index])
                continue
            document = recipe._document or Document(recipe.model_dump(mode="json"), {})
            job = _Task(label, document, out, cache, use_cache)
            submitted[task.options(**need.options()).remote(job)] = (index, out)
        pending = list(submitted)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                index, out = submitted.pop(ref)
                results[index] = _collect(ray, ref, str(recipes[index]), out)
                report_done(results[index])
    except BaseException:
        # Interrupted: a cancelled task gets KeyboardInterrupt and ends its compile through
        # the usual cleanup; the caller's output folders were never touched by it.
        for ref in submitted:
            ray.cancel(ref)
        raise
    finally:
        if connected:
            ray.shutdown()
    return [results[i] for i in range(len(recipes))]


def _collect(ray: Any, ref: Any, label: str, out: str) -> BatchResult:
    """A finished task's result, its files written into ``out``; a failure of the task or of
    the transfer is that recipe's result, as in a local batch, and never stops the others."""
    try:
        shipped = ray.get(ref)
    except ray.exceptions.RayError as error:  # the worker died, or could not run the task
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        message = f"internal error: the Ray task failed: {first}"
        return BatchResult(label, EXIT_INTERNAL, "error", out, 0.0, message)
    seconds = shipped.result.seconds
    try:
        return _deliver(shipped, out)
    except TrtoptError as error:
        return BatchResult(label, error.exit_code, "error", out, seconds, str(error))
    except Exception as error:  # e.g. the output folder is not writable
        message = f"internal error: {type(error).__name__}: {error}"
        return BatchResult(label, EXIT_INTERNAL, "error", out, seconds, message)


__all__ = ["RAY_EXTRA", "FarmError", "Resources", "compile_on_ray", "resources_for"]
