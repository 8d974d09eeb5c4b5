"""Every convolution of a preset's encoders timed on its own, forward + backward, against its roofline, in the
formulations that compute the same thing: where the MFU of a training step is lost, layer by layer.

    python benchmarks/conv_shapes.py                                  # paper preset, batch 128, bf16, on CUDA
    python benchmarks/conv_shapes.py --device cpu --batch 2 --reps 2  # a smoke run
    python benchmarks/conv_shapes.py --cudnn-limit 0                  # cuDNN times every algorithm it has

The shapes come from one forward pass of both encoders on the meta device (no data). Each distinct shape runs in
channels-last bf16 (as a training step on CUDA does) with cuDNN's autotuner on, as
  native  the convolution as the model calls it;
  2d      a (1, k, k) convolution without temporal stride as a 2-D one over the frames (N x T images), and a
          (k, 1, 1) one without spatial stride as a 2-D one over (T, H x W): free views of the channels-last
          tensor, the same weights;
  pad8    input and output channels rounded up to multiples of 8 (what cuDNN otherwise pads on every call);
  pad64   the same to multiples of 64 (cuDNN's tiles span 64 or 128 channels: 144 = 2.25 x 64 may run as 192),
          more FLOPs, so slower unless the kernel wins more than it adds;
  s2d     a (1, k, k) convolution with spatial stride 2 on fewer than 8 channels (the video stem, 3 -> 45) as a
          stride-1 one with kernel (1, (k + 1) / 2, (k + 1) / 2) over 2 x 2 blocks of pixels (pixel_unshuffle: 4x
          the channels, 1.3x the FLOPs for k = 7), its input rearranged in each call: train.s2d_stem's form.
Backward computes the weight gradient, and the input gradient except for a clip's first convolution. The
roofline of a shape is max(FLOPs / peak, bytes / bandwidth) per pass (benchmarks/roofline.py); "of roofline" is
that time over the measured one. Totals weigh each shape by how often the encoders use it.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from common import report, run_script
from roofline import OpCosts, least_seconds
from xdc.config import load_config
from xdc.data.datasets import TrainClips
from xdc.data.manifest import Manifest
from xdc.methods import METHODS
from xdc.models.encoders import build_encoder
from xdc.training.flops import peak_tflops


class ConvCalls(TorchDispatchMode):
    """The shape of every convolution run under it: (input shape, weight shape, stride, padding), counted."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, w, _, stride, padding = args[:5]
            self.calls[(tuple(x.shape), tuple(w.shape), tuple(stride), tuple(padding))] += 1
        return func(*args, **(kwargs or {}))


def model_convs(preset: str, batch: int) -> tuple[Counter, set[tuple[int, ...]]]:
    """The convolutions of XDC's encoders at ``batch``, and the shapes of the clips they take."""
    cfg = load_config(None, [], preset=preset)
    method = METHODS["xdc"]
    shapes = TrainClips(Manifest.from_rows([]), cfg.data, modalities=method.modalities).shapes()
    calls = ConvCalls()
    with torch.device("meta"), torch.no_grad(), calls:
        for name, modality in method.encoders.items():
            build_encoder(modality, cfg.model)(torch.empty(batch, *shapes[modality]))
    return calls.calls, {(batch, *shape) for shape in shapes.values()}


