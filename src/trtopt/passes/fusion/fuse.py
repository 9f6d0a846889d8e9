"""``fuse``: run a list of fusions (or the whole catalogue) to a fixed point."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import field_validator

from ...errors import did_you_mean
from ..base import Pass, PassContext, PassOptions
from ..registry import get_pass, register_pass
from . import CATALOGUE

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

MAX_ROUNDS = 4


def resolve(name: str) -> str:
    """A catalogue member's registered name; ``conv-bn`` is short for ``fuse-conv-bn``."""
    if name in CATALOGUE:
        return name
    if f"fuse-{name}" in CATALOGUE:
        return f"fuse-{name}"
    short = [n.removeprefix("fuse-") for n in CATALOGUE]
    raise ValueError(f"unknown fusion '{name}'{did_you_mean(name, [*CATALOGUE, *short])}")


@register_pass("fuse")
class Fuse(Pass):
    """Run layer fusions and simplifications (a list of them, or ``all``) until none applies."""

    class Options(PassOptions):
        fusions: Literal["all"] | list[str] = "all"
        """Which fusions, by name (``conv-bn`` or ``fuse-conv-bn``), in catalogue order; ``all``
        is every one: dedup-initializers, cse, simplify-shapes, eliminate-pad-slice,
        eliminate-expand-tile, eliminate-transposes, eliminate-reshapes,
        eliminate-unsqueeze-squeeze, eliminate-casts, eliminate-noop-arith, fuse-pad-conv,
        fuse-conv-bn, fuse-convtranspose-bn, fuse-conv-mul, fuse-conv-add, fuse-gemm-bn,
        fuse-matmul-add, fuse-layernorm (opset 17), fuse-gelu (opset 20)."""
        exclude: list[str] = []
        """Fusions to leave out (of ``all`` or of the list)."""
        upgrade_opset: bool = False
        """Let fuse-layernorm and fuse-gelu raise the model's opset (to 17 and 20) when that
        changes no op's meaning; off: fusions that need a higher opset are skipped."""
        explain: bool = False
        """Log why each candidate that was not rewritten was refused (at INFO, not DEBUG)."""

        @field_validator("fusions", "exclude")
        @classmethod
        def _known(cls, value: str | list[str]) -> str | list[str]:
            if isinstance(value, list):
                return [resolve(name) for name in value]
            return value

    def __init__(self, options: PassOptions | None = None) -> None:
        super().__init__(options)
        self.rewrites = 0
        self.refusals: dict[str, list] = {}

    def members(self) -> list[Pass]:
        """The fusion passes this runs, in catalogue order, with their options."""
        chosen = CATALOGUE if self.options.fusions == "all" else self.options.fusions
        names = [n for n in CATALOGUE if n in chosen and n not in self.options.exclude]
        passes = []
        for name in names:
            cls = get_pass(name)
            fields = cls.Options.model_fields
            options = (
                {"upgrade_opset": True}
                if self.options.upgrade_opset and ("upgrade_opset" in fields)
                else {}
            )
            passes.append(cls(cls.Options(**options)))
        return passes

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        from ..graph_memo import memo  # graph code loads when a pass runs (Pass)
        from ..graph_shapes import invalidate_shapes
        from .simplify_shapes import fold_small_constants

        members = self.members()
        self.rewrites = 0
        invalidate_shapes(graph)
        memo(graph).shared_shapes = True
        try:
            for _ in range(MAX_ROUNDS):
                changed = 0
                for member in members:
                    graph = member.run(graph, ctx)
                    changed += getattr(member, "rewrites", 0)
                self.rewrites += changed
                if not changed:
                    break
                fold_small_constants(graph)
        finally:
            memo(graph).shared_shapes = False
            invalidate_shapes(graph)
        self.refusals = {m.name: list(getattr(m, "refusals", [])) for m in members}
        if self.options.explain:
            for name, refusals in self.refusals.items():
                for refusal in refusals:
                    ctx.log.info("%s: '%s' not rewritten: %s", name, refusal.node, refusal.reason)
        return graph
