"""trtopt: a declarative model compiler for NVIDIA TensorRT deployment.

Every CLI verb is a thin shell over these functions.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    BuildError,
    DataError,
    ModelError,
    PassError,
    RecipeError,
    TrtoptError,
    UserError,
)
from .passes import Pass, PassContext, PassOptions, available_passes, register_pass
from .pipeline import CompileResult, compile, optimize
from .recipe import Recipe, json_schema, load_recipe

__all__ = [
    "BuildError",
    "CompileResult",
    "DataError",
    "ModelError",
    "Pass",
    "PassContext",
    "PassError",
    "PassOptions",
    "Recipe",
    "RecipeError",
    "TrtoptError",
    "UserError",
    "__version__",
    "available_passes",
    "compile",
    "json_schema",
    "load_recipe",
    "optimize",
    "register_pass",
]
