"""The pass registry: built-in passes, plugin files and the ``trtopt.passes`` entry points."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import pkgutil
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import RecipeError, did_you_mean
from ..usercode import import_file, no_exit
from .base import Pass

ENTRY_POINT_GROUP = "trtopt.passes"
INFRASTRUCTURE_MODULES = {"base", "registry"}
PLUGIN_MODULE_PREFIX = "trtopt_plugin_"
"""Module name of a plugin file loaded by :func:`load_plugin`."""

_REGISTRY: dict[str, type[Pass]] = {}
_PLUGIN_PASSES: dict[str, dict[str, type[Pass]]] = {}
"""Module name of a plugin file -> the passes it registered (re-registered when a recipe
names the file again, after another recipe's plugin took one of its names)."""
_discovered = False
_BUILTIN_NAME = re.compile(r'^@register_pass\("([^"]+)"\)', re.MULTILINE)
_builtins: dict[str, str] | None = None


def _origin(cls: type) -> str:
    """The file that defines a pass class (its module's name where there is no file)."""
    return str(getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__)


def register_pass(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator that registers a :class:`Pass` subclass under ``name``.

    A name belongs to one class: a plugin file cannot take a built-in's or an installed
    package's name, nor register one name twice. Plugin files of different recipes may
    share a name (each recipe's own is registered when it is loaded; see ``load_plugins``).
    """

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"@register_pass('{name}') needs a subclass of trtopt.Pass")
        existing = _REGISTRY.get(name)
        plugin = cls.__module__.startswith(PLUGIN_MODULE_PREFIX)
        if existing is not None and _origin(existing) != _origin(cls):
            if not (plugin and existing.__module__.startswith(PLUGIN_MODULE_PREFIX)):
                raise RecipeError(
                    f"pass '{name}' is registered twice: by {_origin(existing)} and by "
                    f"{_origin(cls)}"
                )
        elif existing is not None and existing.__qualname__ != cls.__qualname__:
            raise RecipeError(
                f"pass '{name}' is registered twice in {_origin(cls)}: by "
                f"{existing.__qualname__} and by {cls.__qualname__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        if plugin:
            _PLUGIN_PASSES.setdefault(cls.__module__, {})[name] = cls
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
        except RecipeError:
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # SystemExit too: user code cannot end trtopt
            raise RecipeError(
                f"plugin entry point '{entry_point.name}' ({entry_point.value}) failed to load: "
                f"{error}"
            ) from error


def _builtin_modules() -> dict[str, str]:
    """Each built-in pass's name and the module that registers it, read from the package's
    sources (their ``@register_pass("name")`` lines), so that naming one pass imports its
    module alone: checking a recipe need not import every pass's dependencies."""
    global _builtins
    if _builtins is None:
        package = Path(__file__).parent
        _builtins = {}
        for path in sorted(package.rglob("*.py")):
            module = ".".join(path.relative_to(package).with_suffix("").parts)
            for name in _BUILTIN_NAME.findall(path.read_text(encoding="utf-8")):
                _builtins.setdefault(name, f"{__package__}.{module}")
    return _builtins


def available_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; an error with a suggestion when there is none."""
    module = _builtin_modules().get(name)
    if name not in _REGISTRY and module is not None:
        importlib.import_module(module)
    if name in _REGISTRY:
        return _REGISTRY[name]
    passes = available_passes()
    if name not in passes:
        raise RecipeError(f"unknown pass '{name}'{did_you_mean(name, passes)}")
    return passes[name]


def load_plugin(path: Path) -> dict[str, type[Pass]]:
    """Import a plugin file, whose ``@register_pass`` classes join the registry; the passes
    it registers, by name. A file imported before has its passes registered again.

    A plugin's import is user code: whatever it raises, ``SystemExit`` included (only
    Ctrl-C passes through), is a RecipeError naming the file, so that it cannot end trtopt
    with a success code of its own."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"plugin file not found: {path}")
    _discover()  # built-in names first, so that a plugin claiming one is the one refused
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"{PLUGIN_MODULE_PREFIX}{path.stem}_{digest}"
    if module_name in sys.modules:
        passes = _PLUGIN_PASSES.get(module_name, {})
        _REGISTRY.update(passes)
        return dict(passes)
    try:
        with no_exit():
            import_file(module_name, path)
    except KeyboardInterrupt:
        _forget(module_name)
        raise
    except RecipeError as error:
        _forget(module_name)
        raise RecipeError(f"plugin {path}: {error.message}") from None
    except BaseException as error:
        _forget(module_name)
        raise RecipeError(
            f"plugin {path} failed to load: {type(error).__name__}: {error}"
        ) from error
    return dict(_PLUGIN_PASSES.get(module_name, {}))


def _forget(module_name: str) -> None:
    """Undo a failed plugin import: its module and the passes it registered so far."""
    sys.modules.pop(module_name, None)
    for name, cls in _PLUGIN_PASSES.pop(module_name, {}).items():
        if _REGISTRY.get(name) is cls:
            del _REGISTRY[name]
