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

Control flow and model-local functions, in tests/models/control_flow/ (a folder of their own:
the suites that run every model above assume plain graphs). Each is checked against PyTorch on
inputs that take every branch (``Flow.cases``):

- cond_cnn.onnx       conv block whose residual branch depends on the input's mean (torch.cond,
                      dynamo): x -> logits; an If whose branches read outer-scope tensors
- nested_cond.onnx    MLP with a torch.cond inside a torch.cond branch (dynamo): x -> y, s;
                      the inner If's output is the outer If's output ``s``, read by the graph
- functions.onnx      conv net whose residual Blocks are model-local functions (legacy exporter,
                      export_modules_as_functions): x -> logits
- vad_cond.onnx       voice-activity detector in miniature (conv encoder, LSTM decoder from a
                      carried state) whose decoder runs in a torch.cond branch (dynamo):
                      audio, state -> prob, new_state; LSTMs whose first output is unused
- vad_functions.onnx  the same, legacy exporter, its Decoder a model-local function
- scripted_loop.onnx  torch.jit.script'ed recurrent cell run ``steps.sum()`` times (legacy
                      exporter): x, steps -> y; a Loop whose body holds an If
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
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = 1.0 if isinstance(m, nn.Linear) else 2.0
                normal(m.weight, 0.0, math.sqrt(gain / fan_in))
                if m.bias is not None:
                    normal(m.bias, 0.0, 0.1)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                normal(m.weight, 1.0, 0.2)
                normal(m.bias, 0.0, 0.1)
                normal(m.running_mean, 0.0, 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            elif isinstance(m, nn.LayerNorm):
                normal(m.weight, 1.0, 0.1)
                normal(m.bias, 0.0, 0.1)
            elif isinstance(m, nn.Embedding):
                normal(m.weight, 0.0, 1.0)
            elif isinstance(m, nn.LSTM):
                for p in m.parameters():
                    normal(p, 0.0, 1.0 / math.sqrt(m.hidden_size))
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


OUT_FLOW = OUT_TESTS / "control_flow"


class CondCNN(nn.Module):
    """Conv stem, then one of two residual blocks chosen by the input's mean (torch.cond)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.wide = nn.Conv2d(8, 8, 3, padding=1)
        self.wide_bn = nn.BatchNorm2d(8)
        self.gate = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)
        realistic_init(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))

        def bright(h: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.wide_bn(self.wide(h))) + h

        def dark(h: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.gate(h)) * h

        h = torch.cond(x.mean() > 0.5, bright, dark, (h,))
        return self.head(h.mean(dim=(2, 3)))


class NestedCond(nn.Module):
    """MLP with a torch.cond in a torch.cond branch; the inner branch's second output leaves
    both Ifs and is read by the main graph."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.up = nn.Linear(32, 32)
        self.down = nn.Linear(32, 32)
        self.gate = nn.Linear(32, 32)
        self.out = nn.Linear(32, 8)
        realistic_init(self, seed)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(torch.relu(self.inp(x)))

        def inner_up(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.tanh(self.up(h)), h.sum(-1, keepdim=True)

        def inner_down(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.down(h) * 0.5, h.amax(-1, keepdim=True)

        def outer_mix(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a, s = torch.cond(x[:, 0].mean() > 0, inner_up, inner_down, (h,))
            return a + h, s

        def outer_gate(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.sigmoid(self.gate(h))
            return g * h, g.mean(-1, keepdim=True)

        y, s = torch.cond(x.mean() > 0, outer_mix, outer_gate, (h,))
        return self.out(y) + s, s


class Block(nn.Module):
    """A residual conv block (exported as a model-local function); its reshape round trip gives
    the function Shape/Gather/Concat/Reshape nodes, as real exports have."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = y.reshape(y.shape[0], -1).reshape(y.shape)
        return self.drop(y) + x


class FunctionNet(nn.Module):
    """Conv stem, two Blocks (one function, called twice), pooled head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(16, 4)
        realistic_init(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))


class RecurrentCell(nn.Module):
    """Encoder, then ``steps.sum()`` recurrent updates (re-centred every second step)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 16)
        self.rec = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)
        realistic_init(self, seed)

    def forward(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.enc(x))
        for i in range(int(steps.sum())):
            h = torch.tanh(self.rec(h)) + h * 0.5
            if i % 2 == 1:
                h = h - h.mean(-1, keepdim=True)
        return self.out(h)


class Decoder(nn.Module):
    """A voice-activity decoder: an LSTM over the encoded frames from a carried state; only its
    final state is read (the LSTM's first output ``Y`` is unused), stacked into the next state."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 8, batch_first=True)
        self.out = nn.Conv1d(8, 1, 1)

    def forward(self, f: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, (h, c) = self.rnn(f, (state[0], state[1]))
        prob = torch.sigmoid(self.out(h.permute(1, 2, 0)))
        return prob.flatten(1), torch.stack([h, c])


class Vad(nn.Module):
    """Strided conv encoder over raw audio, then the decoder from the carried state. ``cond``: a
    torch.cond starts from a fresh state when the carried one is all zeros (dynamo exporter)."""

    def __init__(self, seed: int, cond: bool) -> None:
        super().__init__()
        self.enc = nn.Conv1d(1, 8, 5, stride=2, padding=2)
        self.norm = nn.BatchNorm1d(8)
        self.decoder = Decoder()
        self.cond = cond
        realistic_init(self, seed)

    def forward(self, audio: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = torch.relu(self.norm(self.enc(audio.unsqueeze(1))))
        f = f.mean(-1, keepdim=True).transpose(1, 2)
        if not self.cond:
            return self.decoder(f, state)

        def warm(f: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.decoder(f, state)

        def cold(f: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            prob, new = self.decoder(f, torch.full_like(state, 0.1))
            return prob * 0.5, new

        if not torch.compiler.is_exporting():  # eager torch.cond compiles, which LSTMs refuse
            return warm(f, state) if state.abs().sum() > 0 else cold(f, state)
        return torch.cond(state.abs().sum() > 0, warm, cold, (f, state))


@dataclass
class Flow:
    """A control-flow model: how it is exported, and inputs that take each of its paths."""

    model: nn.Module
    example: dict[str, torch.Tensor]
    outputs: list[str]
    axes: dict[str, dict[int, str]]
    cases: dict[str, dict[str, torch.Tensor]]  # path name -> inputs that take it
    functions: set[type[nn.Module]] | None = None  # legacy exporter's export_modules_as_functions


def shifted(shape: tuple[int, ...], seed: int, shift: float, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale + shift


def nested_input(seed: int, outer: bool, inner: bool) -> torch.Tensor:
    x = shifted((3, 16), seed, 0.5 if outer else -0.5, 0.3)
    x[:, 0] = abs(x[:, 0]) * (1 if inner else -1)  # column 0's sign picks the inner branch
    return x


def export_flow(flow: Flow, path: Path, dynamo: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(flow.example.values())
    names = dict(input_names=list(flow.example), output_names=flow.outputs, opset_version=OPSET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {
                name: {i: torch.export.Dim(a, min=1, max=64) for i, a in axes.items()}
                for name, axes in flow.axes.items()
                if name in flow.example
            }
            torch.onnx.export(
                flow.model,
                args,
                str(path),
                dynamo=True,
                dynamic_shapes=dims,
                external_data=False,
                verbose=False,
                **names,
            )
        else:
            torch.onnx.export(
                flow.model,
                args,
                str(path),
                dynamo=False,
                dynamic_axes=flow.axes,
                export_modules_as_functions=flow.functions or False,
                **names,
            )
    proto = onnx.load(str(path))
    for graph in _graphs(proto.graph):  # stack traces embed absolute paths (If branches too)
        for node in graph.node:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
    onnx.save(proto, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += _graphs(attribute.g)
    return found


def verify_flow(flow: Flow, path: Path) -> list[str]:
    """ORT matches torch on every path's inputs, and the paths give different outputs."""
    results: list[tuple[bool, str]] = []
    firsts = []
    for case, inputs in flow.cases.items():
        ref, got = run_both(flow.model, path, inputs)
        firsts.append(got[0])
        for name, r, o in zip(flow.outputs, ref, got, strict=True):
            err = float(np.abs(r - o).max()) if r.shape == o.shape else float("inf")
            results.append(
                (err <= ATOL, f"{case}: {name} {list(o.shape)}: max|ort-torch|={err:.1e}")
            )
    distinct = len({a.tobytes() for a in firsts})
    results.append(
        (distinct == len(firsts), f"{distinct} distinct outputs over {len(firsts)} paths")
    )
    for ok, msg in results:
        print(f"    [{'ok' if ok else 'FAIL'}] {msg}")
    return [f"{path.name}: {msg}" for ok, msg in results if not ok]


def flow_jobs() -> list[tuple[Flow, Path, bool]]:
    img = {"x": {0: "batch"}, "logits": {0: "batch"}}
    cond_cnn = Flow(
        CondCNN(seed=11),
        {"x": shifted((2, 3, 8, 8), 0, 0.5, 0.3)},
        ["logits"],
        img,
        {
            "bright": {"x": shifted((2, 3, 8, 8), 1, 0.9, 0.2)},
            "dark": {"x": shifted((2, 3, 8, 8), 2, 0.1, 0.2)},
        },
    )
    nested = Flow(
        NestedCond(seed=12),
        {"x": nested_input(0, True, True)},
        ["y", "s"],
        {"x": {0: "batch"}, "y": {0: "batch"}, "s": {0: "batch"}},
        {
            "mix-up": {"x": nested_input(1, True, True)},
            "mix-down": {"x": nested_input(2, True, False)},
            "gate": {"x": nested_input(3, False, True)},
        },
    )
    functions = Flow(
        FunctionNet(seed=13),
        {"x": shifted((2, 3, 8, 8), 0, 0.5, 0.3)},
        ["logits"],
        img,
        {
            "batch-1": {"x": shifted((1, 3, 8, 8), 4, 0.5)},
            "batch-3": {"x": shifted((3, 3, 8, 8), 5, 0.5)},
        },
        functions={Block},
    )
    x = shifted((2, 8), 6, 0.0)
    loop = Flow(
        torch.jit.script(RecurrentCell(seed=14).eval()),
        {"x": x, "steps": torch.tensor([3])},
        ["y"],
        {"x": {0: "batch"}, "y": {0: "batch"}},
        {f"steps-{n}": {"x": x, "steps": torch.tensor([n])} for n in (0, 1, 2, 5)},
    )
    audio = shifted((2, 64), 7, 0.0)
    vad_io = dict(
        outputs=["prob", "new_state"],
        axes={"audio": {0: "batch"}, "state": {2: "batch"}, "prob": {0: "batch"}},
        cases={
            "fresh": {"audio": audio, "state": torch.zeros(2, 1, 2, 8)},
            "carried": {"audio": audio, "state": shifted((2, 1, 2, 8), 8, 0.0, 0.5)},
        },
    )
    example = {"audio": audio, "state": shifted((2, 1, 2, 8), 9, 0.0, 0.5)}
    vad_cond = Flow(Vad(seed=15, cond=True), example, **vad_io)
    vad_functions = Flow(Vad(seed=16, cond=False), example, **vad_io, functions={Decoder})
    return [
        (vad_cond, OUT_FLOW / "vad_cond.onnx", True),
        (vad_functions, OUT_FLOW / "vad_functions.onnx", False),
        (cond_cnn, OUT_FLOW / "cond_cnn.onnx", True),
        (nested, OUT_FLOW / "nested_cond.onnx", True),
        (functions, OUT_FLOW / "functions.onnx", False),
        (loop, OUT_FLOW / "scripted_loop.onnx", False),
    ]


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
    for flow, path, dynamo in flow_jobs():
        export_flow(flow, path, dynamo)
        summarize(path)
        failures += verify_flow(flow, path)
    if failures:
        print(f"{len(failures)} check(s) FAILED:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
