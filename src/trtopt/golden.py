"""Golden files: inputs and reference outputs that gate an artifact, small enough to commit.

A golden file is a pair beside each other:

- ``<name>.npz``: for every sample i, ``inputs/<i>/<input name>`` and ``outputs/<i>/<output
  name>`` (sample numbers zero-padded to four digits), readable with ``numpy.load``;
- ``<name>.json``: what made it (the model's sha256, the data's provenance and fingerprint,
  package versions), the thresholds and output kinds of the recipe that wrote it (so a check
  without a recipe gates the same way), and the npz's own sha256.

What gates (the thresholds, class-score outputs, k, quantile and the model's sha256) is also
written into the npz, as its zip comment (``numpy.load`` ignores it), which the npz's sha256
covers: a JSON whose gating content was edited is refused, naming what differs. The JSON is
validated with the recipe's own models (``Thresholds``), so a bad value names its key.

The reference is the original model on ONNX Runtime CPU, exactly as ``trtopt compile`` runs it.
The bytes are deterministic: the npz is written member by member with fixed zip timestamps and
permissions (``numpy.savez`` stamps the current time), the JSON with sorted keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from .errors import UserError, did_you_mean
from .feeds import Feed
from .metrics import DEFAULT_QUANTILE
from .recipe import Quantile, Strict, Thresholds, TopK
from .staging import owner, remove_dead

GOLDEN_FORMAT = "trtopt-golden"
GOLDEN_VERSION = 2
"""2: the gating content is recorded in the npz (its zip comment)."""
GOLDEN_SIZE_BUDGET = 256 << 10
"""Most bytes a golden .npz should take (256 KiB): it is committed and cloned everywhere.
`trtopt golden update` warns above it; the shipped ones are tested against it. Reduce
``check.golden_samples`` (or the check's dims) to fit."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold: no build date
_ZIP_LEVEL = 9
GATE_COMMENT = b"trtopt-golden-gate "
"""How the npz's zip comment starts: then the gating content as canonical JSON, or
``sha256:<hex>`` of it when it is longer than a zip comment can hold."""
_COMMENT_LIMIT = 0xFFFF


class GoldenError(UserError):
    """A golden file is missing, unreadable, stale or does not fit the model: exit code 2."""


@dataclass
class Golden:
    """A loaded golden file: feeds, the reference's outputs on them, and its metadata."""

    path: Path
    inputs: list[Feed]
    outputs: list[Feed]
    meta: dict[str, Any] = field(default_factory=dict)
    gate: GoldenGate = field(default_factory=lambda: GoldenGate())

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs[0]) if self.outputs else []


class GoldenGate(Strict):
    """What a golden file gates on where no recipe says: the recipe's thresholds per output,
    its class-score outputs, their k and the error quantile, checked as the recipe is."""

    thresholds: dict[str, Thresholds] = {}
    class_scores: list[str] = []
    top_k: dict[str, TopK] = {}
    error_quantile: Quantile = DEFAULT_QUANTILE


class _ModelRef(Strict):
    file: str | None = None
    sha256: str | None = None


class _NpzRef(Strict):
    file: str | None = None
    bytes: int | None = None
    sha256: str | None = None


class GoldenMeta(GoldenGate):
    """A golden file's JSON: every key it may hold (any other is an error)."""

    format: str
    version: int
    recipe: str | None = None
    model: _ModelRef = _ModelRef()
    reference: str | None = None
    data: dict[str, Any] = {}
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    versions: dict[str, str | None] = {}
    npz: _NpzRef = _NpzRef()


GATE_KEYS = ("thresholds", "class_scores", "top_k", "error_quantile")


def gating(meta: dict[str, Any]) -> dict[str, Any]:
    """The content of a golden JSON that decides verdicts: what it gates on
    (:data:`GATE_KEYS`) and the model's sha256 (a stale golden file's test)."""
    found = {key: meta.get(key) for key in GATE_KEYS}
    found["model.sha256"] = (meta.get("model") or {}).get("sha256")
    return found


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _gate_comment(meta: dict[str, Any]) -> bytes:
    """The npz's zip comment recording ``meta``'s gating content."""
    content = _canonical(gating(meta))
    if len(GATE_COMMENT) + len(content) > _COMMENT_LIMIT:
        content = f"sha256:{_sha256(content)}".encode()
    return GATE_COMMENT + content


def metadata_path(path: str | Path) -> Path:
    """The JSON that describes the golden ``.npz`` at ``path``."""
    return Path(path).with_suffix(".json")


def _member(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, buffer.getvalue(), zipfile.ZIP_DEFLATED, _ZIP_LEVEL)


def golden_bytes(inputs: Sequence[Feed], outputs: Sequence[Feed], comment: bytes = b"") -> bytes:
    """The npz bytes of a golden file: the same arrays always give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.comment = comment
        for kind, feeds in (("inputs", inputs), ("outputs", outputs)):
            for index, feed in enumerate(feeds):
                for name, array in feed.items():  # model order, not sorted
                    _member(zf, f"{kind}/{index:04d}/{name}", np.asarray(array))
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a partial file beside ``path`` and rename it into place. The partial file is
    removed when writing fails (a full disk) and named with its owner, so the next write
    removes those that killed processes left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.partial-"
    remove_dead(path.parent, re.escape(prefix))
    partial = path.with_name(prefix + owner() + secrets.token_hex(4))
    stream = open(partial, "xb")  # noqa: SIM115 (closed below) the user's umask applies
    try:
        with stream:
            stream.write(data)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def write_golden(
    path: str | Path, inputs: Sequence[Feed], outputs: Sequence[Feed], meta: dict[str, Any]
) -> Path:
    """Write ``path`` (.npz) and its JSON; ``meta`` gains the npz's size and sha256, the npz
    records ``meta``'s gating content."""
    path = Path(path)
    if path.suffix != ".npz":
        raise GoldenError("a golden file name must end in .npz", str(path))
    data = golden_bytes(inputs, outputs, _gate_comment(meta))
    meta = {
        "format": GOLDEN_FORMAT,
        "version": GOLDEN_VERSION,
        **meta,
        "npz": {"file": path.name, "bytes": len(data), "sha256": _sha256(data)},
    }
    _write_atomic(path, data)
    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _write_atomic(metadata_path(path), text.encode())
    return path


