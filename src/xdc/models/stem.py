"""The video stem's first convolution computed over 2 x 2 blocks of pixels while training on a GPU, with no change
to the model itself.

R(2+1)D's stem convolves the 3 colour channels with a 1 x 7 x 7 kernel at spatial stride 2. On cuDNN this is the
step's least efficient convolution by far (an H200 took 4.5 ms for its forward and weight gradient at batch 128,
30 times its roofline; BENCHMARKS.md "Training step"): 3 input channels and stride 2 fit its tensor-core kernels
badly. The same numbers come from a stride-1 convolution with a 4 x 4 kernel over the frames rearranged into
2 x 2 blocks of pixels (``pixel_unshuffle``: 12 channels), whose weight is the 7 x 7 one rearranged (with one row
and column of zeros): 1.3 x the multiply-adds, in a shape those kernels suit.

``space_to_depth_stem`` swaps such a convolution's forward in place. The weight keeps its shape and is rearranged
in each forward, so the state dict, the optimizer, DDP and the checkpoints see the plain model; only the speed
and the rounding of the sums differ. It composes with ``xdc.models.padding`` (pad first: the stem's zero output
channels are kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xdc.models.padding import _WideOutputConv3d


class _SpaceToDepthConv3d(_WideOutputConv3d):
    """A (1, k, k) Conv3d with stride (1, 2, 2), odd k and no bias, computed as a (1, h, h) one with stride 1,
    h = (k + 1) / 2, over each frame's 2 x 2 pixel blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:  # DDP's empty batch of a rank without clips: pixel_unshuffle returns an empty input as is
            return super().forward(x)
        weight = self.padded_weight()  # out x in x 1 x k x k
        out, channels, k = weight.shape[0], weight.shape[1], weight.shape[-1]
        half = (k + 1) // 2
        # [o, c, 0, 2a + i, 2b + j] -> [o, 4c + 2i + j, 0, a, b]: pixel_unshuffle's channel order; the k-th row
        # and column (2a + i = k) are the added zeros
        weight = F.pad(weight, (0, 2 * half - k, 0, 2 * half - k)).reshape(out, channels, half, 2, half, 2)
        weight = weight.permute(0, 1, 3, 5, 2, 4).reshape(out, 4 * channels, 1, half, half)
        pad = self.padding[1]
        # frames as images (T x C x H x W per clip: pixel_unshuffle works on the last three dimensions); the
        # output needs no reshaping, which keeps torch.compile's backward free of strided views
        blocks = F.pixel_unshuffle(F.pad(x.transpose(1, 2), (pad, pad, pad, pad)), 2).transpose(1, 2)
        if x.is_contiguous(memory_format=torch.channels_last_3d):  # the layout cuDNN's fast kernels take
            blocks = blocks.contiguous(memory_format=torch.channels_last_3d)
            weight = weight.contiguous(memory_format=torch.channels_last_3d)
        return F.conv3d(blocks, weight)

    def extra_repr(self) -> str:
        text = super().extra_repr() if self.extra_in or self.extra_out else nn.Conv3d.extra_repr(self)
        return f"{text}, computed over 2 x 2 pixel blocks"


def _fits(conv: nn.Conv3d) -> bool:
    k = conv.kernel_size
    return (
        conv.in_channels < 8 and k[0] == 1 and k[1] == k[2] and k[1] % 2 == 1 and conv.stride == (1, 2, 2)
        and conv.padding[0] == 0 and conv.padding[1] == conv.padding[2] and conv.dilation == (1, 1, 1)
        and conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros"
    )  # fmt: skip


def space_to_depth_stem(encoder: nn.Module, frame_size: tuple[int, int]) -> int:
    """Compute every (1, k, k) stride-(1, 2, 2) Conv3d of ``encoder`` on fewer than 8 channels (R(2+1)D's stem)
    over 2 x 2 pixel blocks, in place, for frames of ``frame_size`` (H, W: each plus twice the padding must be
    even). Parameters, buffers and state-dict keys stay as they are. Returns the number of convolutions changed."""
    changed = 0
    for conv in encoder.modules():
        if type(conv) in (nn.Conv3d, _WideOutputConv3d) and _fits(conv):
            if any((side + 2 * conv.padding[1]) % 2 for side in frame_size):
                raise ValueError(f"frames of {frame_size[0]} x {frame_size[1]} with padding {conv.padding[1]} "
                                 "do not split into 2 x 2 pixel blocks")  # fmt: skip
            conv.__class__ = _SpaceToDepthConv3d
            changed += 1
    return changed
