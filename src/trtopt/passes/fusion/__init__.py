"""Layer fusion and graph simplification: one module per fusion, all built on ``pattern``.

``CATALOGUE`` is the order the ``fuse`` pass runs them in: cheap clean-ups that expose patterns
first (deduplication, shape chains, eliminations), then the weight folds, then the op fusions.
"""

CATALOGUE: tuple[str, ...] = (
    "dedup-initializers",
    "cse",
    "simplify-shapes",
    "eliminate-pad-slice",
    "eliminate-expand-tile",
    "eliminate-transposes",
    "eliminate-reshapes",
    "eliminate-unsqueeze-squeeze",
    "eliminate-casts",
    "eliminate-noop-arith",
    "fuse-pad-conv",
    "fuse-conv-bn",
    "fuse-convtranspose-bn",
    "fuse-conv-mul",
    "fuse-conv-add",
    "fuse-gemm-bn",
    "fuse-matmul-add",
    "fuse-layernorm",
    "fuse-gelu",
)
