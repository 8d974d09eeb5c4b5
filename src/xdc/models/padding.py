"""Middle widths padded to a multiple of 8 while training on a GPU, with no change to the model itself.

R(2+1)D's (2+1)D convolutions and its stem pass 45, 230, 460 or 921 channels between their spatial and temporal
halves. cuDNN's channels-last bf16 kernels want multiples of 8 and pad such tensors on every call
(``nhwcAddPaddingKernel``, a tenth of a compiled step on an H200; BENCHMARKS.md "Training step").

``pad_middle_widths`` runs each such conv -> BatchNorm -> ReLU -> conv chain at the wider width: the first conv's
weight gains zero filters, the BatchNorm a zero scale and shift for them (so they normalise to exactly 0 whatever
they hold), and the second conv zero weights on them. The zeros are made in each forward from the parameters,
which keep their shapes: the added channels are always 0 and never trained, and the state dict, the optimizer, DDP
and the checkpoints see the plain model. Only the speed differs (and the rounding of sums with added zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _WideOutputConv3d(nn.Conv3d):
    """A Conv3d whose output has ``extra_out`` more channels, all 0, and whose input may have ``extra_in`` more,
    which it ignores: its weight padded with zero filters and zero input weights in each forward."""

    extra_in = extra_out = 0

    def padded_weight(self) -> torch.Tensor:
        if not (self.extra_in or self.extra_out):
            return self.weight
        weight = F.pad(self.weight, (0, 0, 0, 0, 0, 0, 0, self.extra_in, 0, self.extra_out))
        if self.weight.is_contiguous(memory_format=torch.channels_last_3d):
            weight = weight.contiguous(memory_format=torch.channels_last_3d)  # the layout cuDNN was given
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.padded_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, zero channels added: {self.extra_in} in, {self.extra_out} out"


class _WideBatchNorm3d(nn.BatchNorm3d):
    """A BatchNorm3d over ``extra`` more channels than its parameters, with scale and shift 0 there: those
    channels come out 0. Its running statistics keep their own shape; the added channels' are not kept."""

    extra = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (0, self.extra)
        mean, var = F.pad(self.running_mean, pad), F.pad(self.running_var, pad, value=1.0)
        out = F.batch_norm(
            x, mean, var, F.pad(self.weight, pad), F.pad(self.bias, pad), self.training, self.momentum, self.eps
        )
        if self.training:  # batch_norm updated the padded copies: keep the real channels' statistics
            with torch.no_grad():
                self.running_mean.copy_(mean[: self.num_features])
                self.running_var.copy_(var[: self.num_features])
                self.num_batches_tracked.add_(1)
        return out


def pad_middle_widths(encoder: nn.Module, multiple: int) -> int:
    """Run every conv -> BatchNorm -> ReLU -> conv chain of ``encoder`` (3-D convolutions, in an ``nn.Sequential``)
    whose middle width is not a multiple of ``multiple`` at the next multiple, in place. Parameters, buffers and
    state-dict keys stay as they are. Returns the number of chains widened."""
    if multiple < 1:
        raise ValueError(f"multiple must be positive, not {multiple}")
    widened = 0
    for chain in [m for m in encoder.modules() if isinstance(m, nn.Sequential)]:
        modules = list(chain)  # not chain[1:]: slicing rebuilds a Sequential subclass, and Conv2Plus1D cannot be
        for first, norm, relu, second in zip(modules, modules[1:], modules[2:], modules[3:]):
            kinds = (nn.Conv3d, nn.BatchNorm3d, nn.ReLU, nn.Conv3d)
            if not all(type(m) is kind for m, kind in zip((first, norm, relu, second), kinds)):
                continue  # not such a chain, or widened already
            if not (norm.affine and norm.track_running_stats and norm.momentum is not None):
                continue  # other BatchNorms than the encoders' own: left as they are
            extra = -first.out_channels % multiple
            if extra == 0:
                continue
            first.__class__, first.extra_out = _WideOutputConv3d, extra
            norm.__class__, norm.extra = _WideBatchNorm3d, extra
            second.__class__, second.extra_in = _WideOutputConv3d, extra
            widened += 1
    return widened
