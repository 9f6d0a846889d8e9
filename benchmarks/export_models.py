"""Export the fusion benchmark models with both torch exporters.

Run from the repository root with an environment that has torch (CPU), transformers and
onnxscript (``pip install -e '.[dev]'``):

    python benchmarks/export_models.py                    # every model, both exporters
    python benchmarks/export_models.py bert-base gpt2     # a subset
    python benchmarks/export_models.py --exporter legacy  # one exporter

Models are built from ``transformers`` configs (no hub downloads) with random weights given
trained-like statistics: BatchNorm running statistics are measured on random images in train
mode, LayerNorm/BatchNorm affine parameters are drawn around (1, 0) and every bias is non-zero,
so folding them is a real test. Everything is exported in fp32 at ONNX opset 18 (``OPSET``,
the dynamo exporter's default) with a dynamic batch (and sequence) axis into
``benchmarks/models/`` (gitignored).
A model that fails to export is reported and skipped; the exit code counts failures.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import transformers as tf
from torch import nn

OPSET = 18
SEED = 0
IMAGE = 224
SEQUENCE = 128
OUT = Path(__file__).resolve().parent / "models"


class Logits(nn.Module):
    """An image classifier -> its logits tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixel_values).logits


class Hidden(nn.Module):
    """A text encoder/decoder stack -> last_hidden_state (no cache, no extra outputs)."""

    def __init__(self, net: nn.Module, with_mask: bool) -> None:
        super().__init__()
        self.net, self.with_mask = net, with_mask

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def trained_like(model: nn.Module, sample: dict[str, torch.Tensor]) -> nn.Module:
    """Give normalization layers non-trivial statistics (seeded), return the model in eval()."""
    g = torch.Generator().manual_seed(SEED)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    # Trained biases are not zero (an init's zeros would let any optimizer drop the Adds).
    biased = [m for m in model.modules() if getattr(m, "bias", None) is not None]
    batchnorms = [m for m in norms if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        if batchnorms:
            # Measure running statistics on random data, as training would have.
            for bn in batchnorms:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average
            model.train()
            model(**sample)
        for m in biased:
            if isinstance(m.bias, torch.Tensor) and m.bias.dtype.is_floating_point:
                m.bias.copy_(0.02 * torch.randn(m.bias.shape, generator=g))
        for m in norms:
            if m.weight is not None:
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


@dataclass
class Spec:
    build: Callable[[], nn.Module]
    vision: bool
    with_mask: bool = True


EAGER = {"attn_implementation": "eager"}
MODELS: dict[str, Spec] = {
    "resnet50": Spec(lambda: tf.ResNetForImageClassification(tf.ResNetConfig()), True),
    "mobilenetv2": Spec(
        lambda: tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(image_size=IMAGE)), True
    ),
    "efficientnet-b0": Spec(
        lambda: tf.EfficientNetForImageClassification(
            tf.EfficientNetConfig(
                width_coefficient=1.0, depth_coefficient=1.0, image_size=IMAGE, hidden_dim=1280
            )
        ),
        True,
    ),
    "convnext-t": Spec(lambda: tf.ConvNextForImageClassification(tf.ConvNextConfig()), True),
    "vit-b": Spec(lambda: tf.ViTForImageClassification(tf.ViTConfig(**EAGER)), True),
    "bert-base": Spec(lambda: tf.BertModel(tf.BertConfig(**EAGER), add_pooling_layer=False), False),
    "gpt2": Spec(lambda: tf.GPT2Model(tf.GPT2Config(use_cache=False, **EAGER)), False),
    "t5-small-encoder": Spec(
        lambda: tf.T5EncoderModel(tf.T5Config(use_cache=False, **EAGER)), False
    ),
}


def sample(vision: bool, batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED + 1)
    if vision:
        return {"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=g)}
    ids = torch.randint(1, 1000, (batch, SEQUENCE), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def export(name: str, spec: Spec, dynamo: bool) -> Path:
    torch.manual_seed(SEED)
    net = spec.build()
    # Batch 2: the dynamo exporter specializes a dim it sees at size 1.
    example = sample(spec.vision, batch=2)
    model = Logits(net) if spec.vision else Hidden(net, spec.with_mask)
    trained_like(model, sample(spec.vision, batch=4))
    if not spec.vision and not spec.with_mask:
        example = {"input_ids": example["input_ids"]}
    names = list(example)
    output = "logits" if spec.vision else "last_hidden_state"
    axes = {n: ({0: "batch"} if spec.vision else {0: "batch", 1: "sequence"}) for n in names}
    axes[output] = {0: "batch"} if spec.vision else {0: "batch", 1: "sequence"}
    path = OUT / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    common = dict(input_names=names, output_names=[output], opset_version=OPSET)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=64)
            sequence = torch.export.Dim("sequence", min=2, max=512)
            shapes = {n: ({0: batch} if spec.vision else {0: batch, 1: sequence}) for n in names}
            torch.onnx.export(
                model,
                tuple(example.values()),
                str(path),
                dynamo=True,
                dynamic_shapes=shapes,
                external_data=False,
                verbose=False,
                **common,
            )
        else:
            torch.onnx.export(
                model, tuple(example.values()), str(path), dynamo=False, dynamic_axes=axes, **common
            )
    onnx.checker.check_model(str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"a subset of: {', '.join(MODELS)}")
    parser.add_argument("--exporter", choices=["legacy", "dynamo", "both"], default="both")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    exporters = {"legacy": [False], "dynamo": [True], "both": [False, True]}[args.exporter]
    failures = 0
    for name in args.models or list(MODELS):
        for dynamo in exporters:
            start = time.perf_counter()
            label = f"{name} ({'dynamo' if dynamo else 'legacy'})"
            try:
                path = export(name, MODELS[name], dynamo)
            except Exception as error:
                failures += 1
                print(f"{label}: FAILED {type(error).__name__}: {str(error)[:300]}", flush=True)
                continue
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            took = time.perf_counter() - start
            print(f"{label}: {path.name} {nodes} nodes, {took:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
