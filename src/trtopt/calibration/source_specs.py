"""Where data comes from, as a recipe writes it: npz files, npy folders, an image folder with
its preprocessing, a data script, or synthetic data. The schema only (pydantic): reading the
data is sources.py's."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..docstrings import describe_fields

DEFAULT_SCRIPT_TIMEOUT_S = 600.0
"""How long a data script may take to import and yield one feed before it is stopped."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=describe_fields)


class ImageSource(_Strict):
    """An image folder and the preprocessing the model expects (applied in this order)."""

    folder: str
    """Folder of images (searched recursively; .jpg .jpeg .png .bmp .webp .tif .ppm)."""
    input: str | None = None
    """The model input the images feed; default: the model's only input."""
    resize: Annotated[int, Field(ge=1)] | tuple[int, int] | None = None
    """Resize: an int scales the shorter side to it (keeping aspect), [h, w] is exact."""
    crop: Annotated[int, Field(ge=1)] | tuple[int, int] | None = None
    """Center crop to this size (int: square) after resizing."""
    color: Literal["RGB", "BGR", "L"] = "RGB"
    """Channel order (L: grayscale, one channel)."""
    scale: float = 1.0 / 255.0
    """Pixel values (0..255) are multiplied by this first."""
    mean: list[float] = [0.0]
    """Subtracted per channel after scaling (one value broadcasts)."""
    std: list[float] = [1.0]
    """Divided per channel after subtracting the mean."""
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    """Element type of the fed array (uint8 skips scale/mean/std)."""


class SyntheticSource(_Strict):
    """Random data; ranges come from the recipe's ``inputs.<name>.range``."""

    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    """NumPy's seed range: 0 <= seed < 2**32."""


class DataSource(_Strict):
    """Exactly one of npz, npy, images, script, synthetic (``synthetic`` also as a string)."""

    npz: str | None = None
    """A path or glob of .npz files; each is one feed, arrays keyed by input name."""
    npy: str | None = None
    """A folder (or glob of folders) with one <input>.npy per model input, leading axis =
    samples; memory-mapped and cut into feeds of ``batch`` rows."""
    images: ImageSource | None = None
    script: str | None = None
    """A Python file whose ``load_data()`` yields feed dicts (Polygraphy's convention)."""
    function: str = "load_data"
    """The function ``script`` calls."""
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = DEFAULT_SCRIPT_TIMEOUT_S
    """Seconds a ``script`` (run in a child process) may take to import and yield one feed;
    past it the script is stopped and the compile fails naming it (exit 2)."""
    synthetic: SyntheticSource | None = None
    batch: Annotated[int, Field(ge=1)] = 1
    """Rows per feed for npy and images sources."""
    limit: Annotated[int, Field(ge=1)] | None = None
    """At most this many samples (rows along the leading axis), the last feed cut to fit."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `synthetic` alone or `synthetic: true`; `synthetic: null` is the default (a dumped
        # recipe writes it), which is synthetic too when no other kind is given.
        if value == "synthetic":
            return {"synthetic": {}}
        if isinstance(value, dict) and value.get("synthetic") is True:
            return {**value, "synthetic": {}}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> DataSource:
        kinds = [k for k in ("npz", "npy", "images", "script", "synthetic") if getattr(self, k)]
        if len(kinds) > 1:
            raise ValueError(f"give one data source kind, not {kinds}")
        return self

    @property
    def kind(self) -> str:
        for kind in ("npz", "npy", "images", "script"):
            if getattr(self, kind):
                return kind
        return "synthetic"

    @property
    def path(self) -> str | None:
        """The path or glob an npz or npy source reads, an images source's folder; None for
        a script or synthetic data."""
        if self.images is not None:
            return self.images.folder
        return self.npz or self.npy

    def describe(self) -> str:
        if self.kind == "images":
            assert self.images is not None
            return f"images: {self.images.folder}"
        if self.kind == "synthetic":
            seed = self.synthetic.seed if self.synthetic else 0
            return f"synthetic (seed {seed})"
        return f"{self.kind}: {getattr(self, self.kind)}"
