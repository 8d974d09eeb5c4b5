"""An encoder in the form its device runs fastest, with the same parameters and state dict: channels-last weights
(train.channels_last), the video encoder's middle widths padded (train.pad_widths, xdc.models.padding) and its stem
over pixel blocks (train.s2d_stem, xdc.models.stem). Pretraining and evaluation both call it, so an encoder runs
in one form wherever the run's settings send it. Both also call ``warn_cudnn_fault``."""

from __future__ import annotations

import functools
import re
import sys

import torch
from torch import nn

from xdc.config import TrainConfig
from xdc.models.encoders import LAYOUTS
from xdc.models.padding import pad_middle_widths
from xdc.models.stem import space_to_depth_stem


def device_form(encoder: nn.Module, modality: str, train: TrainConfig, crop: int, device_type: str) -> nn.Module:
    """``encoder`` (already on its device), changed in place for a device of ``device_type`` ("cuda", "cpu") as
    ``train`` says; ``crop`` is the video clips' side, which the stem over pixel blocks is built for."""
    if train.channels_last_on(device_type):  # weights in the layout of the clips
        encoder.to(memory_format=LAYOUTS[modality])
    if modality == "video" and (widths := train.pad_widths_on(device_type)):
        pad_middle_widths(encoder, widths)
    if modality == "video" and train.s2d_stem:
        space_to_depth_stem(encoder, (crop, crop))
    return encoder


# cuDNN 9.8 to 9.14 have a fault in half-precision 3-D convolutions (pytorch/pytorch#163539). PyTorch 2.9.0 runs
# those convolutions without cuDNN from 9.8 on (#163581), later releases only on 9.8 to 9.14 (#166480).
_FAULTY_CUDNN = (90800, 91500)


def cudnn_fault_note(cudnn: int | None, torch_version: str, bf16: bool) -> str | None:
    """What a run of a video encoder in bf16 should know about the cuDNN release it found
    (``torch.backends.cudnn.version()``, e.g. 91002 for 9.10.2) under this PyTorch, or None when nothing."""
    if not bf16 or cudnn is None or cudnn < _FAULTY_CUDNN[0]:
        return None
    release = tuple(int(x or 0) for x in re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", torch_version).groups())
    name = f"{cudnn // 10000}.{cudnn // 100 % 100}.{cudnn % 100}"
    slow = "several times slower, with far more memory (pytorch/pytorch#166122)"
    if release == (2, 9, 0):  # its nightlies (2.9.0a0) too
        return (f"WARNING: PyTorch 2.9.0 runs 3-D convolutions in bf16, the video encoder's, without cuDNN (here "
                f"{name}): {slow}. Use PyTorch 2.9.1 or later with cuDNN 9.15 or later, or set train.precision=fp32.")
    if cudnn >= _FAULTY_CUDNN[1]:
        return None
    if release >= (2, 9):
        effect = f"so PyTorch runs them without cuDNN: {slow}"
    else:
        effect = "and some shapes can come out wrong (pytorch/pytorch#163539)"
    return (f"WARNING: cuDNN {name} has a fault in 3-D convolutions in bf16, the video encoder's, {effect}. Install "
            f"cuDNN 9.15 or later (the nvidia-cudnn package matching torch.version.cuda), or set "
            f"train.precision=fp32.")


def warn_cudnn_fault(bf16: bool) -> None:
    """Print ``cudnn_fault_note`` for this process's cuDNN, if any, the first time it applies."""
    if note := cudnn_fault_note(torch.backends.cudnn.version(), torch.__version__, bf16):
        _print_once(note)


@functools.cache
def _print_once(text: str) -> None:
    print(text, file=sys.stderr)
