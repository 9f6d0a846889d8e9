"""trtopt: a declarative model compiler for NVIDIA TensorRT deployment.

Every CLI verb is a thin shell over these functions. Each name is imported when first used
(PEP 562), so ``import trtopt`` and the command line start at once: nothing heavy (ONNX,
ONNX Runtime, Polygraphy) loads until a verb needs it.
"""

from __future__ import annotations

# First: when trtopt runs as a program, Ctrl-C while the rest loads is exit 130, quietly.
from . import interrupt as _interrupt  # isort: skip

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {
    "batch": ("BatchResult", "compile_many", "summary_table", "worst_exit_code"),
    "cache": ("CacheInfo", "PruneResult", "cache_info", "prune_cache"),
    "compile_result": ("CompileResult",),
    "deploy": ("TritonModel", "deploy_to_triton", "write_model_repository"),
    "deploy.monitor": ("MonitorResult", "monitor"),
    "diff": ("DiffResult", "diff_reports"),
    "front": ("compile",),
    "errors": (
        "BuildError",
        "DataError",
        "ModelError",
        "PassError",
        "RecipeError",
        "TrtoptError",
        "UserError",
    ),
    "gate": ("CheckResult", "check", "format_check", "update_golden"),
    "golden": ("GOLDEN_SIZE_BUDGET", "Golden", "GoldenError", "load_golden"),
    "html": ("output_pairs", "write_html"),
    "junit": ("junit_xml", "write_junit"),
    "lint": ("LintError", "LintReport", "lint_model"),
    "model": ("load_model", "save_model"),
    "passes": ("Pass", "PassContext", "PassOptions", "available_passes", "register_pass"),
    "optimizer": ("optimize", "optimize_file"),
    "ray_runner": ("compile_on_ray",),
    "recipe": ("Recipe", "json_schema", "load_recipe"),
    "stages": ("Rollback", "RolledBack"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(["__version__", *_MODULE_OF])


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'trtopt' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and editors see: the same names, imported eagerly
    from .batch import BatchResult, compile_many, summary_table, worst_exit_code
    from .cache import CacheInfo, PruneResult, cache_info, prune_cache
    from .compile_result import CompileResult
    from .deploy import TritonModel, deploy_to_triton, write_model_repository
    from .deploy.monitor import MonitorResult, monitor
    from .diff import DiffResult, diff_reports
    from .errors import (
        BuildError,
        DataError,
        ModelError,
        PassError,
        RecipeError,
        TrtoptError,
        UserError,
    )
    from .front import compile
    from .gate import CheckResult, check, format_check, update_golden
    from .golden import GOLDEN_SIZE_BUDGET, Golden, GoldenError, load_golden
    from .html import output_pairs, write_html
    from .junit import junit_xml, write_junit
    from .lint import LintError, LintReport, lint_model
    from .model import load_model, save_model
    from .optimizer import optimize, optimize_file
    from .passes import Pass, PassContext, PassOptions, available_passes, register_pass
    from .ray_runner import compile_on_ray
    from .recipe import Recipe, json_schema, load_recipe
    from .stages import Rollback, RolledBack
