"""TensorRT optimization profiles derived from a model's inputs and the shapes a recipe gives.

A profile maps every dynamic input to (min, opt, max) shapes. The recipe writes them per input
(``inputs.<name>.profile`` or ``.profiles``); the engine's i-th profile takes every input's
i-th profile (an input with one profile lends it to all). A dynamic input the recipe gives no
profile is fixed at the shape the accuracy check feeds it, and a note says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import DataError
from ..feeds import InputInfo, concrete_shape

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]
"""(min, opt, max)"""


@dataclass
class Profiles:
    """The engine's optimization profiles, and how each dynamic input's shapes were chosen."""

    profiles: list[dict[str, ShapeRange]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    """Dynamic inputs the recipe gives no profile: the engine takes only the check's shape."""

    def shape_sets(self) -> list[tuple[str, dict[str, Shape]]]:
        """The shapes each profile the recipe gave runs at: ``("profile I min|opt|max",
        {input: shape})``, each distinct set once (a set equal to an earlier one is left out).
        Inputs fixed at the check's shape keep it; static inputs are not listed."""
        sets: list[tuple[str, dict[str, Shape]]] = []
        seen: list[dict[str, Shape]] = []
        for index, profile in enumerate(self.profiles):
            if all(name in self.fixed for name in profile):
                continue
            for position, which in enumerate(("min", "opt", "max")):
                shapes = {name: ranges[position] for name, ranges in profile.items()}
                if shapes not in seen:
                    seen.append(shapes)
                    sets.append((f"profile {index} {which}", shapes))
        return sets

    def to_json(self) -> list[dict[str, dict[str, list[int]]]]:
        return [
            {
                name: {"min": list(a), "opt": list(b), "max": list(c)}
                for name, (a, b, c) in p.items()
            }
            for p in self.profiles
        ]


def is_dynamic(info: InputInfo) -> bool:
    return any(not isinstance(dim, int) for dim in info.shape)


def derive_profiles(
    inputs: Sequence[InputInfo],
    given: Mapping[str, Sequence[ShapeRange]],
    dims: Mapping[str, int],
    place: Callable[[str], object] = lambda name: f"inputs.{name}.profile",
) -> Profiles:
    """Profiles for ``inputs`` from the shape ranges ``given`` per input name.

    ``dims`` are the check's values of symbolic dims (used where no profile is given);
    ``place(name)`` says where an input's profile was written, for errors.
    """
    infos = {info.name: info for info in inputs}
    counts = {len(ranges) for ranges in given.values() if len(ranges) > 1}
    if len(counts) > 1:
        raise DataError(
            f"inputs give different numbers of profiles ({sorted(counts)}); give every input "
            "either one profile or the same number",
            place(next(n for n, r in given.items() if len(r) > 1)),
        )
    count = counts.pop() if counts else 1
    for name, ranges in given.items():
        for shape_range in ranges:
            _check_range(infos[name], shape_range, place(name))

    result = Profiles()
    for index in range(count):
        profile: dict[str, ShapeRange] = {}
        for info in inputs:
            ranges = given.get(info.name, ())
            if ranges:
                profile[info.name] = ranges[index if len(ranges) > 1 else 0]
            elif is_dynamic(info):
                shape = concrete_shape(info, dims)
                profile[info.name] = (shape, shape, shape)
        if profile:
            result.profiles.append(profile)
    for info in inputs:
        if is_dynamic(info) and not given.get(info.name):
            shape = list(concrete_shape(info, dims))
            result.fixed.append(info.name)
            result.notes.append(
                f"input '{info.name}' is dynamic and has no profile: the engine is fixed at "
                f"{shape}, the shape the check feeds (give inputs.{info.name}.profile)"
            )
    return result


def _check_range(info: InputInfo, shape_range: ShapeRange, where: object) -> None:
    declared = ["?" if d is None else d for d in info.shape]
    for shape in shape_range:
        fixed_mismatch = any(
            isinstance(d, int) and d != n for d, n in zip(info.shape, shape, strict=False)
        )
        if len(shape) != len(info.shape) or fixed_mismatch:
            raise DataError(
                f"profile shape {list(shape)} of input '{info.name}' does not fit its declared "
                f"shape {declared}",
                where,
            )