def _regenerate(meta: dict[str, Any] | None = None) -> str:
    recipe = (meta or {}).get("recipe")
    return f"`trtopt golden update {recipe + '.yaml' if recipe else 'RECIPE'}`"


def load_golden(path: str | Path) -> Golden:
    """Read a golden file and its JSON, refusing a missing, corrupt or inconsistent pair."""
    path = Path(path)
    if not path.is_file():
        raise GoldenError(f"golden file not found; write it with {_regenerate()}", str(path))
    json_path = metadata_path(path)
    if not json_path.is_file():
        raise GoldenError(
            f"the golden file's metadata {json_path.name} is missing beside it; "
            f"rewrite both with {_regenerate()}",
            str(path),
        )
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError) as error:
        raise GoldenError(f"not a readable golden metadata file: {error}", str(json_path)) from None
    if not isinstance(meta, dict) or meta.get("format") != GOLDEN_FORMAT:
        raise GoldenError(f"not a {GOLDEN_FORMAT} metadata file", str(json_path))
    if meta.get("version") != GOLDEN_VERSION:
        raise GoldenError(
            f"golden format version {meta.get('version')} is not {GOLDEN_VERSION}, which this "
            f"trtopt reads; rewrite it with {_regenerate(meta)}",
            str(json_path),
        )
    try:
        checked = GoldenMeta.model_validate(meta)
    except ValidationError as error:
        raise GoldenError(_meta_error(error), str(json_path)) from None
    data = path.read_bytes()
    recorded = (meta.get("npz") or {}).get("sha256")
    if recorded != _sha256(data):
        raise GoldenError(
            f"the file's sha256 {_sha256(data)[:12]}... is not the {str(recorded)[:12]}... that "
            f"{json_path.name} records (edited or from another update); rewrite both with "
            f"{_regenerate(meta)}",
            str(path),
        )
    inputs: dict[int, Feed] = {}
    outputs: dict[int, Feed] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            for key in archive.files:
                kind, index, name = key.split("/", 2)
                target = {"inputs": inputs, "outputs": outputs}[kind]
                target.setdefault(int(index), {})[name] = archive[key]
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            comment = archive.comment
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise GoldenError(f"not a readable golden .npz file: {error}", str(path)) from None
    samples = list(range(len(inputs)))
    if not inputs or sorted(inputs) != samples or sorted(outputs) != samples:
        raise GoldenError("the golden file holds no complete samples", str(path))
    _verify_gating(meta, comment, json_path, path)
    gate = GoldenGate.model_validate(checked.model_dump(include=set(GATE_KEYS)))
    return Golden(path, [inputs[i] for i in samples], [outputs[i] for i in samples], meta, gate)


def _meta_error(error: ValidationError) -> str:
    """The first of pydantic's errors about a golden JSON, naming its key."""
    item = error.errors()[0]
    loc = [str(k) for k in item["loc"]]
    key = ".".join(loc)
    if item["type"] == "extra_forbidden":
        known = GoldenMeta.model_fields if len(loc) == 1 else ()
        return f"unknown key '{key}'{did_you_mean(loc[-1], list(known))}"
    return f"{key}: {item['msg']}"


def _verify_gating(meta: dict[str, Any], comment: bytes, json_path: Path, path: Path) -> None:
    """Refuse a JSON whose gating content is not what the npz recorded when both were
    written, naming the keys that differ."""
    rewrite = f"rewrite both with {_regenerate(meta)}"
    if not comment.startswith(GATE_COMMENT):
        raise GoldenError(f"{path.name} records no gating content; {rewrite}", str(json_path))
    recorded_text = comment[len(GATE_COMMENT) :]
    if recorded_text.startswith(b"sha256:"):
        if recorded_text.decode() == f"sha256:{_sha256(_canonical(gating(meta)))}":
            return
        differs = "its thresholds, output kinds or model sha256"
    else:
        try:
            recorded = json.loads(recorded_text)
        except ValueError:
            raise GoldenError(f"{path.name} records unreadable gating content", str(path)) from None
        found = _differences(recorded, gating(meta))
        if not found:
            return
        differs = "; ".join(found)
    raise GoldenError(
        f"edited golden metadata: {differs} (not what {path.name} recorded when both were "
        f"written); change the recipe and {rewrite}",
        str(json_path),
    )


def _differences(recorded: Any, now: Any, key: str = "") -> list[str]:
    """'key is X, was Y' for every leaf of two JSON values that differs."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        found = []
        for name in sorted({*recorded, *now}, key=str):
            found += _differences(
                recorded.get(name), now.get(name), f"{key}.{name}" if key else str(name)
            )
        return found
    if recorded == now:
        return []
    shown = json.dumps(now) if now is not None else "missing"
    was = json.dumps(recorded) if recorded is not None else "missing"
    return [f"{key or 'the metadata'} is {shown}, was {was}"]