def formulations(xs, ws, stride, padding) -> dict[str, tuple]:
    """(input shape, weight shape, stride, padding, conv function) per formulation of one convolution."""
    conv = F.conv3d if len(ws) == 5 else F.conv2d
    out = {"native": (xs, ws, stride, padding, conv)}
    if len(ws) == 5:
        n, c, t, h, w = xs
        co, ci, kt, kh, kw = ws
        if kt == 1 and stride[0] == 1 and padding[0] == 0:  # spatial: the frames as a batch of images
            out["2d"] = ((n * t, c, h, w), (co, ci, kh, kw), stride[1:], padding[1:], F.conv2d)
        elif kh == kw == 1 and stride[1:] == (1, 1) and padding[1:] == (0, 0):  # temporal: time x pixels
            out["2d"] = ((n, c, t, h * w), (co, ci, kt, 1), (stride[0], 1), (padding[0], 0), F.conv2d)
        even = (h + 2 * padding[1]) % 2 == 0 and (w + 2 * padding[2]) % 2 == 0
        if kt == 1 and stride == (1, 2, 2) and padding[0] == 0 and kh == kw and kh % 2 and c < 8 and even:
            k2 = (kh + 1) // 2
            out["s2d"] = (xs, (co, 4 * ci, 1, k2, k2), stride, padding, space_to_depth_conv)
    for multiple in (8, 64):
        rounded = (-(-xs[1] // multiple) * multiple, -(-ws[0] // multiple) * multiple)
        if rounded != (xs[1], ws[0]) and (multiple == 8 or xs[1] > 8):  # not the 3-channel clip to 64
            out[f"pad{multiple}"] = ((xs[0], rounded[0], *xs[2:]), (rounded[1], rounded[0], *ws[2:]), stride,
                                     padding, conv)  # fmt: skip
    return out


def space_to_depth_conv(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> torch.Tensor:
    """The "s2d" form, as ``train.s2d_stem`` computes it (xdc.models.stem): ``weight`` (out, 4 x in, 1, k2, k2)
    holds the taps of a (1, k, k) kernel, k = 2 x k2 - 1, with a zero tap added:
    ``[o, 4c + 2i + j, 0, a, b] = kernel[o, c, 0, 2a + i, 2b + j]`` (0 where 2a + i = k). Each frame, padded as
    the convolution pads, has its 2 x 2 blocks of pixels as 4 channels: stride 1 over blocks is stride 2 over
    pixels."""
    pad = padding[1]
    blocks = F.pixel_unshuffle(F.pad(x.transpose(1, 2), (pad, pad, pad, pad)), 2).transpose(1, 2)
    return F.conv3d(blocks.contiguous(memory_format=torch.channels_last_3d), weight)


def timed(xs, ws, stride, padding, conv, input_grad: bool, device: torch.device, reps: int) -> tuple[float, float]:
    """Seconds of one forward and of one backward of ``conv`` on channels-last bf16 tensors of these shapes."""
    def layout(shape) -> torch.memory_format:
        return torch.channels_last_3d if len(shape) == 5 else torch.channels_last

    x = torch.randn(xs, device=device, dtype=torch.bfloat16).contiguous(memory_format=layout(xs))
    w = torch.randn(ws, device=device, dtype=torch.bfloat16).contiguous(memory_format=layout(ws))
    x.requires_grad_(input_grad)
    w.requires_grad_(True)
    wanted = (x, w) if input_grad else (w,)

    grad = torch.ones_like(conv(x, w, stride=stride, padding=padding))

    def run(backward: bool) -> None:
        y = conv(x, w, stride=stride, padding=padding)
        if backward:
            torch.autograd.grad(y, wanted, grad)

    seconds = []
    for backward in (False, True):
        for _ in range(2):  # the autotuner times its kernels on the first call
            run(backward)
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            run(backward)
        sync(device)
        seconds.append((time.perf_counter() - start) / reps)
    return seconds[0], max(seconds[1] - seconds[0], 0.0)


def roofline(xs, ws, stride, padding, input_grad: bool, peak: float, bandwidth: float) -> float:
    """Least seconds of this convolution's forward and backward in bf16, counted as benchmarks/roofline.py
    counts a whole step (the same ops on the meta device)."""
    conv = F.conv3d if len(ws) == 5 else F.conv2d
    with torch.device("meta"):
        x = torch.empty(xs, dtype=torch.bfloat16, requires_grad=input_grad)
        w = torch.empty(ws, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.empty(conv(x.detach(), w.detach(), stride=stride, padding=padding).shape, dtype=torch.bfloat16)
    costs = OpCosts()
    with costs:
        y = conv(x, w, stride=stride, padding=padding)
        torch.autograd.grad(y, (x, w) if input_grad else (w,), grad)
    return sum(least_seconds(op, peak, bandwidth) for op in costs.ops if op["flops"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=20, help="timed calls of each pass")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 (default: the GPU's by name, else 989)")
    parser.add_argument("--bandwidth", type=float, default=4.8, help="memory TB/s (H200: 4.8, H100 SXM: 3.35)")
    parser.add_argument("--cudnn-limit", type=int, metavar="N",
                        help="cuDNN algorithms timed per shape (0: all; default: PyTorch's, 10)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = (args.peak_tflops or peak_tflops(name) or 989.0) * 1e12
    torch.backends.cudnn.benchmark = True
    if args.cudnn_limit is not None:
        torch.backends.cudnn.benchmark_limit = args.cudnn_limit

    calls, clips = model_convs(args.preset, args.batch)
    rows, totals = [], Counter()
    for (xs, ws, stride, padding), count in calls.items():
        input_grad = xs not in clips
        least = roofline(xs, ws, stride, padding, input_grad, peak, args.bandwidth * 1e12)
        row = {"input": "x".join(map(str, xs[1:])), "kernel": "x".join(map(str, ws[2:])),
               "out": ws[0], "stride": "x".join(map(str, stride)), "uses": count,
               "roofline_ms": 1e3 * least}  # fmt: skip
        totals["roofline"] += count * least
        measured = {}
        for variant, (vx, vw, vs, vp, conv) in formulations(xs, ws, stride, padding).items():
            fwd, bwd = timed(vx, vw, vs, vp, conv, input_grad, device, args.reps)
            measured[variant] = fwd + bwd
            row[f"{variant}_ms"] = 1e3 * (fwd + bwd)
        row["native_of_roofline"] = least / measured["native"]
        row["best"] = min(measured, key=measured.get)
        totals["native"] += count * measured["native"]
        totals["best"] += count * measured[row["best"]]
        rows.append(row)
        print(row, flush=True)
    rows.append({"input": "all, weighted by uses", "roofline_ms": 1e3 * totals["roofline"],
                 "native_ms": 1e3 * totals["native"], "native_of_roofline": totals["roofline"] / totals["native"],
                 "best": f"{1e3 * totals['best']:.1f} ms with the best formulation of each"})  # fmt: skip
    report("conv_shapes", rows, {**vars(args), "device_name": name, "peak_tflops": peak / 1e12})


if __name__ == "__main__":
    run_script(main)
