"""Model inputs and feeds: synthetic ones from Polygraphy's DataLoader, and the validation of
any feed against the model's inputs before work is done."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from polygraphy.common import TensorMetadata
from polygraphy.comparator import DataLoader

from .errors import DataError

DEFAULT_DIM = 2
"""Value of a symbolic dim that neither the recipe's `inputs` nor `check.dims` names; 2 rather
than 1 so that batch-dependent bugs show."""

Feed = dict[str, np.ndarray]
Dim = int | str | None


@dataclass(frozen=True)
class InputInfo:
    """A model input as declared: name, numpy dtype and dims (int, symbolic name, or None)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]


def declared_dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    """A model dim as trtopt reads it: a positive size is fixed; a symbolic name stays a name;
    -1, 0 and unset are dynamic with no name (None). Exporters such as Paddle write -1 for
    "any size", and a feed of any size must be accepted there."""
    if dim.HasField("dim_value"):
        return dim.dim_value if dim.dim_value > 0 else None
    return dim.dim_param or None


def model_inputs(model: onnx.ModelProto) -> list[InputInfo]:
    """The graph inputs that are not initializers, in declaration order."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise DataError(
                f"model input '{value.name}' is a {_type_text(value.type)}, not a tensor; "
                "trtopt feeds tensors only"
            )
        tensor = value.type.tensor_type
        dims: tuple[Dim, ...] = tuple(declared_dim(d) for d in tensor.shape.dim)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"model input '{value.name}' has element type {tensor.elem_type}, "
                "which is no ONNX tensor type NumPy can hold"
            ) from None
        inputs.append(InputInfo(value.name, dtype, dims))
    return inputs


def _type_text(type_: onnx.TypeProto) -> str:
    """An ONNX value type as a user reads it: ``sequence(tensor(float))``, ``map(...)``."""
    kind = type_.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        inner = getattr(type_, kind)
        elem = onnx.helper.tensor_dtype_to_string(inner.elem_type).removeprefix("TensorProto.")
        word = "tensor" if kind == "tensor_type" else "sparse_tensor"
        return f"{word}({elem.lower()})"
    if kind == "sequence_type":
        return f"sequence({_type_text(type_.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_text(type_.optional_type.elem_type)})"
    if kind == "map_type":
        key = onnx.helper.tensor_dtype_to_string(type_.map_type.key_type)
        key = key.removeprefix("TensorProto.").lower()
        return f"map({key}, {_type_text(type_.map_type.value_type)})"
    return kind or "value of no declared type"


def concrete_shape(info: InputInfo, dims: Mapping[str, int]) -> tuple[int, ...]:
    """Replace symbolic and unknown dims by the values in ``dims`` (else DEFAULT_DIM)."""
    return tuple(
        d if isinstance(d, int) else dims.get(d, DEFAULT_DIM) if d else DEFAULT_DIM
        for d in info.shape
    )


def synthetic_feeds(
    inputs: Sequence[InputInfo],
    samples: int,
    seed: int,
    dims: Mapping[str, int],
    ranges: Mapping[str, tuple[float, float]],
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[Feed]:
    """Random feeds from Polygraphy's DataLoader; ``ranges`` are inclusive per input.
    ``shapes`` gives some inputs whole shapes (an optimization profile's); the others take
    their declared dims, symbolic ones from ``dims``."""
    metadata = TensorMetadata()
    for info in inputs:
        if info.dtype.kind not in "biuf":  # strings, bfloat16, float8: none drawn at random
            try:
                onnx_type = onnx.helper.np_dtype_to_tensor_dtype(info.dtype)
                name = onnx.helper.tensor_dtype_to_string(onnx_type)
            except (KeyError, TypeError, ValueError):
                name = str(info.dtype)
            raise DataError(
                f"model input '{info.name}' is a tensor of "
                f"{name.removeprefix('TensorProto.').lower()}, for which no "
                "synthetic data can be drawn; give data for it (check.data, data.calibration)"
            )
        shape = tuple((shapes or {}).get(info.name) or concrete_shape(info, dims))
        metadata.add(info.name, dtype=info.dtype, shape=shape)
    loader = DataLoader(
        seed=seed, iterations=samples, input_metadata=metadata, val_range=dict(ranges) or None
    )
    return [dict(loader[i]) for i in range(samples)]


def check_names(names: Iterable[str], inputs: Sequence[InputInfo], where: str) -> None:
    """A DataError at ``where`` unless ``names`` are exactly the model's input names."""
    given = list(names)
    expected = [info.name for info in inputs]
    missing = [name for name in expected if name not in given]
    unknown = [name for name in given if name not in expected]
    if missing or unknown:
        raise DataError(
            f"input names do not match the model: missing {missing or 'none'}, "
            f"not in the model {unknown or 'none'}; the model takes {expected}",
            where,
        )


def validate_feeds(
    feeds: Sequence[Feed], inputs: Sequence[InputInfo], source: str, first: int = 0
) -> None:
    """Names, dtypes, ranks and fixed dims of every feed must match the model's inputs;
    errors number the feeds from ``first``."""
    expected = {info.name: info for info in inputs}
    for index, feed in enumerate(feeds, start=first):
        where = f"{source} (sample {index})"
        check_names(feed, inputs, where)
        for name, array in feed.items():
            info = expected[name]
            if array.dtype != info.dtype:
                raise DataError(
                    f"input '{name}' has dtype {array.dtype}, the model expects {info.dtype}", where
                )
            fixed = [isinstance(d, int) and d != n for d, n in zip(info.shape, array.shape)]
            if array.ndim != len(info.shape) or any(fixed):
                declared = ["?" if d is None else d for d in info.shape]
                raise DataError(
                    f"input '{name}' has shape {list(array.shape)}, the model expects {declared}",
                    where,
                )
            if array.ndim and array.shape[0] == 0:
                raise DataError(
                    f"input '{name}' has no samples (shape {list(array.shape)}): there is "
                    "nothing to check",
                    where,
                )
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                count = int(array.size - np.count_nonzero(np.isfinite(array)))
                raise DataError(
                    f"input '{name}' holds {count} NaN or infinite value(s): outputs computed "
                    "from them cannot be compared",
                    where,
                )
