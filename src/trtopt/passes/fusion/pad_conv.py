"""``fuse-pad-conv``: fold a zero constant Pad of the spatial dims into the Conv's pads."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import register_pass
from .base import Fusion
from .edit import replace_root
from .pattern import Const, Match, Op, Opt, Var

PATTERN = Op(
    "Conv",
    Op("Pad", Var("x"), Opt(Const("pads")), Opt(Const("value")), Opt(Const("axes")), name="pad"),
    Const("w"),
    Opt(Var("b")),
    name="conv",
)


def full_pads(match: Match, rank: int) -> np.ndarray | str:
    """The Pad's [begin..., end...] over all ``rank`` dims, or why it cannot be read."""
    pad = match["pad"]
    pads = match.value("pads") if "pads" in match else pad.attrs.get("pads")
    if pads is None:
        return "Pad has no constant pads"
    pads = np.asarray(pads, dtype=np.int64).reshape(-1)
    axes = match.value("axes").astype(np.int64) if "axes" in match else np.arange(rank)
    if len(pads) != 2 * len(axes):
        return f"Pad pads {pads.tolist()} do not match its axes"
    full = np.zeros(2 * rank, dtype=np.int64)
    for i, axis in enumerate(axes % rank):
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    return full


def _auto_pad(conv: gs.Node) -> str:
    value = conv.attrs.get("auto_pad", "NOTSET")
    return value.decode() if isinstance(value, bytes) else str(value)


@register_pass("fuse-pad-conv")
class FusePadConv(Fusion):
    """Fold a zero-valued constant Pad of the spatial dims into the next Conv's pads (any opset)."""

    pattern = PATTERN

    def check(self, match: Match, graph: gs.Graph) -> str | None:
        pad, conv = match["pad"], match["conv"]
        if pad.attrs.get("mode", "constant") not in ("constant", b"constant"):
            return f"Pad mode is {pad.attrs['mode']}"
        value = match.value("value") if "value" in match else pad.attrs.get("value", 0.0)
        if np.any(np.asarray(value) != 0):
            return f"Pad value is {value}, not 0"
        if _auto_pad(conv) not in ("NOTSET", "VALID"):
            return f"Conv uses auto_pad={conv.attrs['auto_pad']}"
        rank = match.value("w").ndim
        pads = full_pads(match, rank)
        if isinstance(pads, str):
            return pads
        if np.any(pads < 0):
            return f"Pad crops ({pads.tolist()})"
        if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
            return "Pad pads the batch or channel dim"
        return None

    def rewrite(self, match: Match, graph: gs.Graph) -> None:
        conv, rank = match["conv"], match.value("w").ndim
        pads = full_pads(match, rank)
        assert not isinstance(pads, str)
        spatial = rank - 2
        old = list(conv.attrs.get("pads", [0] * (2 * spatial)))
        if _auto_pad(conv) == "VALID":  # no padding, written as pads from now on
            old = [0] * (2 * spatial)
        new = [old[i] + int(pads[2 + i]) for i in range(spatial)]
        new += [old[spatial + i] + int(pads[rank + 2 + i]) for i in range(spatial)]
        attrs = dict(conv.attrs, pads=new)
        attrs.pop("auto_pad", None)
        inputs = [match["x"], match["w"]] + ([match["b"]] if "b" in match else [])
        replace_root(graph, match, "Conv", inputs, attrs, name=conv.name)
