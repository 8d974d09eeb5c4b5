"""The highest MFU a training step of a preset could reach on a GPU, from its ops' FLOPs and bytes (a roofline).

    python benchmarks/roofline.py                                   # paper preset, batch 128, an H100/H200 SXM
    python benchmarks/roofline.py --bandwidth 3.35 --peak-tflops 989 # H100 SXM's memory

One XDC step (both encoders, the two cross-modal heads, cross-entropy, backward; no optimizer) runs on the meta
device in bf16: shapes only, no data, no GPU. Every aten op is recorded with its FLOPs (the MFU convention of
torch.utils.flop_counter: the convolutions and matrix products, 2 per multiply-accumulate) and the bytes of its
tensor arguments and results (views move nothing and are left out). An op on a GPU takes at least
max(FLOPs / peak, bytes / bandwidth): at the peak when it has enough FLOPs per byte, else at the memory's speed.
Summed over the ops, that gives two ceilings on MFU:

  convolutions alone   everything else (BatchNorm, ReLU, residual adds, pooling, the loss) fused into the
                       convolutions for free: no implementation can beat this;
  nothing fused        every other op also reads its inputs and writes its outputs once at full bandwidth, as
                       in an eager step with ideal kernels.

A compiled step lies between the two (Inductor fuses the element-wise ops with each other, not into cuDNN's
convolutions). The per-stage table shows where the convolutions have too few FLOPs per byte to reach the peak.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from common import report, run_script
from xdc.config import load_config
from xdc.data.datasets import TrainClips
from xdc.data.manifest import Manifest
from xdc.methods import METHODS
from xdc.models.encoders import build_encoder
from xdc.training.pretrain import EncodersWithHeads


class OpCosts(TorchDispatchMode):
    """FLOPs and bytes of every aten op run under it, with the module (e.g. ``video.layer2``) that ran it."""

    def __init__(self):
        super().__init__()
        self.ops: list[dict] = []
        self.module = "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        counter = flop_registry.get(func.overloadpacket)
        flops = counter(*args, **kwargs, out_val=out) if counter else 0
        moved = sum(t.numel() * t.element_size() for t in tensors)
        if func.overloadpacket is torch.ops.aten.convolution_backward and all(args[-1][:2]):
            moved += args[0].numel() * args[0].element_size()  # data and weight gradients: two passes over it
        self.ops.append({"op": func.overloadpacket.__name__, "module": self.module, "flops": flops, "bytes": moved})
        return out


def least_seconds(op: dict, peak: float, bandwidth: float) -> float:
    """An op's time at the peak or at the memory's speed, whichever binds (FLOP/s and bytes/s)."""
    return max(op["flops"] / peak, op["bytes"] / bandwidth)


def stage_hooks(model: torch.nn.Module, costs: OpCosts) -> None:
    """Label the ops with the encoder stage that runs them (forward; the backward keeps the last label, so the
    backward of a stage is not told apart: the table's stages are forward-only, the totals are not)."""
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "encoders":  # encoders.video.layer2
            label = f"{parts[1]}.{parts[2]}"
            module.register_forward_pre_hook(lambda m, a, label=label: setattr(costs, "module", label))
            module.register_forward_hook(lambda m, a, o: setattr(costs, "module", "other"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 (H100/H200 SXM: 989)")
    parser.add_argument("--bandwidth", type=float, default=4.8, help="memory TB/s (H200: 4.8, H100 SXM: 3.35)")
    args = parser.parse_args()

    cfg = load_config(None, [], preset=args.preset)
    method = METHODS["xdc"]
    shapes = TrainClips(Manifest.from_rows([]), cfg.data, modalities=method.modalities).shapes()
    with torch.device("meta"):
        encoders = torch.nn.ModuleDict({e: build_encoder(m, cfg.model) for e, m in method.encoders.items()})
        model = EncodersWithHeads(encoders, method, {e: enc.feature_dim for e, enc in encoders.items()},
                                  {s: args.k for s in method.label_sets}).to(torch.bfloat16)  # fmt: skip
        inputs = {m: torch.empty(args.batch, *shape, dtype=torch.bfloat16) for m, shape in shapes.items()}
        target = torch.zeros(args.batch, dtype=torch.long)
    costs = OpCosts()
    stage_hooks(model, costs)
    with costs:
        logits = model(inputs)
        torch.stack([F.cross_entropy(y.float(), target) for y in logits.values()]).mean().backward()

    peak, bandwidth = args.peak_tflops * 1e12, args.bandwidth * 1e12
    total_flops = sum(op["flops"] for op in costs.ops)
    conv_s = sum(least_seconds(op, peak, bandwidth) for op in costs.ops if op["flops"])
    other_s = sum(op["bytes"] / bandwidth for op in costs.ops if not op["flops"])
    stages = defaultdict(lambda: {"flops": 0, "bytes": 0, "seconds": 0.0})
    for op in costs.ops:
        if op["flops"] and op["module"] != "other":
            stage = stages[op["module"]]
            stage["flops"] += op["flops"]
            stage["bytes"] += op["bytes"]
            stage["seconds"] += least_seconds(op, peak, bandwidth)
    rows = [{"stage": name, "gflop": s["flops"] / 1e9, "gb": s["bytes"] / 1e9, "flop_per_byte": s["flops"] / s["bytes"],
             "ceiling_percent": 100 * s["flops"] / peak / s["seconds"]} for name, s in stages.items()]  # fmt: skip
    rows += [
        {"stage": "step: convolutions alone", "gflop": total_flops / 1e9, "ms": 1e3 * conv_s,
         "ceiling_percent": 100 * total_flops / peak / conv_s},
        {"stage": "step: nothing fused", "gflop": total_flops / 1e9, "ms": 1e3 * (conv_s + other_s),
         "ceiling_percent": 100 * total_flops / peak / (conv_s + other_s)},
    ]  # fmt: skip
    report("roofline", rows, {**vars(args), "ridge_flop_per_byte": peak / bandwidth, "ops": len(costs.ops)})


if __name__ == "__main__":
    run_script(main)
