"""Regenerate the small real ONNX models used by the test suite.

Run from the repository root:

    pip install -e '.[dev]'        # pins torch==2.13.0 (CPU), transformers, onnxscript, ...
    python tests/models/export.py

Models are built from ``transformers`` configs (no hub downloads) with seeded, trained-like
random weights, exported in fp32 at ONNX opset 18 (``OPSET``) and verified against PyTorch with
onnxruntime (numerics, dynamic axes, and non-degenerate outputs). Any failed check exits
non-zero. Output is byte-for-byte reproducible for a given set of package versions. Outputs:

- tests/models/cnn_{legacy,dynamo}.onnx   tiny ResNet classifier: pixel_values -> logits
- tests/models/bert_{legacy,dynamo}.onnx  tiny BERT encoder: input_ids, attention_mask ->
                                          last_hidden_state, pooler_output
- recipes/models/quickstart.onnx          tiny ResNet classifier, legacy exporter without
                                          constant folding (keeps BatchNormalization and
                                          foldable constant subgraphs)
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from transformers import BertConfig, BertModel, ResNetConfig, ResNetForImageClassification

OPSET = 18
SEED = 0
ATOL = 1e-4
ROOT = Path(__file__).resolve().parents[2]
OUT_TESTS = ROOT / "tests" / "models"
OUT_RECIPES = ROOT / "recipes" / "models"


def realistic_init(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw weights with trained-like statistics (deterministic), return model in eval()."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, mean: float, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = 2.0 if isinstance(m, nn.Conv2d) else 1.0
                normal(m.weight, 0.0, math.sqrt(gain / fan_in))
                if m.bias is not None:
                    normal(m.bias, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                normal(m.weight, 1.0, 0.2)
                normal(m.bias, 0.0, 0.1)
                normal(m.running_mean, 0.0, 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            elif isinstance(m, nn.LayerNorm):
                normal(m.weight, 1.0, 0.1)
                normal(m.bias, 0.0, 0.1)
            elif isinstance(m, nn.Embedding):
                normal(m.weight, 0.0, 1.0)
    return model.eval()


class Classifier(nn.Module):
    """ResNetForImageClassification -> plain logits tensor (optionally with input normalization)."""

    def __init__(self, seed: int, normalize: bool = False) -> None:
        super().__init__()
        config = ResNetConfig(
            num_channels=3,
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            layer_type="basic",
            num_labels=10,
        )
        self.net = realistic_init(ResNetForImageClassification(config), seed)
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]))
        self.eval()
        self.calibrate_head(images(64, seed + 1000)["pixel_values"])

    def prep(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return pixel_values
        return (pixel_values - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    @torch.no_grad()
    def calibrate_head(self, calib: torch.Tensor) -> None:
        """Fold feature standardization into the head, as training would: logits ~ unit scale,
        centred, so predictions spread over classes instead of one input-independent argmax."""
        feats = self.net.resnet(self.prep(calib)).pooler_output.flatten(1)
        mu, sd = feats.mean(0), feats.std(0)
        sd = sd.clamp_min(0.1 * float(sd.mean()))
        head = self.net.classifier[-1]
        head.weight /= sd
        head.bias.copy_(-head.weight @ mu)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=self.prep(pixel_values)).logits


class Encoder(nn.Module):
    """BertModel -> (last_hidden_state, pooler_output)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        config = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            attn_implementation="eager",
        )
        self.net = realistic_init(BertModel(config), seed)
        self.eval()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def images(batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.rand(batch, 3, 32, 32, generator=g)}


def tokens(batch: int, seed: int, seq: int = 13) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, seq - 3 :] = 0  # one padded row so the mask path is exercised
    return {"input_ids": ids, "attention_mask": mask}


@dataclass
class Spec:
    model: nn.Module
    make_inputs: Callable[[int, int], dict[str, torch.Tensor]]  # (batch, seed) -> inputs
    example: dict[str, torch.Tensor]  # export-time inputs
    outputs: list[str]
    axes: dict[str, dict[int, str]]
    classifier: bool


