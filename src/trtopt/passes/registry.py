"""The pass registry: built-in passes, plugin files and the ``trtopt.passes`` entry points."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import RecipeError, did_you_mean
from .base import Pass

ENTRY_POINT_GROUP = "trtopt.passes"
INFRASTRUCTURE_MODULES = {"base", "registry"}

_REGISTRY: dict[str, type[Pass]] = {}
_discovered = False


def register_pass(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator that registers a :class:`Pass` subclass under ``name``."""

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"@register_pass('{name}') needs a subclass of trtopt.Pass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"pass '{name}' is already registered by {existing.__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    """Import the built-in passes and the installed plugins once, on first use."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    # Every module of this package (and its subpackages) is a built-in pass family.
    package = importlib.import_module(__package__)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{__package__}."):
        if info.name.rpartition(".")[2] not in INFRASTRUCTURE_MODULES:
            importlib.import_module(info.name)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:
            raise RecipeError(
                f"plugin entry point '{entry_point.name}' ({entry_point.value}) failed to load: "
                f"{error}"
            ) from error


def available_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; an error with a suggestion when there is none."""
    passes = available_passes()
    if name not in passes:
        raise RecipeError(f"unknown pass '{name}'{did_you_mean(name, passes)}")
    return passes[name]


def load_plugin(path: Path) -> None:
    """Import a plugin file, whose ``@register_pass`` classes join the registry."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"plugin file not found: {path}")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"trtopt_plugin_{path.stem}_{digest}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise RecipeError(
            f"plugin {path} failed to load: {type(error).__name__}: {error}"
        ) from error
