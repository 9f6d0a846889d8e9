"""Heavy libraries imported when first used, as Polygraphy's ``mod.lazy_import``: a module
that names numpy or onnxruntime at its top can be imported by ``trtopt validate`` (which
reads pass options, not graphs) or by a compile served from the cache without loading them.

    if TYPE_CHECKING:
        import numpy as np
    else:
        np = lazy_import("numpy", globals())
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """Stands for the module of its name in one module's globals until an attribute is read:
    then imports it and puts it in its place there, so that later reads (and tests that patch
    the module) reach the module itself."""

    def __init__(self, name: str, namespace: dict[str, Any]) -> None:
        super().__init__(name)
        self.__dict__["_namespace"] = namespace

    def _load(self) -> ModuleType:
        module = importlib.import_module(self.__name__)
        namespace = self.__dict__["_namespace"]
        for key, value in list(namespace.items()):
            if value is self:
                namespace[key] = module
        return module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._load(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._load(), name, value)


def lazy_import(name: str, namespace: dict[str, Any]) -> ModuleType:
    """The module ``name`` for the module whose ``globals()`` are ``namespace``, imported on
    first use."""
    return LazyModule(name, namespace)