def export(spec: Spec, path: Path, dynamo: bool, fold: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(spec.example.values())
    names = dict(input_names=list(spec.example), output_names=spec.outputs, opset_version=OPSET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            torch.onnx.export(
                spec.model,
                args,
                str(path),
                dynamo=False,
                dynamic_axes=spec.axes,
                do_constant_folding=fold,
                **names,
            )
        else:
            dims = {  # max=64: sequence must fit max_position_embeddings
                name: {i: torch.export.Dim(a, min=2, max=64) for i, a in axes.items()}
                for name, axes in spec.axes.items()
                if name in spec.example
            }
            torch.onnx.export(
                spec.model,
                args,
                str(path),
                dynamo=True,
                dynamic_shapes=dims,
                external_data=False,
                verbose=False,
                **names,
            )
            # Stack traces embed absolute source paths: drop them so output is machine-independent.
            proto = onnx.load(str(path))
            for node in proto.graph.node:
                keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
                del node.metadata_props[:]
                node.metadata_props.extend(keep)
            onnx.save(proto, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def run_both(
    model: nn.Module, path: Path, inputs: dict[str, torch.Tensor]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with torch.no_grad():
        ref = model(**inputs)
    ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ref, sess.run(None, {k: v.numpy() for k, v in inputs.items()})


def verify(spec: Spec, path: Path) -> list[str]:
    """Return failed checks: ORT vs torch at batch 2, and outputs vary across 16 inputs."""
    results: list[tuple[bool, str]] = []
    ref, got = run_both(spec.model, path, spec.make_inputs(2, 123))
    for name, r, o in zip(spec.outputs, ref, got, strict=True):
        err = float(np.abs(r - o).max()) if r.shape == o.shape else float("inf")
        results.append((err <= ATOL, f"{name} {list(o.shape)}: max|ort-torch|={err:.1e}"))
    out = run_both(spec.model, path, spec.make_inputs(16, 456))[1][0]
    std = float(out.std(axis=0).mean())
    results.append((std > 0.05, f"{spec.outputs[0]} std across 16 inputs={std:.3f} > 0.05"))
    if spec.classifier:
        classes = len(set(out.argmax(axis=1).tolist()))
        results.append((classes >= 3, f"argmax over 16 inputs: {classes} classes >= 3"))
    for ok, msg in results:
        print(f"    [{'ok' if ok else 'FAIL'}] {msg}")
    return [f"{path.name}: {msg}" for ok, msg in results if not ok]


def summarize(path: Path) -> None:
    m = onnx.load(str(path))
    hist = collections.Counter(n.op_type for n in m.graph.node)
    opsets = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    io = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(m.graph.input) + list(m.graph.output)
    }
    size = path.stat().st_size
    print(f"{path.relative_to(ROOT)}: {size} bytes, {len(m.graph.node)} nodes, opsets {opsets}")
    print(f"    io: {io}")
    print(f"    ops: {dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))}")


def main() -> int:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    torch.manual_seed(SEED)
    img_axes = {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
    seq_axes = {0: "batch", 1: "sequence"}
    tok_axes = {"input_ids": seq_axes, "attention_mask": seq_axes}
    tok_axes |= {"last_hidden_state": seq_axes, "pooler_output": {0: "batch"}}
    bert_outs = ["last_hidden_state", "pooler_output"]
    cnn = Spec(Classifier(seed=1), images, images(2, 0), ["logits"], img_axes, True)
    # Exported at sequence 8, verified at 13 (see tokens()) to prove the dynamic axis.
    bert = Spec(Encoder(seed=2), tokens, tokens(2, 0, seq=8), bert_outs, tok_axes, False)
    quick = Spec(
        Classifier(seed=3, normalize=True), images, images(2, 0), ["logits"], img_axes, True
    )
    jobs = [
        (cnn, OUT_TESTS / "cnn_legacy.onnx", False, True),
        (cnn, OUT_TESTS / "cnn_dynamo.onnx", True, True),
        (bert, OUT_TESTS / "bert_legacy.onnx", False, True),
        (bert, OUT_TESTS / "bert_dynamo.onnx", True, True),
        # No constant folding: BatchNormalization and constant subgraphs stay for the optimizer.
        (quick, OUT_RECIPES / "quickstart.onnx", False, False),
    ]
    failures: list[str] = []
    for spec, path, dynamo, fold in jobs:
        export(spec, path, dynamo, fold)
        summarize(path)
        failures += verify(spec, path)
    if failures:
        print(f"{len(failures)} check(s) FAILED:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
