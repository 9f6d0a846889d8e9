"""The pass interface: a named graph transformation with typed options."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..docstrings import describe_fields
from ..errors import DataError

if TYPE_CHECKING:  # for annotations only: validating a recipe's options loads no graph library
    import numpy as np
    import onnx_graphsurgeon as gs

    from ..calibration import DataSet


class PassOptions(BaseModel):
    """Options of a pass. Unknown keys are errors, so a typo never silently does nothing.
    Validators are built when options are first validated (``defer_build``): a recipe pays
    only for the passes it names."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra=describe_fields, defer_build=True
    )


@dataclass
class PassContext:
    """What a pass may use besides the graph.

    ``feeds`` holds sample input feeds (the check data) for passes that need real values;
    ``scratch_dir`` is a private folder that disappears after the compile.
    ``calibration`` is the recipe's calibration data set (streamed; None outside a compile),
    ``validation`` the feeds that automatic searches judge accuracy on (default: ``feeds``).
    ``artifacts_dir`` is where a pass may write files that ship with the output (None when
    nothing ships). A pass puts what the report should show about it in ``details``
    (JSON-serializable), and what a user should know in ``warnings``.
    """

    scratch_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("trtopt.passes"))
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    calibration: DataSet | None = None
    validation: list[dict[str, np.ndarray]] = field(default_factory=list)
    artifacts_dir: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def calibration_data(self, pass_name: str, measured: str) -> DataSet:
        """The calibration data a pass reads, checked before any work (the first feed's
        names, dtypes and shapes): a DataError when the recipe has none, and a warning when it
        is synthetic, naming what the pass ``measured`` on it."""
        if self.calibration is None:
            raise DataError(
                f"the {pass_name} pass needs calibration data (recipe: data.calibration)"
            )
        if self.calibration.synthetic:
            self.warnings.append(
                f"{pass_name}: {measured} on synthetic data; not representative of real inputs "
                "(declare data.calibration)"
            )
        self.calibration.first()
        return self.calibration


@dataclass
class PassResult:
    """What a pass did (as onnx-ir's ``PassResult``): the resulting graph, whether it changed
    it, and what the report lists about it. A pass may return a bare graph instead."""

    graph: gs.Graph
    modified: bool | None = None
    """Whether the graph changed; None (and a bare graph) lets the pipeline compare the graph's
    structure before and after."""
    kept: list[dict[str, Any]] = field(default_factory=list)
    """Nodes kept in higher precision and why, each ``{node, reason}`` (and ``op`` where
    known): the report lists them, ready to pin into the recipe."""
    coverage: dict[str, Any] | None = None
    """What a quantizing pass quantized: layers and MACs, quantized and quantizable."""


class Pass:
    """Base of every pass. Subclasses set ``Options`` and implement ``run``.

    ``run`` may modify ``graph`` in place and returns the resulting graph or a
    :class:`PassResult`. A pass that only rewrites constant values in place must say
    ``modified=True`` or give the tensor a new name, so that change detection (structure,
    not bytes) sees it. What the report should show about the pass goes in ``ctx.details``.

    ``trtopt validate`` imports a pass's module to check a recipe's options: its top level
    imports what ``Options`` needs (pydantic), graph libraries lazily (:mod:`trtopt.lazy`),
    and ``run`` imports the graph code it calls.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[PassOptions]] = PassOptions
    exact: ClassVar[bool] = True
    """Whether the pass keeps what the model computes (float reordering aside): after an exact
    pass the pipeline compares the outputs with the stage before and rolls the pass back when
    they moved. Precision and quantization passes change numbers on purpose: False."""

    def __init__(self, options: PassOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring: what ``trtopt passes`` prints."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph | PassResult:
        raise NotImplementedError
