"""A recipe as YAML, before its schema: the file and what it `extends`, merged, `--set`
overrides applied, path fields made absolute relative to the file that wrote them. YAML and
the standard library only: an unchanged recipe is recognized from this without pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import Place, RecipeError
from .positions import Document, KeyPath, load_yaml

MAX_EXTENDS_DEPTH = 16

SOURCE_PATH_FIELDS: tuple[tuple[str, ...], ...] = (
    ("npz",),
    ("npy",),
    ("script",),
    ("images", "folder"),
)
"""Path fields of a source, relative to the recipe file that writes them."""

PATH_FIELDS: tuple[KeyPath, ...] = (
    ("model",),
    ("output",),
    *(
        (*section, *field)
        for section in (("check", "data"), ("data", "calibration"), ("data", "validation"))
        for field in SOURCE_PATH_FIELDS
    ),
    ("build", "tensorrt", "timing_cache"),
    ("build", "tensorrt_rtx", "runtime_cache"),
    ("build", "onnxruntime", "tensorrt", "engine_cache_path"),
    ("build", "onnxruntime", "tensorrt", "timing_cache_path"),
    ("cache", "dir"),
    ("check", "golden"),
    ("check", "baseline"),
    ("deploy", "triton", "repository"),
)


def _load_document(path: Path, chain: tuple[Path, ...] = ()) -> Document:
    """Load a recipe file and, recursively, what it `extends`."""
    path = path.resolve()
    if path in chain:
        raise RecipeError("`extends` cycle: " + " -> ".join(str(p) for p in (*chain, path)))
    if len(chain) > MAX_EXTENDS_DEPTH:
        raise RecipeError(f"`extends` nested deeper than {MAX_EXTENDS_DEPTH}", str(path))
    document = load_yaml(path)
    if document.data is None:
        raise RecipeError("empty recipe", str(path))
    if not isinstance(document.data, dict):
        raise RecipeError("a recipe must be a mapping of keys", document.place(()))
    _absolutize(document.data, path.parent)
    base_name = document.data.pop("extends", None)
    if base_name is None:
        return document
    if not isinstance(base_name, str):
        raise RecipeError("`extends` must be a file path", document.place(("extends",)))
    base_path = path.parent / base_name
    if not base_path.is_file():
        raise RecipeError(f"extended recipe not found: {base_path}", document.place(("extends",)))
    return document.merged_over(_load_document(base_path, (*chain, path)))


def _absolutize(data: dict[Any, Any], base: Path) -> None:
    """Make path fields and plugins absolute relative to ``base``, the folder of the file
    that wrote them (so `extends` works) or the current one (``--set``)."""
    for path in PATH_FIELDS:
        parent: Any = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and isinstance(parent.get(path[-1]), str):
            parent[path[-1]] = str(base / parent[path[-1]])
    if isinstance(data.get("plugins"), list):
        data["plugins"] = [str(base / p) if isinstance(p, str) else p for p in data["plugins"]]


def parse_override(text: str, cwd: Path) -> tuple[KeyPath, Any]:
    """`check.samples=8` -> (('check', 'samples'), 8); values are YAML scalars or flows. Paths
    in the value (a path field, a section holding some, plugins) are relative to ``cwd``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError("expected KEY=VALUE", f"--set {text}")
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise RecipeError(
            f"'{key.strip()}' has an empty key (a doubled, leading or trailing dot)",
            f"--set {text}",
        )
    path: KeyPath = tuple(int(k) if k.isdigit() else k for k in keys)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise RecipeError(f"invalid value: {error}", f"--set {text}") from None
    return path, _absolute_value(path, value, cwd)


def _absolute_value(path: KeyPath, value: Any, base: Path) -> Any:
    """``value``, to be set at ``path``, with the paths in it made absolute relative to
    ``base``: the value itself where ``path`` is a path field or a plugin, the path fields
    inside it where it is a section (``--set check={data: {npz: x}}``)."""
    if path[:1] == ("plugins",) and len(path) == 2 and isinstance(value, str):
        return str(base / value)
    data: Any = value
    for key in reversed(path):
        data = {key: data}
    _absolutize(data, base)
    for key in path:
        data = data[key]
    return data


def load_document(path: Path, overrides: list[str] | None = None) -> Document:
    """A recipe file merged over what it `extends`, with ``overrides`` (``--set``) applied."""
    document = _load_document(path)
    for text in overrides or []:
        key_path, value = parse_override(text, Path.cwd())
        document = document.with_value(key_path, value, Place(f"--set {text}"))
    return document


def output_folder(output: str | None, name: str, folder: Path | None) -> Path:
    """Where a compile writes: `output`, else build/<name> beside the recipe file (``folder``;
    None: the current folder)."""
    if output:
        return Path(output)
    return (folder or Path()) / "build" / name


def input_paths(data: dict[str, Any], sources: tuple[Path, ...]) -> list[Path]:
    """Files and folders a compile of the recipe ``data`` (its path fields absolute) reads:
    its own files (``sources``: the recipe and what it `extends`), the model, data, golden
    and baseline files, caches, plugins. A glob stands for the folder before its first
    wildcard; a plain path that does not exist is left out."""
    found: list[str] = [str(p) for p in data.get("plugins") or [] if isinstance(p, str)]
    for path in PATH_FIELDS:
        value: Any = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and path != ("output",):
            found.append(value)
    found += [str(source) for source in sources]
    paths = []
    for text in dict.fromkeys(found):
        parts = Path(text).parts
        cut = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), None)
        path = Path(*parts[:cut]) if cut else Path(text)
        if cut is not None or path.exists():
            paths.append(path.absolute())
    return paths
