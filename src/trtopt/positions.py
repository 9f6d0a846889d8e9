"""YAML documents that remember where every key and value came from.

PyYAML's composed node tree carries marks; pydantic reports errors by key path. This module
joins the two: a document is plain data plus a map from key path to :class:`Place`, so any
error found later (schema, unknown pass, input name) can name ``file:line:column``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .errors import Place, RecipeError

KeyPath = tuple[str | int, ...]

MAX_NODES = 100_000
"""Most values a recipe may hold once its aliases are expanded: a few hundred bytes of nested
aliases (a "billion laughs" document) would otherwise expand to billions."""
MAX_DEPTH = 100
"""Deepest nesting of mappings and lists in a recipe."""


class Document:
    """Data loaded from YAML (or set by flags) and the place of every key path in it."""

    def __init__(
        self, data: Any, places: dict[KeyPath, Place], sources: tuple[Path, ...] = ()
    ) -> None:
        self.data = data
        self.places = places
        self.sources = sources
        """The files merged into it, the document's own first (with what it extends)."""

    def place(self, path: KeyPath) -> Place | None:
        """The place of ``path``, or of its deepest known ancestor."""
        for end in range(len(path), -1, -1):
            place = self.places.get(tuple(path[:end]))
            if place is not None:
                return place
        return None

    def merged_over(self, base: Document) -> Document:
        """This document deep-merged over ``base``: mappings merge, lists and scalars replace."""
        places = dict(base.places)
        places.update(self.places)
        return Document(_deep_merge(base.data, self.data), places, self.sources + base.sources)

    def with_value(self, path: KeyPath, value: Any, place: Place) -> Document:
        """A copy with ``value`` set at ``path`` (creating mappings on the way)."""
        data = copy.deepcopy(self.data) if self.data is not None else {}
        target = data
        for i, key in enumerate(path[:-1]):
            child = _child(target, key)
            if child is None:
                child = {}
                _assign(target, key, child, path[: i + 1], place)
            target = child
        _assign(target, path[-1], value, path, place)
        places = {k: v for k, v in self.places.items() if k[: len(path)] != path}
        places[path] = place
        return Document(data, places, self.sources)


def _child(container: Any, key: str | int) -> Any:
    if isinstance(container, dict):
        return container.get(key)
    if (
        isinstance(container, list)
        and isinstance(key, int)
        and -len(container) <= key < len(container)
    ):
        return container[key]
    return None


def _assign(container: Any, key: str | int, value: Any, path: KeyPath, place: Place) -> None:
    if isinstance(container, dict):
        container[key] = value
    elif isinstance(container, list) and isinstance(key, int) and key < len(container):
        container[key] = value
    else:
        dotted = ".".join(str(k) for k in path)
        raise RecipeError(f"cannot set '{dotted}': its parent is not a mapping", place)


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return override


def _place(file: str, node: yaml.Node) -> Place:
    return Place(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _index(
    node: yaml.Node,
    path: KeyPath,
    file: str,
    places: dict[KeyPath, Place],
    open_nodes: tuple[int, ...] = (),
) -> None:
    """Record the place of every key path under ``node``; refuse duplicate keys, keys that
    are not plain values, and aliases that recurse or expand past :data:`MAX_NODES`.
    ``open_nodes``: the ids of the collections being indexed above ``node``."""
    if len(places) > MAX_NODES:
        raise RecipeError(
            f"the recipe expands to more than {MAX_NODES} values (nested aliases?)",
            _place(file, node),
        )
    if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        return
    if id(node) in open_nodes:
        raise RecipeError("an alias refers to a value that contains it", _place(file, node))
    if len(open_nodes) >= MAX_DEPTH:
        raise RecipeError(f"nested deeper than {MAX_DEPTH} levels", _place(file, node))
    inner = (*open_nodes, id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
                raise RecipeError(
                    f"a key must be a plain value, not a {kind}", _place(file, key_node)
                )
            key = key_node.value
            if key in seen:
                raise RecipeError(f"duplicate key '{key}'", _place(file, key_node))
            seen.add(key)
            places[(*path, key)] = _place(file, key_node)
            _index(value_node, (*path, key), file, places, inner)
    else:
        for i, item in enumerate(node.value):
            places[(*path, i)] = _place(file, item)
            _index(item, (*path, i), file, places, inner)


def load_yaml(path: Path) -> Document:
    """Parse a YAML file with the safe loader, keeping the place of every key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"cannot read: {error}", str(path)) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise RecipeError("a NUL byte: not a text file", Place(str(path), line))
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as error:  # e.g. a control character the reader refuses
        position = getattr(error, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        raise RecipeError(f"invalid YAML: {error}", Place(str(path), line)) from None
    try:
        node = loader.get_single_node()
        places: dict[KeyPath, Place] = {}
        if node is not None:
            places[()] = _place(str(path), node)
            _index(node, (), str(path), places)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = Place(str(path), mark.line + 1, mark.column + 1) if mark else Place(str(path))
        raise RecipeError(f"invalid YAML: {error.problem or error.context}", where) from None
    except yaml.YAMLError as error:
        raise RecipeError(f"invalid YAML: {error}", str(path)) from None
    finally:
        loader.dispose()
    return Document(data, places, (path,))
