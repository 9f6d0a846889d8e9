"""Graph passes: the interface, the registry, and the built-in passes (one module a family)."""

from .base import Pass, PassContext, PassOptions, PassResult
from .registry import available_passes, get_pass, load_plugin, register_pass

# Fusions run after constant folding (they match constant weights) and before shape inference.
DEFAULT_PASSES: tuple[str, ...] = (
    "cleanup",
    "fold-constants",
    "fuse",
    "infer-shapes",
    "cleanup",
)

__all__ = [
    "DEFAULT_PASSES",
    "Pass",
    "PassContext",
    "PassOptions",
    "PassResult",
    "available_passes",
    "get_pass",
    "load_plugin",
    "register_pass",
]
