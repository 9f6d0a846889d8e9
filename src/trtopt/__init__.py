"""trtopt: a declarative model compiler for NVIDIA TensorRT deployment.

Every CLI verb is a thin shell over these functions.
"""

from __future__ import annotations

# First: when trtopt runs as a program, Ctrl-C while the rest loads is exit 130, quietly.
from . import interrupt as _interrupt  # noqa: F401  # isort: skip

__version__ = "0.1.0"

from .batch import BatchResult, compile_many, summary_table, worst_exit_code
from .cache import CacheInfo, PruneResult, cache_info, prune_cache
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
from .farm import compile_on_ray
from .gate import CheckResult, check, format_check
from .golden import GOLDEN_SIZE_BUDGET, Golden, GoldenError, load_golden, update_golden
from .html import output_pairs, write_html
from .junit import junit_xml, write_junit
from .lint import LintError, LintReport, lint_model
from .model import load_model, save_model
from .passes import Pass, PassContext, PassOptions, available_passes, register_pass
from .pipeline import CompileResult, compile, optimize, optimize_file
from .recipe import Recipe, json_schema, load_recipe
from .stages import Rollback, RolledBack

__all__ = [
    "GOLDEN_SIZE_BUDGET",
    "BatchResult",
    "BuildError",
    "CacheInfo",
    "CheckResult",
    "CompileResult",
    "DataError",
    "DiffResult",
    "Golden",
    "GoldenError",
    "LintError",
    "LintReport",
    "ModelError",
    "Pass",
    "PassContext",
    "PassError",
    "PassOptions",
    "PruneResult",
    "Recipe",
    "RecipeError",
    "Rollback",
    "RolledBack",
    "TrtoptError",
    "UserError",
    "__version__",
    "available_passes",
    "cache_info",
    "check",
    "compile",
    "compile_many",
    "compile_on_ray",
    "diff_reports",
    "format_check",
    "json_schema",
    "junit_xml",
    "lint_model",
    "load_golden",
    "load_model",
    "load_recipe",
    "optimize",
    "optimize_file",
    "output_pairs",
    "prune_cache",
    "register_pass",
    "save_model",
    "summary_table",
    "update_golden",
    "worst_exit_code",
    "write_html",
    "write_junit",
]
