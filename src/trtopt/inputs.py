"""What a recipe feeds the model: its names checked against the model, its declared shapes
written in, the check feeds, and the data the passes stream (calibration, validation)."""

from __future__ import annotations

from typing import Any

import onnx

from .calibration import DataSet, DataSource, SyntheticSource
from .errors import DataError, RecipeError, did_you_mean
from .feeds import DEFAULT_DIM, Feed, declared_dim, model_inputs, synthetic_feeds
from .recipe import Recipe


def check_model_names(model: onnx.ModelProto, recipe: Recipe) -> None:
    """Refuse a recipe naming what ``model`` lacks (a misspelt name would silently switch off
    what it sets): an ``inputs`` key that is no model input, a ``check.outputs`` key that is
    no model output, a ``check.dims`` key that no input's shape names (in the model, or as a
    string in ``inputs.<x>.shape``). Each error names the recipe's line and the closest name."""
    inputs = {value.name: value for value in model.graph.input}
    for name in recipe.inputs:
        if name not in inputs:
            raise DataError(
                f"no model input named '{name}'{did_you_mean(name, inputs)}; "
                f"the model takes {[i.name for i in model_inputs(model)]}",
                recipe.place("inputs", name),
            )
    outputs = [value.name for value in model.graph.output]
    for name in recipe.check.outputs:
        if name not in outputs:
            raise RecipeError(
                f"check.outputs names '{name}', which is not a model output"
                f"{did_you_mean(name, outputs)}; the model's outputs are {outputs}",
                recipe.place("check", "outputs", name),
            )
    initializers = {tensor.name for tensor in model.graph.initializer}
    dims = {
        dim.dim_param
        for value in model.graph.input
        if value.name not in initializers
        for dim in value.type.tensor_type.shape.dim
        if dim.HasField("dim_param") and dim.dim_param
    }
    dims |= {d for spec in recipe.inputs.values() for d in spec.shape or () if isinstance(d, str)}
    for name in recipe.check.dims:
        if name not in dims:
            named = f"the symbolic dims are {sorted(dims)}" if dims else "no input has one"
            raise RecipeError(
                f"check.dims sets '{name}', which no input's shape names"
                f"{did_you_mean(name, sorted(dims))}; {named}",
                recipe.place("check", "dims", name),
            )


def apply_input_overrides(model: onnx.ModelProto, recipe: Recipe) -> None:
    """Write the recipe's declared input shapes into the model, once its names are checked
    against the model (:func:`check_model_names`)."""
    check_model_names(model, recipe)
    inputs = {value.name: value for value in model.graph.input}
    for name, spec in recipe.inputs.items():
        if spec.shape is None:
            continue
        shape = inputs[name].type.tensor_type.shape
        if len(spec.shape) != len(shape.dim):
            raise DataError(
                f"input '{name}' has rank {len(shape.dim)}, "
                f"the recipe gives {len(spec.shape)} dims",
                recipe.place("inputs", name, "shape"),
            )
        for index, (dim, value) in enumerate(zip(shape.dim, spec.shape)):
            _check_declared_dim(recipe, name, index, declared_dim(dim), value)
            dim.Clear()
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value


def _check_declared_dim(recipe: Recipe, name: str, index: int, fixed: Any, value: Any) -> None:
    """A recipe dim may name or size a dynamic model dim, never change a fixed one: the
    reference is the original model, which rejects any other size."""
    if not isinstance(fixed, int) or value == fixed:
        return
    where = recipe.place("inputs", name, "shape", index)
    what = f"input '{name}' dim {index} is fixed at {fixed} in the model"
    if isinstance(value, int):
        raise DataError(f"{what}; the recipe gives {value}", where)
    size = recipe.check.dims.get(value)
    if size is None and recipe.check.data.kind == "synthetic":
        raise DataError(
            f"{what}; the recipe names it '{value}', which check.dims does not set "
            f"(synthetic data would use {DEFAULT_DIM}): set check.dims.{value}: {fixed}",
            where,
        )
    if size is not None and size != fixed:
        raise DataError(f"{what}; the recipe names it '{value}', check.dims gives {size}", where)


def check_feeds(recipe: Recipe, model: onnx.ModelProto) -> tuple[list[Feed], str]:
    """The check inputs and a description of where they came from."""
    infos = model_inputs(model)
    check = recipe.check
    ranges = recipe.input_ranges()
    if check.data.kind != "synthetic":
        source = DataSet(check.data, infos, check.dims, ranges)
        return source.take(check.samples), check.data.describe()
    data = synthetic_feeds(infos, check.samples, check.seed, check.dims, ranges)
    return data, f"synthetic (seed {check.seed})"


def pass_data(
    recipe: Recipe, model: onnx.ModelProto, check_feeds: list[Feed]
) -> tuple[DataSet, list[Feed]]:
    """The calibration data set (streamed by the passes that need it; synthetic when the
    recipe declares none) and the validation feeds (default: the check feeds). The first
    calibration feed is read when a pass needs it, so bad data fails before any work."""
    infos = model_inputs(model)
    spec = recipe.data.calibration or DataSource(synthetic=SyntheticSource(seed=recipe.check.seed))
    calibration = DataSet(spec, infos, recipe.check.dims, recipe.input_ranges())
    validation = check_feeds
    if recipe.data.validation is not None:
        source = DataSet(recipe.data.validation, infos, recipe.check.dims, recipe.input_ranges())
        validation = list(source.feeds())
    return calibration, validation
